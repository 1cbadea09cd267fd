"""``mount``: mounting filesystems under the mount base, and releasing them again.

Mount points are mounted parents first (``/`` before ``/boot`` before ``/boot/efi``) and
released in reverse; the order is an edge chain in the node graph, so it is also the order
of :meth:`Config.mounts`. A mount point maps to ``<mount_base>/<mount_point>``; its directory
is created (inside the parent filesystem, where it stays, as in dib).

Release is ``sync``, ``fstrim`` (so the image stays sparse; a failure is only logged), then
``umount``. A busy mount is not retried in a sleep loop: it is detached lazily as a logged
last resort and reported as a :class:`~dib.errors.BlockDeviceError`, because the image may
still be changing.

**vfat** cannot be mounted on every kernel dib runs on, so it is never mounted. Instead a
staging directory (a temporary directory in the parent of the mount base) is bind-mounted at
the mount point; everything written there during the build (``grub-install`` into
``/boot/efi`` from a chroot, copied trees) lands in the staging directory. When the bind
mount is released after a successful build, the staging tree is copied into the vfat
filesystem with mtools and checked with ``fsck.vfat -n`` (:mod:`dib.blockdev.vfat`), while
the partition device still exists. When the stack unwinds because of an error, the copy is
skipped. The staging directory is removed either way.
"""
from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, ClassVar, Mapping, Optional, Tuple, Type

from dib import cmd
from dib.blockdev import vfat
from dib.blockdev.node import Fields
from dib.blockdev.params import Params
from dib.errors import BlockDeviceError

log = logging.getLogger("dib.blockdev.mount")


@dataclass(frozen=True)
class MountSpec:
    plugin: ClassVar[str] = "mount"

    name: str
    base: str
    mount_point: str


def parse(name: str, body: Mapping[str, Any], params: Params) -> MountSpec:
    fields = Fields("mount", name, body, ("mount_point",))
    base = str(fields.required("base"))
    raw = fields.text("mount_point")
    if raw is None:
        raise fields.error("missing required key 'mount_point' for mount", "mount_point")
    if not raw.startswith("/") or ".." in raw.split("/"):
        raise fields.error(f"'{raw}' is not an absolute path without '..'", "mount_point")
    return MountSpec(name, base, posixpath.normpath(raw).replace("//", "/"))


def order_key(mount_point: str) -> Tuple[str, ...]:
    """Sort key putting every mount point after its parents."""
    return PurePosixPath(mount_point).parts


def host_path(mount_base: Path, mount_point: str) -> Path:
    return mount_base / mount_point.lstrip("/")


def mount(stack: contextlib.ExitStack, device: str, fstype: str, target: Path,
          name: str, staging_dir: Path, epoch: Optional[int] = None) -> None:
    """Mount ``device`` at ``target``; the release goes on ``stack`` right away.

    ``staging_dir`` is where a vfat filesystem's staging directory is created; ``epoch``
    (a reproducible build) is the time mtools gives what it creates there.
    """
    target.mkdir(parents=True, exist_ok=True)
    if fstype == "vfat":
        _mount_staging(stack, device, target, name, staging_dir, epoch)
        return
    cmd.run(["mount", "-t", fstype, device, target],
            hint=f"can this kernel mount {fstype}? see 'dmesg'")
    stack.callback(unmount, target, True)
    log.info("mounted %s (%s) at %s", device, fstype, target)


def _mount_staging(stack: contextlib.ExitStack, device: str, target: Path,
                   name: str, staging_dir: Path, epoch: Optional[int]) -> None:
    staging_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{name}.", suffix=".vfat-staging",
                                    dir=staging_dir))
    stack.callback(shutil.rmtree, staging, True)
    os.chmod(staging, 0o755)
    cmd.run(["mount", "--bind", staging, target])
    stack.push(_FlushToVfat(device, target, staging, epoch))
    log.info("vfat %s: staging %s bind-mounted at %s", device, staging, target)


class _FlushToVfat:
    """Exit callback: release the bind mount, then (on success) fill the vfat filesystem."""

    def __init__(self, device: str, target: Path, staging: Path,
                 epoch: Optional[int] = None) -> None:
        self.device, self.target, self.staging = device, target, staging
        self.epoch = epoch

    def __call__(self, exc_type: Optional[Type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> bool:
        unmount(self.target, False)
        if exc_type is not None:
            log.info("not filling vfat %s from %s: unwinding after an error",
                     self.device, self.staging)
            return False
        vfat.copy_tree(self.staging, self.device, epoch=self.epoch)
        vfat.check(self.device)
        return False


def unmount(target: Path, trim: bool) -> None:
    """``sync``, ``fstrim`` when ``trim``, ``umount``; lazy umount + error when busy."""
    cmd.run(["sync", "--file-system", target], check=False)
    if trim:
        result = cmd.run(["fstrim", "--verbose", target], check=False, capture=True)
        if result.returncode:
            log.warning("fstrim %s failed (ignored): %s", target, result.tail.strip())
    result = cmd.run(["umount", target], check=False, capture=True)
    if result.returncode == 0:
        log.info("unmounted %s", target)
        return
    log.warning("umount %s failed: %s; detaching it lazily", target, result.tail.strip())
    cmd.run(["umount", "--lazy", target], check=False)
    raise BlockDeviceError(f"could not unmount {target}: {result.tail.strip()}",
                           hint=f"a process still uses it (see 'fuser -vm {target}'); it "
                                "was detached lazily, so the image may be incomplete")
