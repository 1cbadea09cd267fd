"""Steps keyed by what they read, not by every step before them.

A layer's key normally chains the key of the step before it, so any earlier change re-runs
every later step. Some steps are slow and depend on a small, known part of the tree: the
initramfs depends on the kernel, its modules, the installed packages and a few directories
of configuration, not on the application files an install.d script writes. An element may
declare such a step in ``layer-inputs.yaml``::

    post-install.d/98-dpkg-initramfs-once:
      reads: [/boot, /lib/modules, /etc/initramfs-tools, /var/lib/dpkg/status]
      writes: [/var/tmp]

Its layer is then keyed by the script, the build settings, every element's data and
environment.d (as every step is) and the contents of the ``reads`` paths in the tree the step
starts from -- not by the steps before it. ``writes`` are paths the step may create or
replace whatever the tree held there (scratch space, outputs nobody else writes); it may
change the ``reads`` paths too, since the same contents there give the same result.

The declaration is checked, not trusted: a step that changes anything outside ``reads`` and
``writes`` gets a warning naming the path and is cached by the chain key instead.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import yaml

from dib.errors import ConfigError
from dib.layers import tree_digest

FILE_NAME = "layer-inputs.yaml"
_MAX_LINKS = 40


@dataclass(frozen=True)
class Declaration:
    """What one step reads and may write (absolute paths inside the image)."""
    element: str
    step: str
    reads: Tuple[str, ...]
    writes: Tuple[str, ...] = ()
    #: ``room-mib``: what the step adds to the tree at most; the disk is sized with it in
    #: place of the step's layer, so the step may still run while the tree is copied into
    #: the disk (:mod:`dib.beside`)
    room_mib: Optional[int] = None
    #: ``beside: true``: the steps after it do not read what it writes, so it may run beside
    #: them (:mod:`dib.beside`)
    beside: bool = False


def _paths(value: object, where: str, key: str, *, required: bool) -> Tuple[str, ...]:
    if value is None and not required:
        return ()
    if not isinstance(value, list) or (required and not value) or not all(
            isinstance(p, str) and p.startswith("/") and ".." not in PurePosixPath(p).parts
            for p in value):
        raise ConfigError(f"{where}: '{key}' must be a {'non-empty ' if required else ''}list "
                          "of absolute paths inside the image (no '..')",
                          hint=f"e.g. {key}: [/boot, /etc/initramfs-tools]")
    return tuple(sorted({os.path.normpath(p) for p in value}))


def parse(text: str, element: str, where: str, phases: Iterable[str]) -> Tuple[Declaration, ...]:
    """The declarations of ``layer-inputs.yaml`` (``where`` names the file in errors)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    if doc is None:
        return ()
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a mapping of 'phase.d/script' to "
                          "{reads: [...], writes: [...]}")
    phases = tuple(phases)
    out = []
    for step, body in sorted(doc.items(), key=lambda kv: str(kv[0])):
        phase, _, script = str(step).partition("/")
        if phase not in phases or not script or "/" in script:
            raise ConfigError(f"{where}: key '{step}' is not 'phase/script' for a phase whose "
                              f"steps are layers ({', '.join(phases)})")
        if not isinstance(body, dict) or set(body) - {"reads", "writes", "beside", "room-mib"}:
            raise ConfigError(f"{where}: '{step}' must be a mapping with 'reads' and "
                              "optionally 'writes', 'beside' and 'room-mib'")
        if not isinstance(body.get("beside", False), bool):
            raise ConfigError(f"{where}: '{step}: beside' must be true or false, not "
                              f"{body['beside']!r}")
        room = body.get("room-mib")
        if room is not None and (not isinstance(room, int) or isinstance(room, bool)
                                 or room < 0):
            raise ConfigError(f"{where}: '{step}: room-mib' must be a whole number of MiB "
                              f"(0 or more), not {room!r}", hint="e.g. room-mib: 96")
        out.append(Declaration(element, str(step),
                               _paths(body.get("reads"), where, f"{step}: reads", required=True),
                               _paths(body.get("writes"), where, f"{step}: writes",
                                      required=False), room, body.get("beside", False)))
    return tuple(out)


def load(element_dirs: Mapping[str, Path], phases: Iterable[str]) -> Dict[str, Declaration]:
    """Every element's declarations, by step (``phase/script``)."""
    phases = tuple(phases)
    found: Dict[str, Declaration] = {}
    for name, path in element_dirs.items():
        f = path / FILE_NAME
        if not f.is_file():
            continue
        for d in parse(f.read_text(), name, f"element {name}: {FILE_NAME}", phases):
            found[d.step] = d
    return found


def resolve(root: Path, path: str) -> str:
    """``path`` with every symlink on the way followed as the image would (an absolute target
    starts again at ``root``); the result is relative to ``root``. The last component is
    followed too, so ``/lib/modules`` on a merged-/usr tree is ``usr/lib/modules``."""
    return trail(root, path)[0]


