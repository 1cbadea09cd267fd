"""What the build hands to the block-device layer, resolved once by the caller.

The block-device code never reads the environment: ``DIB_BLOCK_SIZE``, ``FS_TYPE``,
``ROOT_LABEL``, ``MKFS_OPTS`` and the image size are turned into a :class:`Params` by the
orchestrator, which keeps this layer testable and the precedence rules in one place.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from dib.errors import ConfigError

#: The filesystem types mkfs nodes may use, and the longest label each accepts.
LABEL_LIMITS = {"ext2": 16, "ext3": 16, "ext4": 16, "xfs": 12, "vfat": 11, "swap": 16}

BLOCK_SIZES = (512, 1024, 2048, 4096)


@dataclass(frozen=True)
class Params:
    """Inputs of one block-device run.

    ``image_dir``: where ``<local_loop name>.raw`` files are created (unless the node names a
    ``directory``). ``mount_base``: the directory the ``/`` mount point maps to; vfat staging
    directories are made next to it, in its parent. ``image_size``: bytes, for local_loop nodes
    without a ``size``; ``None`` when not yet known (then partitions are only checked for fit
    in :meth:`BlockDevice.create`). ``block_size``: the resolved ``DIB_BLOCK_SIZE`` or ``None``
    when unset; when set it wins over a local_loop's ``block_size``, else that, else 512.
    ``uuid_seed``: mixed into every derived UUID / disk id, so one seed always gives the same
    identifiers (pass something unique per image if images must not share them).
    ``populate``: a directory the root filesystem is filled from when it is made (``mkfs
    -d``, ext2/3/4 only), instead of being mounted empty and copied into. ``epoch``: a
    reproducible build's SOURCE_DATE_EPOCH; filesystems get it for every time they record
    and a hash seed derived like their UUID (docs/reproducibility.md).
    """

    image_dir: Path
    mount_base: Path
    image_size: Optional[int] = None
    root_fs_type: str = "ext4"
    root_label: Optional[str] = None
    root_mkfs_opts: str = ""
    block_size: Optional[int] = None
    uuid_seed: str = ""
    populate: Optional[Path] = None
    epoch: Optional[int] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_dir", Path(self.image_dir))
        object.__setattr__(self, "mount_base", Path(self.mount_base))
        if self.root_fs_type not in LABEL_LIMITS or self.root_fs_type == "swap":
            raise ConfigError(
                f"root filesystem type '{self.root_fs_type}' is not supported",
                hint="use one of " + ", ".join(t for t in LABEL_LIMITS if t != "swap"))
        if self.block_size is not None and self.block_size not in BLOCK_SIZES:
            raise ConfigError(f"block size {self.block_size} is not supported",
                              hint="DIB_BLOCK_SIZE must be one of "
                                   + ", ".join(map(str, BLOCK_SIZES)))
        if self.image_size is not None and self.image_size <= 0:
            raise ConfigError(f"image size {self.image_size} is not positive")

    @property
    def effective_root_label(self) -> str:
        """``root_label``, else dib's default: ``img-rootfs`` for xfs, ``cloudimg-rootfs``."""
        if self.root_label:
            return self.root_label
        return "img-rootfs" if self.root_fs_type == "xfs" else "cloudimg-rootfs"
