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
from typing import Callable, Iterator, List, Optional, Sequence

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


GIB = 1 << 30


def meminfo_bytes(text: str, field: str) -> int:
    """One field of /proc/meminfo (``MemAvailable``, ``MemTotal``) in bytes; 0 if absent."""
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name == field:
            value = rest.split()
            return int(value[0]) * (1024 if value[1:] == ["kB"] else 1)
    return 0


def _unescape(path: str) -> str:
    """Undo the octal escapes of /proc/self/mountinfo (space, tab, newline, backslash)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


def build_tmpfs_mounts(mountinfo: str, own: Optional[Path] = None) -> List[Path]:
    """Work-directory tmpfs mounts of running builds (``.../dib_build.*/w``), ours excluded."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        fstype = fields[fields.index("-") + 1]
        target = Path(_unescape(fields[4]))
        if (fstype == "tmpfs" and target.name == "w" and target.parent.name.startswith(PREFIX)
                and (own is None or target.parent != own)):
            found.append(target)
    return found


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def promised_bytes(mountpoints: Sequence[Path],
                   free: Callable[[Path], int] = _free_bytes) -> int:
    """What other builds' tmpfs mounts could still fill (their size less what they use)."""
    total = 0
    for target in mountpoints:
        try:
            total += free(target)
        except OSError:           # unmounted meanwhile
            continue
    return total


@dataclass(frozen=True)
class TmpfsPlan:
    """How big a tmpfs the work directory gets (``size`` 0: none, build on disk), and why."""
    #: what the build could have: half of the memory neither in use nor promised
    candidate: int
    available: int
    promised: int
    others: int
    minimum: int

    @property
    def size(self) -> int:
        return self.candidate if self.candidate >= self.minimum and self.candidate > 0 else 0

    def describe(self) -> str:
        def gib(n: int) -> str:
            return f"{n / GIB:.1f} GiB"
        builds = f"{self.others} other build{'s' if self.others != 1 else ''}"
        if self.size:
            return (f"work directory: tmpfs of {gib(self.size)} (MemAvailable "
                    f"{gib(self.available)}, {gib(self.promised)} promised to {builds})")
        return (f"work directory on disk: only {gib(self.candidate)} of memory to spare "
                f"(half of MemAvailable {gib(self.available)} less {gib(self.promised)} "
                f"promised to {builds}; needs {self.minimum / GIB:g} GiB, --min-tmpfs)")


def plan_tmpfs(available: int, promised: int, others: int, min_bytes: int) -> TmpfsPlan:
    """Half of the memory that is available and not promised to other builds' tmpfs, so a
    build started next still finds room (and never more than half of the RAM, as before);
    whole MiB; none (build on disk) below ``min_bytes``."""
    spare = max(0, available - promised)
    return TmpfsPlan(spare // 2 >> 20 << 20, available, promised, others, min_bytes)


def current_tmpfs_plan(own: Optional[Path], min_bytes: int) -> TmpfsPlan:
    """:func:`plan_tmpfs` from /proc/meminfo and the running builds' mounts."""
    meminfo = Path("/proc/meminfo").read_text()
    others = build_tmpfs_mounts(Path("/proc/self/mountinfo").read_text(), own)
    return plan_tmpfs(meminfo_bytes(meminfo, "MemAvailable"), promised_bytes(others),
                      len(others), min_bytes)


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
        if use_tmpfs:
            plan = current_tmpfs_plan(root, int(min_tmpfs_gib * GIB))
            log.info("%s", plan.describe())
            if plan.size:
                stack.enter_context(mounts.mounted(
                    "tmpfs", wd.base, fstype="tmpfs",
                    options=("mode=0755", f"size={plan.size >> 20}m")))
        for d in (wd.hooks, wd.mnt, wd.layers, wd.image, wd.built):
            d.mkdir()
        yield wd


def lock_held(lockfile: Path) -> bool:
    """Some process holds ``lockfile``'s flock (a running build's, or a farm task's)."""
    try:
        fd = os.open(lockfile, os.O_RDONLY)
    except OSError:
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
        if not root.is_dir() or lock_held(root / "lock"):
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