def trail(root: Path, path: str) -> Tuple[str, Tuple[str, ...]]:
    """:func:`resolve`'s result, with every path (relative to ``root``) it looked at on the
    way: each directory it went through, each symlink it followed, and the result."""
    parts = list(PurePosixPath(path).parts[1:])
    done: List[str] = []
    looked: List[str] = []
    hops = 0
    while parts:
        name = parts.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            if done:
                done.pop()
            continue
        here = root.joinpath(*done, name)
        looked.append("/".join([*done, name]))
        if here.is_symlink():
            hops += 1
            if hops > _MAX_LINKS:
                break
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            parts = list(PurePosixPath(target).parts[1 if target.startswith("/") else 0:]) \
                + parts
            continue
        done.append(name)
    return "/".join(done), tuple(looked)


def shadows(layer: Path, looked: Iterable[str], results: Iterable[str]) -> bool:
    """Whether an overlay layer (a committed upper directory) can change what a tree with it
    shows at ``results`` (resolved paths, relative) or on the way there (``looked``, as
    :func:`trail` gives them): it has an entry at a result (and so anything below it), or on
    the way something other than a plain directory -- a file, a symlink, a whiteout, an
    opaque or redirected directory -- which replaces what the layers below show there
    instead of merging with it. A plain directory on the way is only the parent of a change
    elsewhere."""
    if any(os.path.lexists(layer / rel) for rel in results):
        return True
    for rel in looked:
        path = layer / rel
        try:
            st = path.lstat()
        except (FileNotFoundError, NotADirectoryError):
            continue
        if not stat.S_ISDIR(st.st_mode) or is_opaque(str(path)):
            return True
    return False


def digest(root: Path, rel: str) -> str:
    """Contents of ``root/rel``: a file's mode and bytes, a directory's whole tree, or absent."""
    path = root / rel if rel else root
    try:
        st = path.lstat()
    except FileNotFoundError:
        return "absent"
    if stat.S_ISDIR(st.st_mode):
        return "dir:" + tree_digest(path)
    h = hashlib.sha256(f"{stat.S_IMODE(st.st_mode):o}\0".encode())
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    elif stat.S_ISLNK(st.st_mode):
        h.update(b"L" + os.readlink(path).encode())
    return f"{stat.S_IFMT(st.st_mode):o}:{h.hexdigest()}"


@dataclass(frozen=True)
class Reading:
    """A declaration applied to one tree: the digests of what it reads, and where (relative to
    the tree, symlinks followed) it may change things."""
    inputs: Dict[str, str]
    allowed: Tuple[str, ...]


def read(root: Path, decl: Declaration) -> Reading:
    where = {p: resolve(root, p) for p in decl.reads + decl.writes}
    inputs = {f"read:{p}": digest(root, where[p]) for p in decl.reads}
    return Reading(inputs, tuple(sorted(set(where.values()))))


def _under(rel: str, allowed: Iterable[str]) -> bool:
    return any(a == "" or rel == a or rel.startswith(a + "/") for a in allowed)


def is_opaque(path: str) -> bool:
    for attr in ("trusted.overlay.opaque", "trusted.overlay.redirect"):
        try:
            os.getxattr(path, attr, follow_symlinks=False)
            return True
        except OSError:
            continue
    return False


def _changes(upper: Path, skip: Callable[[str], bool]) -> Iterator[str]:
    """What a step's upper directory changed, as paths relative to the tree: every
    non-directory (a new or changed file, a symlink, a whiteout) and every opaque or
    redirected directory; other directories are only the parents overlayfs copied up on the
    way to a change. Directories for which ``skip`` holds are not looked into."""
    for dirpath, dirnames, filenames in os.walk(upper):
        rel_dir = os.path.relpath(dirpath, upper)
        rel_dir = "" if rel_dir == "." else rel_dir
        for d in list(dirnames):
            rel = os.path.join(rel_dir, d)
            full = os.path.join(dirpath, d)
            if os.path.islink(full) or is_opaque(full):
                yield rel
                dirnames.remove(d)
            elif skip(rel):
                dirnames.remove(d)
        yield from (os.path.join(rel_dir, f) for f in filenames)


def _first_ten(found: Iterable[str]) -> List[str]:
    return sorted("/" + rel for rel in itertools.islice(found, 10))


def undeclared(upper: Path, allowed: Iterable[str]) -> List[str]:
    """Paths a step's upper directory changed (:func:`_changes`) outside ``allowed`` (first
    ten, sorted)."""
    allowed = tuple(allowed)
    return _first_ten(rel for rel in _changes(upper, lambda rel: _under(rel, allowed))
                      if not _under(rel, allowed))


def _related(rel: str, paths: Iterable[str]) -> bool:
    """``rel`` is one of ``paths``, below one, or above one."""
    return any(p == "" or rel == p or rel.startswith(p + "/") or p.startswith(rel + "/")
               for p in paths)


def touching(upper: Path, paths: Iterable[str]) -> List[str]:
    """Changes (:func:`_changes`) in a step's upper directory at, below or above one of
    ``paths`` (first ten, sorted): what another step's result would collide with."""
    paths = tuple(paths)
    return _first_ten(rel for rel in _changes(upper, lambda rel: not _related(rel, paths))
                      if _related(rel, paths))
