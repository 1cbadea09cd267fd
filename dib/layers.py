"""The layer cache: overlayfs upper directories kept under the image cache, keyed by a chain.

Every step of a build that changes the tree (root.d as a whole, then each script of the
chroot phases and post-root.d, and ``-p``) writes into a fresh overlayfs upper directory.
When the step succeeds the directory is renamed to its key and recorded in the diskcache
index; a later build whose step has the same key mounts the directory as a lower layer
instead of running the step. The key of a step chains the key of the step before it with
the step's own inputs (its script, the element data, environment.d, the build settings), so
a rebuild reuses every step up to the first one whose inputs changed and runs from there.

Layers are directories, not archives: they are used in place as overlay lower layers, with
their whiteouts and opaque markers, so a hit costs nothing but a mount option. All layers of
a store live in one directory, which keeps overlay's lowerdir option short (it is passed
relative to that directory).
"""
from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from dib.cache import ArtifactCache, cache_key, epoch_inputs

log = logging.getLogger("dib.layers")

KEY_CHARS = 32


def tree_digest(root: Path, skip_top: Sequence[str] = ()) -> str:
    """sha256 over paths, modes, symlink targets and file contents below ``root``
    (top-level entries named in ``skip_top`` left out)."""
    h = hashlib.sha256()
    if not root.exists():
        return h.hexdigest()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in skip_top and d != "__pycache__"]
            filenames = [f for f in filenames if f not in skip_top]
        else:
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(
                os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            h.update(f"{os.path.join(rel_dir, name)}\0{stat.S_IMODE(st.st_mode):o}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(b"L" + os.readlink(path).encode())
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    for block in iter(functools.partial(f.read, 1 << 20), b""):
                        h.update(block)
        h.update(b"\n")
    return h.hexdigest()


#: relative path -> (size, mtime in ns)
Snapshot = Dict[str, Tuple[int, int]]


def snapshot(root: Path) -> Snapshot:
    """relative path -> (size, mtime) of every regular file below ``root``."""
    out: Snapshot = {}
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            path = os.path.join(dirpath, f)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                out[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return out


def step_key(inputs: Mapping[str, Any]) -> str:
    return cache_key("layer", inputs)[:KEY_CHARS]


def changed_inputs(old: Optional[Mapping[str, Any]], new: Mapping[str, Any]) -> List[str]:
    """Names of the inputs that differ (``prev`` alone means: an earlier step changed)."""
    if old is None:
        return ["(never built)"]
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


@dataclass(frozen=True)
class StepRecord:
    label: str
    key: str
    hit: bool
    seconds: float
    changed: Tuple[str, ...] = ()
    #: the remote cache's part: "hit" (pulled), "pushed", "push failed", "" (none)
    remote: str = ""


class LayerStore:
    """Where layers live: the cache's ``layers/`` directory, or (``--no-cache``) a scratch
    directory in the work dir whose layers are never reused."""

    def __init__(self, cache_root: Path, scratch: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.dir = (cache_root / "layers") if enabled else scratch
        self.dir.mkdir(parents=True, exist_ok=True)
        self._index = ArtifactCache(cache_root, "layers") if enabled else None
        self._n = 0
        self._uncommitted: List[Path] = []
        if enabled:
            self._remove_dead_scratch()

    def _remove_dead_scratch(self) -> None:
        """Upper directories of builds that died (their pid is gone)."""
        for p in self.dir.glob("tmp-*"):
            try:
                pid = int(p.name.split("-")[1])
            except (IndexError, ValueError):
                continue
            if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(p, ignore_errors=True)

    def lookup(self, key: str) -> Optional[Path]:
        if self._index is None:
            return None
        entry = self._index.get(key)
        if entry is None:
            return None
        self._index.touch(key)
        return Path(entry.path)

    def last_inputs(self, step_id: str) -> Optional[Dict[str, Any]]:
        if self._index is None:
            return None
        return self._index.note(f"last:{step_id}")

    @contextlib.contextmanager
    def new_upper(self, label: str) -> Iterator[Path]:
        """A fresh upper directory (and its overlay work dir beside it); removed on failure
        unless :meth:`commit` took it."""
        self._n += 1
        upper = self.dir / f"tmp-{os.getpid()}-{self._n}-{label.replace('/', '_')}"
        work = upper.with_name(upper.name + ".work")
        upper.mkdir(mode=0o755)
        self._uncommitted.append(upper)
        work.mkdir()
        try:
            yield upper
        except BaseException:
            shutil.rmtree(upper, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def save_hooks_delta(self, key: str, hooks: Path,
                         before: Mapping[str, Tuple[int, int]]) -> None:
        """Keep the files a host step added to or changed in the hooks tree."""
        if self._index is None:
            return
        delta = {}
        for rel, sig in snapshot(hooks).items():
            if before.get(rel) != sig:
                path = hooks / rel
                delta[rel] = [stat.S_IMODE(path.stat().st_mode),
                              base64.b64encode(path.read_bytes()).decode()]
        if delta:
            log.debug("step %s wrote into the hooks tree: %s", key, ", ".join(sorted(delta)))
        self._index.set_note(f"hooks:{key}", delta)

    def hooks_delta(self, key: str) -> Dict[str, Any]:
        """The hooks-tree files kept with ``key``'s layer: path -> [mode, base64 data]."""
        return (self._index.note(f"hooks:{key}") if self._index is not None else None) or {}

    def set_hooks_delta(self, key: str, delta: Mapping[str, Any]) -> None:
        if self._index is not None:
            self._index.set_note(f"hooks:{key}", dict(delta))

    def stack_stamp(self, stack: Sequence[Path], relevant: Callable[[Path], bool]
                    ) -> Optional[List[List[Any]]]:
        """What identifies the contents of a stack of cached layers for :meth:`note_for`:
        the key of each layer for which ``relevant`` holds, with its directory's inode and
        change time (a layer is never written once committed; one pruned and built again is
        a new directory). None when the cache is off or a layer is not a committed one."""
        if self._index is None:
            return None
        stamp: List[List[Any]] = []
        for layer in stack:
            if layer.parent != self.dir or layer.name.startswith("tmp-"):
                return None
            try:
                st = os.stat(layer)
            except OSError:
                return None
            if relevant(layer):
                stamp.append([layer.name, st.st_ino, st.st_ctime_ns])
        return stamp

    def note_for(self, name: str, stamp: Optional[List[List[Any]]]) -> Optional[Any]:
        """The value :meth:`set_note_for` kept under ``name`` for the same ``stamp``."""
        if self._index is None or stamp is None:
            return None
        kept = self._index.note(name)
        return kept["value"] if kept and kept.get("stamp") == stamp else None

    def set_note_for(self, name: str, stamp: Optional[List[List[Any]]], value: Any) -> None:
        """Keep ``value`` under ``name`` (one per name: the last stack's) for ``stamp``."""
        if self._index is not None and stamp is not None:
            self._index.set_note(name, {"stamp": stamp, "value": value})

    def add_scratch(self, path: Path) -> None:
        """Remove ``path`` with this build's other scratch directories (:meth:`close`)."""
        self._uncommitted.append(path)

    def restore_hooks_delta(self, key: str, hooks: Path) -> None:
        for rel, (mode, data) in self.hooks_delta(key).items():
            path = hooks / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(base64.b64decode(data))
            os.chmod(path, mode)

    def close(self) -> None:
        """Remove the upper directories of this build that did not become cached layers
        (call once nothing is mounted from them any more)."""
        if self._index is None:
            return
        for upper in self._uncommitted:
            shutil.rmtree(upper, ignore_errors=True)
        self._uncommitted.clear()

    def work_dir(self, upper: Path) -> Path:
        return upper.with_name(upper.name + ".work")

    def commit(self, key: str, upper: Path, step_id: str, inputs: Mapping[str, Any]) -> Path:
        """Make ``upper`` the layer for ``key`` (or drop it if another build got there first)."""
        if self._index is None:
            return upper
        self._uncommitted.remove(upper)
        final = self.dir / key
        with self._index.lock(key):
            if final.exists():
                shutil.rmtree(upper, ignore_errors=True)
            else:
                os.rename(upper, final)
            self._index.record_dir(key, final, dict(inputs), size=disk_usage(final))
            self._index.set_note(f"last:{step_id}", dict(inputs))
        return final


def disk_usage(path: Path) -> int:
    """Bytes the files below ``path`` take on disk (their allocated blocks)."""
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for f in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total


#: DIB_* variables that only shape the outputs (keyed by the finished-image cache instead)
#: or the test harness, never the tree
OUTPUT_ONLY_PREFIXES = ("DIB_BOOT_TEST_", "DIB_QCOW2_", "DIB_E2E_", "DIB_TEST_", "DIB_LIBVIRT_",
                        "DIB_CONTAINER_", "DIB_CACHE_", "DIB_UUID_SEED", "DIB_IMAGE_SIZE",
                        "DIB_IMAGE_EXTRA_SIZE", "DIB_BLOCK_SIZE", "DIB_CHECKSUM", "DIB_NO_CACHE",
                        "DIB_BLOCK_DEVICE_CONFIG")


def build_inputs(arch: str, env: Mapping[str, str], packages: Sequence[str]) -> Dict[str, Any]:
    """The build-wide inputs that can change any step's result."""
    volatile = {"DIB_IMAGE_CACHE", "DIB_LOCKFILES", "DIB_DEBUG_TRACE", "DIB_ARGS", "DIB_ENV",
                "DIB_PYTHON_EXEC", "DIB_ENGINE_PYTHON", "DIB_OFFLINE", "DIB_QUIET",
                "DIB_NO_TIMESTAMP", "DIB_CHROOT_CACHE",
                # where the work directory lives (a farm's workers set these for themselves)
                "DIB_NO_TMPFS", "DIB_MIN_TMPFS", "DIB_NO_PROGRESS"}
    # where layers are shared (DIB_REMOTE_CACHE*) or built (DIB_FARM*) changes no layer
    dib_vars = {k: v for k, v in env.items() if k.startswith("DIB_") and k not in volatile
                and not k.startswith(OUTPUT_ONLY_PREFIXES + ("DIB_REMOTE_CACHE", "DIB_FARM"))}
    apt = hashlib.sha256()
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            apt.update(f.name.encode() + b"\0" + f.read_bytes())
    # a reproducible build's epoch is in files, logs and the initramfs
    return {"arch": arch, "dib_env": json.dumps(dib_vars, sort_keys=True),
            "packages": list(packages), "host_apt_sources": apt.hexdigest(),
            **epoch_inputs(env.get("SOURCE_DATE_EPOCH", "").strip())}


def now() -> float:
    return time.monotonic()
