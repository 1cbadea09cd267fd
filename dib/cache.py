"""A content-keyed artifact cache under ``--image-cache`` (``DIB_IMAGE_CACHE``).

Layout::

    $DIB_IMAGE_CACHE/index/           diskcache index: key -> Entry metadata (JSON-able dict)
    $DIB_IMAGE_CACHE/<kind>/<key>.*   the data files, beside the index
    $DIB_LOCKFILES/<kind>-<key>.lock  flock held while an entry is being made

A key is the sha256 of the canonical JSON of everything that changes the artifact
(:func:`cache_key`). An entry is written as a temporary file, renamed into place, and only
then recorded in the index, so a reader never sees half a file; a build that is killed
mid-way leaves at most a ``*.tmp.*`` file, which the next :meth:`ArtifactCache.store` of the
same key removes. Two builds that need the same missing entry serialise on its flock: the
second waits and then finds the entry the first one made.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Set

log = logging.getLogger("dib.cache")

#: bump when the layout or the meaning of an entry changes: old entries are simply missed
FORMAT = 1
#: bump when what a reproducible build (SOURCE_DATE_EPOCH) makes of the same inputs changes:
#: keys with an epoch carry it, so entries an older dib made with that epoch are missed.
#: 2: the bootstrap tool is given the epoch too (before, /etc/shadow's last-change dates were
#: the day the bootstrap was made)
EPOCH_FORMAT = 2


def epoch_inputs(epoch: str) -> Dict[str, Any]:
    """What a reproducible build's epoch adds to a cache key's inputs (unset: nothing, so
    keys stay as they are without one)."""
    return {"source_date_epoch": epoch, "epoch_format": EPOCH_FORMAT} if epoch else {}


def cache_key(kind: str, inputs: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of ``inputs`` (sorted keys, no whitespace)."""
    doc = json.dumps({"kind": kind, "format": FORMAT, "inputs": inputs},
                     sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(doc.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Entry:
    key: str
    kind: str
    path: str
    size: int
    created: float
    inputs: Mapping[str, Any]
    #: last time a build used the entry (for least-recently-used pruning)
    used: float = 0.0
    #: a directory (a layer) rather than a file; ``size`` is then its disk usage
    is_dir: bool = False

    def age_days(self, now: Optional[float] = None) -> float:
        return ((now if now is not None else time.time()) - self.created) / 86400


def describe_inputs(inputs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(inputs.items()))


class ArtifactCache:
    """diskcache-indexed files of one ``kind`` (e.g. ``bootstrap``)."""

    def __init__(self, root: Path, kind: str, lockdir: Optional[Path] = None) -> None:
        self.root = Path(root)
        self.kind = kind
        self.dir = self.root / kind
        self.lockdir = Path(lockdir) if lockdir else self.root / "lockfiles"

    @contextlib.contextmanager
    def _index(self) -> Iterator[Any]:
        import diskcache  # a declared dependency; imported late so pure helpers need nothing

        (self.root / "index").mkdir(parents=True, exist_ok=True)
        index = diskcache.Cache(os.fspath(self.root / "index"))
        try:
            yield index
        finally:
            index.close()

    def path_for(self, key: str, suffix: str) -> Path:
        return self.dir / f"{key}{suffix}"

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive flock for ``key``: released when the holder exits, even if killed."""
        self.lockdir.mkdir(parents=True, exist_ok=True)
        path = self.lockdir / f"{self.kind}-{key[:32]}.lock"
        with open(path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("another build is making %s entry %s; waiting for it", self.kind,
                         key[:12])
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def get(self, key: str) -> Optional[Entry]:
        """The entry for ``key`` if it is recorded and its file is intact, else None."""
        with self._index() as index:
            raw = index.get((self.kind, key))
            if raw is None:
                return None
            entry = Entry(**raw)
            path = Path(entry.path)
            try:
                ok = path.is_dir() if entry.is_dir else path.stat().st_size == entry.size
            except OSError:
                ok = False
            if not ok:
                log.warning("cache entry %s is damaged or gone (%s); dropping it", key[:12],
                            path)
                index.delete((self.kind, key))
                return None
            return entry

    def store(self, key: str, suffix: str, inputs: Mapping[str, Any],
              write: Callable[[Path], object]) -> Entry:
        """Make the file for ``key`` with ``write(tmp_path)``, then record it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path_for(key, suffix)
        for stale in self.dir.glob(f"{key}{suffix}.tmp.*"):
            pid = stale.name.rsplit(".", 1)[-1]
            # only a dead build's leftovers: a live one may be writing its copy right now
            if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
                with contextlib.suppress(OSError):
                    stale.unlink()
        tmp = final.with_name(f"{final.name}.tmp.{os.getpid()}")
        try:
            write(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        entry = Entry(key, self.kind, os.fspath(final), final.stat().st_size, time.time(),
                      dict(inputs))
        with self._index() as index:
            index.set((self.kind, key), asdict(entry))
        return entry

    def entries(self) -> List[Entry]:
        with self._index() as index:
            return [Entry(**index[k]) for k in list(index.iterkeys())
                    if isinstance(k, tuple) and len(k) == 2 and k[0] == self.kind
                    and k in index]

    def prune(self, keep: int, same: Callable[[Entry], Any]) -> int:
        """Keep the ``keep`` newest entries of each ``same(entry)`` group; drop the rest."""
        groups: Dict[Any, List[Entry]] = {}
        for e in self.entries():
            groups.setdefault(same(e), []).append(e)
        dropped = 0
        with self._index() as index:
            for group in groups.values():
                for e in sorted(group, key=lambda x: x.created, reverse=True)[keep:]:
                    index.delete((self.kind, e.key))
                    with contextlib.suppress(OSError):
                        Path(e.path).unlink()
                    dropped += 1
        return dropped

    # -- directories (layers), use times, notes ------------------------------------------------

    def record_dir(self, key: str, path: Path, inputs: Mapping[str, Any], size: int) -> Entry:
        """Record a finished directory (already in place) as the entry for ``key``."""
        now = time.time()
        entry = Entry(key, self.kind, os.fspath(path), size, now, dict(inputs), now, True)
        with self._index() as index:
            index.set((self.kind, key), asdict(entry))
        return entry

    def touch(self, key: str) -> None:
        """Mark ``key`` as just used (least-recently-used pruning keeps it longest)."""
        with self._index() as index:
            with index.transact():
                raw = index.get((self.kind, key))
                if raw is not None:
                    index.set((self.kind, key), {**raw, "used": time.time()})

    def note(self, name: str) -> Optional[Any]:
        """A small JSON-able value stored beside the entries (e.g. a step's last inputs)."""
        with self._index() as index:
            return index.get((self.kind, "note", name))

    def set_note(self, name: str, value: Any) -> None:
        with self._index() as index:
            index.set((self.kind, "note", name), value)

    def drop(self, entry: Entry) -> None:
        """Forget ``entry`` and delete its file or directory."""
        with self._index() as index:
            index.delete((self.kind, entry.key))
        path = Path(entry.path)
        if entry.is_dir:
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


#: the kinds of entry the cache holds (see dib.bootstrap, dib.layers, dib.build)
KINDS = ("bootstrap", "layers", "images")

SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``20G``, ``500M``, ``1048576`` -> bytes (binary units)."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1] if value and value[-1] in SIZE_UNITS else ""
    number = value[: len(value) - len(unit)]
    try:
        return int(float(number) * SIZE_UNITS[unit])
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use e.g. 20G or 500M)") from None


def all_entries(root: Path) -> List[Entry]:
    """Every entry of every kind under ``root``, least recently used first."""
    entries = [e for kind in KINDS for e in ArtifactCache(root, kind).entries()]
    return sorted(entries, key=lambda e: e.used or e.created)


def layers_in_use() -> Set[str]:
    """Names of the directories some overlay mount on this machine uses right now (builds
    pass layers by name, relative to the layer directory)."""
    names: Set[str] = set()
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            if " - overlay " not in line:
                continue
            for opt in line.rsplit(" ", 1)[-1].strip().split(","):
                key, _, value = opt.partition("=")
                if key in ("lowerdir", "upperdir", "workdir"):
                    names.update(os.path.basename(p) for p in value.split(":"))
    return names


def existing_parent(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent (absolute)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def free_space(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path`` (or its
    nearest existing parent)."""
    return shutil.disk_usage(existing_parent(path)).free


#: where the dpkg element keeps the .deb files apt fetched (``<distro>-<release>-<arch>/``)
DEB_ARCHIVES = Path("chroot") / "apt" / "archives"
#: the part of the cache the engine bind-mounts into chroots (DIB_CHROOT_CACHE)
CHROOT_CACHE = Path("chroot")


def deb_files(root: Path) -> List[Entry]:
    """The cached .deb files as entries of kind ``deb`` (not in the index: apt writes them).

    apt reads a cached .deb without writing it, so a file's last use is its newest access or
    modification time -- as exact as the filesystem keeps access times (``relatime`` updates
    them at least daily; under ``noatime`` a file counts as used when it was downloaded).
    apt's ``partial/`` downloads are not entries."""
    out = []
    base = root / DEB_ARCHIVES
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if d != "partial"]
        for name in filenames:
            if not name.endswith(".deb"):
                continue
            path = Path(dirpath) / name
            try:
                st = path.lstat()
            except OSError:
                continue
            out.append(Entry(os.fspath(path.relative_to(base)), "deb", os.fspath(path),
                             st.st_blocks * 512, st.st_mtime, {},
                             max(st.st_atime, st.st_mtime)))
    return out


def bind_mounted(directory: Path, mountinfo: Optional[str] = None) -> bool:
    """Is ``directory`` (or something below it) bind-mounted somewhere on this machine right
    now -- as a build's chroot has the cache's ``chroot/`` while its hooks run?"""
    try:
        real = Path(os.path.realpath(directory))
        st = real.stat()
        if mountinfo is None:
            mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return False
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    rows = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[2] == dev:
            rows.append((fields[3], fields[4]))  # root within the filesystem, mount point
    # the mount ``directory`` is reached through: the longest mount point above it
    home = max(((r, m) for r, m in rows if real == Path(m) or Path(m) in real.parents),
               key=lambda rm: len(rm[1]), default=None)
    if home is None:
        return False
    inside = Path(home[0]) / real.relative_to(home[1])
    return any(Path(r) == inside or inside in Path(r).parents
               for r, m in rows if (r, m) != home)


def prune_lru(root: Path, max_bytes: int, *, min_free: int = 0, min_idle: float = 600.0,
              free: Callable[[Path], int] = free_space,
              chroot_cache_in_use: Callable[[Path], bool] = bind_mounted) -> List[Entry]:
    """Drop least-recently-used entries until the cache holds at most ``max_bytes`` and its
    filesystem has at least ``min_free`` bytes free (as far as dropping the cache can get it).

    The entries are the index's (bootstrap tarballs, layers, images) and the cached .deb
    files (:func:`deb_files`), all in one least-recently-used order. Entries used in the last
    ``min_idle`` seconds are kept whatever the size: a build running right now may have them
    mounted. So are the .deb files while any build has the cache's ``chroot/`` mounted (apt
    may be between downloading a package and installing it). Returns the entries dropped."""
    debs = deb_files(root)
    if debs and chroot_cache_in_use(root / CHROOT_CACHE):
        log.debug("the .deb cache is in use by a running build: not pruned this time")
        debs = []
    entries = sorted(all_entries(root) + debs, key=lambda e: e.used or e.created)
    total = sum(e.size for e in entries)
    available = free(root) if min_free else 0
    dropped = []
    now = time.time()
    mounted = layers_in_use()
    for e in entries:
        if total <= max_bytes and available >= min_free:
            break
        if now - (e.used or e.created) < min_idle or Path(e.path).name in mounted:
            continue
        if e.kind == "deb":
            with contextlib.suppress(OSError):
                os.unlink(e.path)
        else:
            ArtifactCache(root, e.kind).drop(e)
        total -= e.size
        available += e.size
        dropped.append(e)
    return dropped
