"""Running a :class:`~dib.blockdev.config.Config`: devices, tables, filesystems, mounts.

:meth:`BlockDevice.create` walks the nodes in the config's creation order. Every action that
needs undoing registers its undo on an ExitStack immediately after it succeeded (loop attach →
detach, partx add → partx delete, mknod → unlink, mount → sync/fstrim/umount), so a failure
at any point releases exactly what exists, in reverse order. The steps run on a private
stack first; only when every node has been created is that stack handed to the caller's in
one piece (``pop_all``). If creation fails, the private stack unwinds before the exception
reaches the caller, and the half-made image files are deleted.

The caller's stack therefore owns everything afterwards: leaving it unmounts (reverse mount
order, filling vfat filesystems from their staging directories, see :mod:`dib.blockdev.mount`),
removes partition devices and detaches the loop devices. The raw image files stay.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, NamedTuple, Optional, Tuple

from dib.blockdev import loop, mkfs, mount, partition, parttable
from dib.blockdev.config import Config
from dib.blockdev.loop import LoopSpec
from dib.blockdev.mkfs import MkfsSpec
from dib.blockdev.mount import MountSpec
from dib.blockdev.node import derive_uuid, node_error
from dib.blockdev.params import Params
from dib.blockdev.partition import PartitioningSpec

log = logging.getLogger("dib.blockdev")


class MountInfo(NamedTuple):
    mount_point: str
    device: str
    fstype: str
    label: str
    uuid: str


@dataclass(frozen=True)
class State:
    """What :meth:`BlockDevice.create` made. Valid until the caller's stack unwinds."""

    config: Config
    mount_base: Path
    image_block_device: str
    """The device of the first local_loop, e.g. ``/dev/loop3`` (for grub-install)."""
    image_block_devices: Mapping[str, str]
    """{node name: device} for local_loop, partition and mkfs nodes."""
    image_files: Mapping[str, Path]
    """{local_loop name: raw image file}."""
    mounts: Tuple[MountInfo, ...]
    """In mount order (parents first); released in reverse."""

    @property
    def root_label(self) -> Optional[str]:
        root = self.config.root_filesystem
        return root.label if root else None

    @property
    def root_fstype(self) -> Optional[str]:
        root = self.config.root_filesystem
        return root.type if root else None

    def mount_dir(self, mount_point: str) -> Path:
        """Where ``mount_point`` of the image is on the host."""
        return mount.host_path(self.mount_base, mount_point)

    def fstab(self) -> str:
        return self.config.fstab()


class BlockDevice:
    """Creates the block devices described by ``config``; see the module docstring."""

    def __init__(self, config: Config, params: Params) -> None:
        self.config = config
        self.params = params

    def create(self, stack: contextlib.ExitStack) -> State:
        created: List[Path] = []
        try:
            with contextlib.ExitStack() as own:
                state = self._create(own, created)
                stack.enter_context(own.pop_all())
            return state
        except BaseException:
            for path in created:
                loop.remove_image_file(path)
            raise

    def _create(self, stack: contextlib.ExitStack, created: List[Path]) -> State:
        params, config = self.params, self.config
        devices: Dict[str, str] = {}
        files: Dict[str, Path] = {}
        disks: Dict[str, Tuple[int, int]] = {}
        mounts: List[MountInfo] = []
        params.mount_base.mkdir(parents=True, exist_ok=True)
        for spec in config.ordered():
            log.debug("block-device node %s (%s)", spec.name, spec.plugin)
            if isinstance(spec, LoopSpec):
                size = spec.image_size(params)
                if size is None:
                    raise node_error(spec.name, "the image size is unknown: give the "
                                     "local_loop a 'size' or pass an image size", "size")
                path = spec.image_path(params)
                created.append(path)
                loop.create_image_file(path, size)
                devices[spec.name] = loop.attach(stack, path, spec.sector_size(params))
                files[spec.name] = path
                disks[spec.name] = (size, spec.sector_size(params))
            elif isinstance(spec, PartitioningSpec):
                size, sector = disks[spec.base]
                layout = partition.plan(spec, size, sector, spec.base)
                parttable.write_table(devices[spec.base], layout)
                devices.update(parttable.map_partitions(stack, devices[spec.base], layout))
            elif isinstance(spec, MkfsSpec):
                root = config.root_filesystem
                populate = params.populate if root is not None and root.name == spec.name \
                    else None
                mkfs.make(spec, devices[spec.base],
                          populate=None if populate is None else str(populate),
                          epoch=params.epoch,
                          hash_seed=str(derive_uuid(params.uuid_seed, "hash", spec.name)))
                devices[spec.name] = devices[spec.base]
            elif isinstance(spec, MountSpec):
                fs = config.filesystem(spec)
                device = devices[fs.name]
                mount.mount(stack, device, fs.type,
                            mount.host_path(params.mount_base, spec.mount_point),
                            spec.name, params.mount_base.parent, epoch=params.epoch)
                mounts.append(MountInfo(spec.mount_point, device, fs.type, fs.label, fs.uuid))
            # partition nodes are made by their partitioning node; fstab nodes are text only
        return State(config, params.mount_base, devices[config.loops[0].name],
                     devices, files, tuple(mounts))
