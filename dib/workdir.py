"""The build's work directory, its lock, and recovery from builds that were killed.

A build lives in ``$TMP_DIR/dib_build.XXXXXXXX`` and holds an exclusive ``flock`` on its
``lock`` file for as long as it runs. Everything the build mounts is below that directory and
every loop device it attaches is backed by a file below it, so a directory whose lock nobody
holds belongs to a dead build: :func:`cleanup_stale` kills what still runs in it, unmounts
everything below it, detaches its loop devices and removes it. Each new build does this
first; ``disk-image-create --cleanup`` does only this.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List

from dib import cmd, mounts
from dib.errors import DibError

log = logging.getLogger("dib.workdir")

PREFIX = "dib_build."


@dataclass(frozen=True)
class Workdir:
    root: Path

    @property
    def lockfile(self) -> Path:
        return self.root / "lock"

    @property
    def base(self) -> Path:
        """Where the build's files live (a tmpfs mount point when tmpfs is used)."""
        return self.root / "w"

    @property
    def hooks(self) -> Path:
        return self.base / "hooks"

    @property
    def mnt(self) -> Path:
        return self.base / "mnt"

    @property
    def layers(self) -> Path:
        return self.base / "layers"

    @property
    def image(self) -> Path:
        return self.base / "image"

    @property
    def built(self) -> Path:
        return self.base / "built"


def _mem_total_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return 0.0


def remove_tree(path: Path) -> None:
    """rm -rf that refuses to cross into anything still mounted below ``path``."""
    still = mounts.mounts_below(path)
    if still:
        raise DibError(f"refusing to remove {path}: still mounted: "
                       + ", ".join(map(str, still)),
                       hint="run disk-image-create --cleanup")
    shutil.rmtree(path, ignore_errors=False)


@contextlib.contextmanager
def workdir(tmp_dir: Path, *, use_tmpfs: bool, min_tmpfs_gib: float,
            keep: bool = False) -> Iterator[Workdir]:
    """Create, lock and (unless ``keep``) finally remove a build work directory."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    for line in cleanup_stale(tmp_dir):
        log.warning("%s", line)
    with contextlib.ExitStack() as stack:
        root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=tmp_dir))
        wd = Workdir(root)
        if keep:
            stack.callback(log.info, "work directory kept (unmounted) at %s", root)
        else:
            stack.callback(remove_tree, root)
        lock = open(wd.lockfile, "w")
        stack.callback(lock.close)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        wd.base.mkdir()
        if use_tmpfs and _mem_total_gib() >= 2 * min_tmpfs_gib:
            stack.enter_context(mounts.mounted("tmpfs", wd.base, fstype="tmpfs",
                                               options=("mode=0755", "size=50%")))
        elif use_tmpfs:
            log.info("not enough RAM to build in a tmpfs; using %s", tmp_dir)
        for d in (wd.hooks, wd.mnt, wd.layers, wd.image, wd.built):
            d.mkdir()
        yield wd


def _held(lockfile: Path) -> bool:
    try:
        fd = os.open(lockfile, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def loops_backed_by(path: Path) -> List[str]:
    """Loop devices whose backing file is at or below ``path`` (read from sysfs)."""
    base = os.path.realpath(path).rstrip("/") + "/"
    found = []
    for dev in sorted(Path("/sys/block").glob("loop*")):
        try:
            backing = (dev / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        backing = backing.removesuffix(" (deleted)")
        if (backing.rstrip("/") + "/").startswith(base) or backing.startswith(base):
            found.append(f"/dev/{dev.name}")
    return found


def cleanup_stale(tmp_dir: Path) -> List[str]:
    """Recover what dead builds left in ``tmp_dir``; returns a line per action taken."""
    done: List[str] = []
    if not tmp_dir.is_dir():
        return done
    for root in sorted(tmp_dir.glob(PREFIX + "*")):
        if not root.is_dir() or _held(root / "lock"):
            continue
        killed = mounts.kill_processes_in(root)
        if killed:
            done.append(f"{root}: killed {len(killed)} leftover process(es)")
        for target in mounts.unmount_all_below(root):
            done.append(f"{root}: unmounted {target}")
        for dev in loops_backed_by(root):
            cmd.run(["losetup", "-d", dev], check=False)
            done.append(f"{root}: detached {dev}")
        remove_tree(root)
        done.append(f"removed stale work directory {root}")
    return done
