"""``local_loop``: a sparse image file attached to a loop device.

The file is ``<directory>/<name>.raw``; it is created sparse (``truncate``), so a 20 GiB image
costs nothing until written. ``losetup --find --show`` picks a free device atomically. The
undo, ``losetup --detach``, is registered on the ExitStack as soon as the device exists.

We do not ask for ``--partscan``: on kernels without udev the scan result is unreliable and
partition nodes may never appear, so :mod:`dib.blockdev.partition` maps partitions explicitly
with ``partx`` instead. Detaching removes any partitions the kernel still knows about.

The raw file stays when the stack unwinds: the caller converts it into the output format.
Only when :meth:`BlockDevice.create` itself fails is the half-made file removed.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional

from dib import cmd
from dib.blockdev.node import Fields
from dib.blockdev.params import BLOCK_SIZES, Params
from dib.blockdev.size import parse_abs_size
from dib.errors import BlockDeviceError

log = logging.getLogger("dib.blockdev.loop")


@dataclass(frozen=True)
class LoopSpec:
    plugin: ClassVar[str] = "local_loop"

    name: str
    size: Optional[int] = None
    """Bytes; ``None`` means :attr:`Params.image_size`."""
    directory: Optional[Path] = None
    """``None`` means :attr:`Params.image_dir`."""
    block_size: Optional[int] = None

    @property
    def base(self) -> Optional[str]:
        return None

    def image_path(self, params: Params) -> Path:
        return (self.directory or params.image_dir) / f"{self.name}.raw"

    def sector_size(self, params: Params) -> int:
        return params.block_size or self.block_size or 512

    def image_size(self, params: Params) -> Optional[int]:
        """Bytes, rounded up to a whole sector; ``None`` if no size is known yet."""
        size = self.size if self.size is not None else params.image_size
        if size is None:
            return None
        sector = self.sector_size(params)
        return -(-size // sector) * sector


def parse(name: str, body: Mapping[str, Any], params: Params) -> LoopSpec:
    fields = Fields("local_loop", name, body, ("size", "directory", "block_size"))
    if fields.has("base"):
        raise fields.error("a local_loop has no base", "base")
    size = fields.convert("size", parse_abs_size) if fields.has("size") else None
    directory = fields.text("directory")
    block_size = None
    if fields.has("block_size"):
        block_size = fields.convert("block_size", parse_abs_size)
        if block_size not in BLOCK_SIZES:
            raise fields.error(f"{block_size} is not one of "
                               f"{', '.join(map(str, BLOCK_SIZES))}", "block_size")
    return LoopSpec(name, size, Path(directory) if directory else None, block_size)


def create_image_file(path: Path, size: int) -> None:
    """A sparse file of ``size`` bytes at ``path``, replacing any old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("creating sparse image %s (%d bytes)", path, size)
    with open(path, "wb") as f:
        f.truncate(size)


def attach(stack: contextlib.ExitStack, path: Path, sector_size: int) -> str:
    """Attach ``path`` to a free loop device; its detach goes on ``stack``. Returns the device."""
    device = cmd.output(["losetup", "--find", "--show", "--sector-size", str(sector_size),
                         path],
                        hint="is the loop module loaded, and are we root?")
    if not device.startswith("/dev/"):
        raise BlockDeviceError(f"losetup printed no device for {path}: {device!r}")
    stack.callback(detach, device)
    log.info("attached %s to %s", path, device)
    return device


def detach(device: str) -> None:
    cmd.run(["losetup", "--detach", device],
            hint=f"see 'losetup --list' and 'fuser -vm {device}' for what still uses it")
    log.info("detached %s", device)


def remove_image_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
