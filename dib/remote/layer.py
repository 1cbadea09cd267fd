"""An overlay upper directory as an OCI layer tar, and back.

overlayfs marks a deleted path with a character device 0/0 of the same name and a directory
whose lower contents are hidden with the ``trusted.overlay.opaque=y`` attribute; an OCI layer
says the same with an empty file ``.wh.NAME`` beside it and an empty file ``.wh..wh..opq`` in
the directory (image-spec, layer.md). :func:`pack` writes the OCI form, :func:`unpack` turns it
back into the overlay form, so a pulled layer is the directory the build that pushed it had.

Owners are numeric, modes, times, symlinks, hard links, devices and extended attributes
(``security.capability`` and the like, as PAX ``SCHILY.xattr.*`` records) are kept.
Directories that overlayfs marked in ways an OCI layer cannot say -- redirects, metacopy
files -- make :func:`pack` refuse the layer (:class:`Unsupported`); with the kernel defaults
(redirect_dir and metacopy off) upper directories have neither. overlayfs's bookkeeping
attributes (``trusted.overlay.origin``, ``impure``, ...) are left out: they keep inode
numbers stable and mean nothing in another tree.

A pulled archive is checked before anything is written: no absolute names, no ``..``, no
member below a symlink of the same archive, hard links only to earlier members.
"""
from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from pathlib import Path, PurePosixPath
from typing import IO, Dict, List, Optional, Tuple, cast

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
OVERLAY_XATTR = "trusted.overlay."
OPAQUE_XATTR = "trusted.overlay.opaque"
PAX_XATTR = "SCHILY.xattr."
#: overlayfs attributes that change what the merged tree shows and that an OCI layer has no
#: word for; the others (origin, impure, nlink, ...) only serve overlayfs's inode numbers and
#: bookkeeping and are dropped
UNSUPPORTED_XATTRS = {"trusted.overlay.redirect", "trusted.overlay.metacopy"}


class Unsupported(Exception):
    """The upper directory holds something an OCI layer cannot express."""


class BadLayer(Exception):
    """A pulled archive that is not a layer this module would write."""


class HashingWriter:
    """A write-only file that hashes what passes through (the layer's diff_id)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _xattrs(path: str) -> Dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in names:
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _plain(name: str, mtime: float, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime, info.mode, info.uname, info.gname = mtime, mode, "", ""
    return info


def pack(upper: Path, out: IO[bytes]) -> str:
    """Write ``upper`` as an OCI layer tar to ``out``; returns its sha256 (the diff_id).

    Entries are sorted and carry no user or group names, so the same directory gives the
    same bytes."""
    writer = HashingWriter(out)
    with tarfile.open(fileobj=cast(IO[bytes], writer), mode="w|",
                      format=tarfile.PAX_FORMAT, dereference=False) as tar:
        for full, name in _sorted_tree(upper):
            st = os.lstat(full)
            attrs = _xattrs(full)
            overlay = {k: v for k, v in attrs.items() if k.startswith(OVERLAY_XATTR)}
            if _is_whiteout(st):
                parent, base = os.path.split(name)
                tar.addfile(_plain(os.path.join(parent, WHITEOUT_PREFIX + base), st.st_mtime))
                continue
            strange = set(overlay) & UNSUPPORTED_XATTRS
            if strange:
                raise Unsupported(f"/{name} has overlayfs attributes an OCI layer cannot "
                                  f"express ({', '.join(sorted(strange))})")
            # (None for a socket, whatever the stubs say: nothing a layer can hold)
            info: Optional[tarfile.TarInfo] = tar.gettarinfo(full, arcname=name)
            if info is None:
                continue
            info.uname = info.gname = ""
            info.pax_headers = {PAX_XATTR + k: v.decode("utf-8", "surrogateescape")
                                for k, v in sorted(attrs.items()) if k not in overlay}
            if info.isreg():
                with open(full, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
            if stat.S_ISDIR(st.st_mode):
                if overlay.get(OPAQUE_XATTR) == b"y":
                    tar.addfile(_plain(os.path.join(name, OPAQUE), st.st_mtime))
    writer.flush()
    return writer.sha.hexdigest()


def _sorted_tree(root: Path) -> List[Tuple[str, str]]:
    """Every path below ``root`` (absolute, archive name), each directory before what it
    holds, names in byte order."""
    out: List[Tuple[str, str]] = []

    def walk(directory: str, prefix: str) -> None:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            name = f"{prefix}{e.name}"
            out.append((e.path, name))
            if e.is_dir(follow_symlinks=False):
                walk(e.path, name + "/")

    walk(os.fspath(root), "")
    return out


# -- pulling ----------------------------------------------------------------------------------

def _check(members: List[tarfile.TarInfo]) -> None:
    seen: Dict[str, tarfile.TarInfo] = {}
    links = set()
    for m in members:
        p = PurePosixPath(m.name)
        if m.name.startswith("/") or ".." in p.parts or not p.parts or p.parts == (".",):
            raise BadLayer(f"member {m.name!r} is outside the layer")
        for i in range(1, len(p.parts)):
            if str(PurePosixPath(*p.parts[:i])) in links:
                raise BadLayer(f"member {m.name!r} is below a symlink of the layer")
        if m.islnk():
            if m.linkname not in seen or not seen[m.linkname].isreg():
                raise BadLayer(f"hard link {m.name!r} points to {m.linkname!r}, not an "
                               "earlier file of the layer")
        elif not (m.isreg() or m.isdir() or m.issym() or m.ischr() or m.isblk()
                  or m.isfifo()):
            raise BadLayer(f"member {m.name!r} has a type a layer cannot hold")
        if m.issym():
            links.add(str(p))
        seen[str(p)] = m


def unpack(tar_path: Path, dest: Path) -> None:
    """Extract the OCI layer ``tar_path`` into the empty directory ``dest`` in overlay form
    (whiteout devices, opaque attributes). Raises :class:`BadLayer` on an archive that
    :func:`pack` would not have written."""
    with tarfile.open(tar_path, mode="r:") as tar:
        members = tar.getmembers()
        _check(members)
        whiteouts: List[Tuple[str, float]] = []
        opaque: List[str] = []
        regular: List[tarfile.TarInfo] = []
        for m in members:
            parent, base = os.path.split(os.path.normpath(m.name))
            if base == OPAQUE:
                opaque.append(parent)
            elif base.startswith(WHITEOUT_PREFIX):
                whiteouts.append((os.path.join(parent, base[len(WHITEOUT_PREFIX):]), m.mtime))
            else:
                regular.append(m)
        tar.extractall(dest, members=regular, numeric_owner=True)
        for path, mtime in whiteouts:  # as overlayfs makes them: mode 0, device 0/0
            os.mknod(dest / path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
            os.utime(dest / path, (mtime, mtime))
        for path in opaque:
            os.setxattr(dest / path if path else dest, OPAQUE_XATTR, b"y")
        # extended attributes after chown (which drops security.capability), then the
        # directories' times again (the whiteouts and attributes touched them)
        for m in regular:
            for key, value in m.pax_headers.items():
                if key.startswith(PAX_XATTR):
                    os.setxattr(dest / m.name, key[len(PAX_XATTR):],
                                value.encode("utf-8", "surrogateescape"),
                                follow_symlinks=False)
        for m in reversed(regular):
            if m.isdir() or m.issym():
                os.utime(dest / m.name, (m.mtime, m.mtime), follow_symlinks=False)


def file_digest(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()

