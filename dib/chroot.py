"""The bind-mounted chroot in which the in-chroot phases run.

:func:`chroot_mounts` mounts proc, a read-only sysfs, the host's /dev and /dev/pts, and the
hooks tree read-only at ``/tmp/in_target.d``; leaving it kills whatever still runs inside
and unmounts in reverse order. :func:`install_host_resolv_conf` gives the build the host's DNS
configuration and :func:`restore_resolv_conf` puts the image's own back.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator, Optional

from dib import mounts

log = logging.getLogger("dib.chroot")

IN_TARGET = "tmp/in_target.d"
#: where the host's cache directory appears in the chroot (exported as DIB_CHROOT_CACHE)
CHROOT_CACHE = "tmp/dib-cache"


@contextlib.contextmanager
def chroot_mounts(root: Path, hooks: Path, cache: Optional[Path] = None) -> Iterator[Path]:
    """Make ``root`` usable as a chroot for hooks; yields ``root``.

    ``cache``, a host directory, is bind-mounted writable at ``/tmp/dib-cache`` so that
    elements can keep downloads (e.g. .deb files) across builds without baking them into
    the image.
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
        # registered last, so it runs first on the way out: nothing may keep the mounts busy
        stack.callback(mounts.kill_processes_in, root)
        yield root


def chroot_argv(root: Path, argv) -> list:
    return ["chroot", os.fspath(root), *[os.fspath(a) for a in argv]]


def install_host_resolv_conf(root: Path) -> None:
    """Give the build the host's resolv.conf; the image's own is kept as resolv.conf.ORIG
    (elements may edit that file to choose the final content)."""
    etc = root / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    conf, orig = etc / "resolv.conf", etc / "resolv.conf.ORIG"
    if conf.exists() or conf.is_symlink():
        os.replace(conf, orig)
    host = Path("/etc/resolv.conf")
    conf.write_bytes(host.read_bytes() if host.exists() else b"")


def restore_resolv_conf(root: Path) -> None:
    """Put the image's own resolv.conf back, unless the build made /etc/resolv.conf a
    symlink (then that is what the image wants)."""
    conf, orig = root / "etc" / "resolv.conf", root / "etc" / "resolv.conf.ORIG"
    if conf.is_symlink():
        log.info("/etc/resolv.conf became a symlink during the build; keeping it")
        with contextlib.suppress(FileNotFoundError):
            orig.unlink()
        return
    with contextlib.suppress(FileNotFoundError):
        conf.unlink()
    if orig.exists() or orig.is_symlink():
        os.replace(orig, conf)
