"""The bind-mounted chroot in which the in-chroot phases run.

:func:`chroot_mounts` mounts proc, a read-only sysfs, the host's /dev and /dev/pts, and the
hooks tree read-only at ``/tmp/in_target.d``; leaving it kills whatever still runs inside
and unmounts in reverse order. The host's resolv.conf is bind-mounted
over the tree's, so no layer records it.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

from dib import mounts

log = logging.getLogger("dib.chroot")

IN_TARGET = "tmp/in_target.d"
#: where the host's cache directory appears in the chroot (exported as DIB_CHROOT_CACHE)
CHROOT_CACHE = "tmp/dib-cache"


@contextlib.contextmanager
def chroot_mounts(root: Path, hooks: Path, cache: Optional[Path] = None,
                  resolv: Optional[Path] = None) -> Iterator[Path]:
    """Make ``root`` usable as a chroot for hooks; yields ``root``.

    ``cache``, a host directory, is bind-mounted writable at ``/tmp/dib-cache`` so that
    elements can keep downloads (e.g. .deb files) across builds without baking them into
    the image. ``resolv``, a copy of the host's resolv.conf, is bind-mounted over the tree's
    own, so name resolution works during the build while no layer ever records the host's
    DNS settings (and writes to /etc/resolv.conf cannot reach the host's file).
    """
    with contextlib.ExitStack() as stack:
        for sub in ("proc", "sys", "dev", IN_TARGET) + ((CHROOT_CACHE,) if cache else ()):
            (root / sub).mkdir(parents=True, exist_ok=True)
        stack.enter_context(mounts.mounted("proc", root / "proc", fstype="proc"))
        stack.enter_context(mounts.mounted("sysfs", root / "sys", fstype="sysfs",
                                           options=("ro", "nosuid", "nodev", "noexec")))
        stack.enter_context(mounts.mounted("/dev", root / "dev", bind=True))
        stack.enter_context(mounts.mounted("/dev/pts", root / "dev" / "pts", bind=True))
        stack.enter_context(mounts.mounted(os.fspath(hooks), root / IN_TARGET, bind=True,
                                           options=("ro",)))
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            stack.enter_context(mounts.mounted(os.fspath(cache), root / CHROOT_CACHE, bind=True))
        if resolv is not None:
            target = _resolv_target(root)
            if target is not None:
                stack.enter_context(mounts.mounted(os.fspath(resolv), target, bind=True))
        # registered last, so it runs first on the way out: nothing may keep the mounts busy
        stack.callback(mounts.kill_processes_in, root)
        yield root


def chroot_argv(root: Path, argv: Sequence[Union[str, "os.PathLike[str]"]]) -> List[str]:
    return ["chroot", os.fspath(root), *[os.fspath(a) for a in argv]]


def host_resolv_copy(dest: Path) -> Path:
    """A private copy of the host's resolv.conf (what chroot_mounts binds into the tree)."""
    host = Path("/etc/resolv.conf")
    dest.write_bytes(host.read_bytes() if host.exists() else b"")
    return dest


def _resolv_target(root: Path) -> Optional[Path]:
    """The file to bind over: /etc/resolv.conf, or what its symlink points to in the tree
    (created empty when missing and its directory exists)."""
    conf = root / "etc" / "resolv.conf"
    target = conf
    if conf.is_symlink():
        link = os.readlink(conf)
        target = root / link.lstrip("/") if os.path.isabs(link) else conf.parent / link
        target = Path(os.path.normpath(target))
        if not os.fspath(target).startswith(os.fspath(root) + "/"):
            log.warning("/etc/resolv.conf points outside the tree (%s); no DNS in the chroot", link)
            return None
    if not target.exists():
        if not target.parent.is_dir():
            log.info("/etc/resolv.conf -> %s does not exist in the tree; no DNS in the chroot",
                     target.relative_to(root))
            return None
        target.touch()
    return target


def restore_resolv_conf(root: Path) -> None:
    """dib compatibility: an element that wants a particular /etc/resolv.conf in the image
    writes it to /etc/resolv.conf.ORIG; put it in place."""
    conf, orig = root / "etc" / "resolv.conf", root / "etc" / "resolv.conf.ORIG"
    if orig.exists() or orig.is_symlink():
        with contextlib.suppress(FileNotFoundError):
            conf.unlink()
        os.replace(orig, conf)
