"""The disk image: size it, lay the tree onto the block device, run the final phases there,
and convert the raw disk into every requested format.

After post-root.d the merged tree is measured and copied into the filesystems the block-device
layer made (:mod:`dib.blockdev`); block-device.d, pre-finalise.d, finalise.d (the bootloader)
and cleanup.d run on them; the disk stack then unmounts (writing the ESP) and detaches, the
ext journals' stale blocks are punched out (:mod:`dib.blockdev.journal`), and the caller
writes every disk output from the one raw file (:mod:`dib.outputs`).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from dib import blockdev, cmd, dibcompat, mounts, reproducible, resolver
from dib.beside import Beside
from dib.blockdev import journal, mkfs
from dib.blockdev.node import derive_uuid
from dib.blockdev.partition import PartitioningSpec
from dib.config import BuildConfig
from dib.context import BuildContext, finish_tree
from dib.errors import CommandFailed, ConfigError, DibError
from dib.phases import of_stage
from dib.tree import LayeredTree

log = logging.getLogger("dib.build")


def block_device_config_text(cfg: BuildConfig, res: resolver.Resolution) -> str:
    """DIB_BLOCK_DEVICE_CONFIG (inline or file://), else the first element (in resolution
    order) with block-device-<ARCH>.yaml or block-device-default.yaml, else dib's fallback:
    one filesystem with no partition table."""
    if cfg.block_device_config is not None:
        return cfg.block_device_config
    arch = "ppc64el" if cfg.arch in ("ppc64le", "ppc64el") else cfg.arch
    for name in (f"block-device-{arch}.yaml", "block-device-default.yaml"):
        for e in res.ordered():
            if (e.path / name).is_file():
                log.info("block-device config: %s from element %s", name, e.name)
                return (e.path / name).read_text()
    return blockdev.default_config_text()


def check_block_device_config(cfg: BuildConfig, text: str) -> None:
    """Parse and check the block-device config now (it is pure), so a bad one fails before
    the tree is built rather than after."""
    params = blockdev.Params(image_dir=cfg.tmp_dir, mount_base=cfg.tmp_dir,
                             root_fs_type=cfg.fs_type, root_label=cfg.root_label,
                             root_mkfs_opts=cfg.root_mkfs_options, block_size=cfg.block_size,
                             uuid_seed=cfg.uuid_seed or "check")
    try:
        blockdev.load_config(text, params)
    except ConfigError as exc:
        if cfg.block_device_config is not None:
            exc.message = f"DIB_BLOCK_DEVICE_CONFIG: {exc.message}"
        raise


def _tree_bytes(tree: Path) -> int:
    """Disk usage of the tree (du -sx, bytes)."""
    return int(cmd.output(["du", "-sx", "--block-size=1", tree]).split()[0])


#: partition types of an EFI system partition (sgdisk code, GPT GUID, MBR type)
ESP_TYPES = {"EF00", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "0XEF", "EF"}

#: filesystem overhead beyond the files themselves: metadata, journal, reserved blocks
FS_OVERHEAD = 0.12
FS_FIXED = 96 << 20


def image_size(cfg: BuildConfig, tree_bytes: int, config: "blockdev.Config") -> int:
    """Bytes for the disk: ``--image-size``, else the tree plus a measured margin (12 %% and
    96 MiB for metadata and journal, where dib divides by 0.6) plus every fixed-size
    partition, plus ``DIB_IMAGE_EXTRA_SIZE``; rounded up to a whole MiB."""
    if cfg.image_size_gib is not None:
        return int(cfg.image_size_gib * (1 << 30)) // (1 << 20) * (1 << 20)
    fixed = sum(p.size for spec in config.ordered() if isinstance(spec, PartitioningSpec)
                for p in spec.partitions if isinstance(p.size, int))
    tables = 4 << 20  # alignment gaps, GPT headers
    extra = (cfg.image_extra_size_mib or 0) << 20
    size = int(tree_bytes * (1 + FS_OVERHEAD)) + FS_FIXED + fixed + tables + extra
    mib = 1 << 20
    return (size + mib - 1) // mib * mib


def _copy_tree(tree: Path, dest: Path, tree_bytes: int, disk_bytes: int) -> None:
    try:
        cmd.run(["cp", "-a", "--sparse=always", f"{tree}/.", f"{dest}/"], tail=5)
    except CommandFailed as exc:
        if "No space left on device" not in exc.output_tail:
            raise
        raise DibError(f"the tree ({tree_bytes >> 20} MiB) does not fit in the root filesystem "
                       f"of the {disk_bytes >> 20} MiB disk", hint="give more room with "
                       "DIB_IMAGE_EXTRA_SIZE=<MiB> or --image-size <GiB>") from None


@dataclass(frozen=True)
class DiskResult:
    """What :func:`build_disk` learned."""

    #: the raw disk file (in the work directory)
    raw: Path
    #: the disk has an EFI system partition
    has_esp: bool
    #: the block device's variables the disk and final phases saw (IMAGE_BLOCK_DEVICE, ...)
    env: Mapping[str, str]


def has_esp(config: "blockdev.Config") -> bool:
    """The block-device config makes an EFI system partition."""
    return any(str(p.type).upper() in ESP_TYPES for spec in config.ordered()
               if isinstance(spec, PartitioningSpec) for p in spec.partitions)


#: fill an ext root with mkfs -d when it is made instead of mount + cp -a (off: slower)
POPULATE_AT_CREATION = False


def can_populate(config: "blockdev.Config", tree: Path) -> bool:
    """The root filesystem can be made filled with the tree (``mkfs -d``) instead of being
    mounted empty and copied into: it is ext2/3/4, mounted at ``/``, and every other mount
    point is empty or absent in the tree (whatever is there belongs to that other
    filesystem, which only a copy puts there)."""
    root = config.root_filesystem
    if root is None or root.type not in mkfs.EXT_TYPES:
        return False
    if not any(m.mount_point == "/" for m in config.mounts()):
        return False
    for m in config.mounts():
        if m.mount_point == "/":
            continue
        below = tree / m.mount_point.lstrip("/")
        if below.is_dir() and not below.is_symlink() and any(below.iterdir()):
            return False
    return True


def _extent(device: str) -> Tuple[int, int]:
    """(offset in its disk, size) in bytes of a partition device (offset 0 for a whole
    device), from sysfs."""
    name = Path(device).name
    sys_dir = Path("/sys/class/block") / name
    start = sys_dir / "start"
    offset = int(start.read_text()) * 512 if start.exists() else 0
    return offset, int((sys_dir / "size").read_text()) * 512


def _remake_root(b: BuildContext, config: "blockdev.Config", state: "blockdev.State",
                 params: blockdev.Params, epoch: int) -> Optional[Tuple[Path, int]]:
    """A reproducible build's root filesystem: the mounted one, finished, made again with
    ``mkfs -d`` into a file (the same UUID, label, options and size; every time the epoch;
    see docs/reproducibility.md). What the kernel wrote while it was mounted -- journal,
    allocation, mount times -- is timing, not content; this copy has none of it. Returns
    the file and where in the disk it goes (:func:`_write_at`), or None when the root is
    not ext2/3/4 (then the disk is not reproducible; a warning says so)."""
    root = config.root_filesystem
    if root is None or root.type not in mkfs.EXT_TYPES:
        log.warning("SOURCE_DATE_EPOCH: the %s root filesystem is not made reproducible "
                    "(only ext2/3/4 are); the archive outputs are",
                    root.type if root else "(missing)")
        return None
    device = state.image_block_devices[root.name]
    offset, size = _extent(device)
    remade = b.wd.image / "root.remade"
    with open(remade, "wb") as f:
        f.truncate(size)
    only_root = b.wd.base / "root-only"
    only_root.mkdir(exist_ok=True)
    # a bind mount of the root filesystem alone: nothing mounted below it (the ESP) is seen
    with mounts.mounted(state.mount_dir("/").as_posix(), only_root, bind=True):
        mkfs.make(root, str(remade), populate=str(only_root), epoch=epoch,
                  hash_seed=str(derive_uuid(params.uuid_seed, "hash", root.name)))
    only_root.rmdir()
    reproducible.fix_ext_times(remade, epoch, b.wd.base)
    return remade, offset


def _write_at(src: Path, raw: Path, offset: int) -> None:
    """``src`` into ``raw`` at ``offset``, over whatever was there (holes stay holes)."""
    size = src.stat().st_size
    cmd.run(["fallocate", "--punch-hole", "--offset", str(offset), "--length", str(size),
             raw])
    cmd.run(["dd", f"if={src}", f"of={raw}", "bs=4M", f"seek={offset}", "oflag=seek_bytes",
             "conv=notrunc,sparse", "status=none"])
    src.unlink()


def build_disk(b: BuildContext, tree: LayeredTree, config_text: str, tree_key: str, *,
               tree_outputs: Callable[[Path], None], beside: Beside) -> DiskResult:
    """Lay the tree onto the block device and run the disk and final phases there; call
    ``tree_outputs`` with the finished root filesystem (still mounted, nothing below it).
    The result's raw disk file is complete (unmounted, ESP written, detached). ``tree_key``
    seeds the filesystems' UUIDs unless DIB_UUID_SEED is set. ``beside``: a step still
    running beside joins once the tree is copied; steps with ``room-mib`` count with it, not
    with their layers (:mod:`dib.beside`)."""
    cfg, wd = b.cfg, b.wd
    root_label = b.env["DIB_ROOT_LABEL"]
    epoch = cfg.source_date_epoch
    remade: Optional[Tuple[Path, int]] = None
    with b.timings.measure("phase", "(size tree)"):
        with tree.view(wd.built, without=beside.room_layers) as sized:
            tree_bytes = _tree_bytes(sized) + beside.room_bytes
    with tree.view(wd.built) as view, contextlib.ExitStack() as disk:
        probe = blockdev.Params(image_dir=wd.image, mount_base=wd.mnt, image_size=None,
                                root_fs_type=cfg.fs_type, root_label=root_label,
                                root_mkfs_opts=cfg.root_mkfs_options,
                                block_size=cfg.block_size, uuid_seed=cfg.uuid_seed or tree_key)
        config = blockdev.load_config(config_text, probe)
        size = image_size(cfg, tree_bytes, config)
        params = blockdev.Params(**{**probe.__dict__, "image_size": size, "epoch": epoch})
        config = blockdev.load_config(config_text, params)
        # mkfs -d at creation (issue 16) is measured slower here than mount + cp -a (6.1 s
        # against 2.9 s for an 887 MiB tree, work dir on disk; on the tmpfs work dir, from
        # the cached layers of vm debian-minimal, 7.0-7.5 s against 6.2-7.0 s from the disk
        # sizing to its detach): kept off until it is faster; a reproducible build makes the
        # root again with mkfs -d anyway (_remake_root)
        populate = POPULATE_AT_CREATION and can_populate(config, view)
        if populate:
            params = blockdev.Params(**{**params.__dict__, "populate": view})
        log.info("disk: %d MiB for a %d MiB tree%s", size >> 20, tree_bytes >> 20,
                 ", the root filesystem made filled with it (mkfs -d)" if populate else "")
        with b.timings.measure("phase", "(block device)"):
            state = blockdev.BlockDevice(config, params).create(disk)
        if not populate:
            with b.timings.measure("phase", "(copy tree)"):
                _copy_tree(view, wd.mnt, tree_bytes, size)
        beside.join_onto(wd.mnt)
        (wd.mnt / "etc").mkdir(exist_ok=True)
        (wd.mnt / "etc" / "fstab").write_text(state.fstab())
        raw = state.image_files[config.loops[0].name]
        env: Dict[str, str] = {
            "DIB_ROOT_LABEL": state.root_label or root_label,
            "DIB_ROOT_FSTYPE": state.root_fstype or cfg.fs_type,
            **dibcompat.disk_created(wd.base, image_path=raw,
                                     image_block_device=state.image_block_device,
                                     image_block_devices=state.image_block_devices,
                                     image_size=size),
        }
        for phase in of_stage("disk"):
            if b.has_work(phase.name):
                b.run(phase.name, wd.mnt, env)
        b.run_final(wd.mnt, env)
        finish_tree(wd.mnt)
        if epoch is not None:
            with b.timings.measure("phase", "(clamp times)"):
                n = reproducible.clamp_mtimes(wd.mnt, epoch)
            log.info("SOURCE_DATE_EPOCH=%d: %d timestamps clamped", epoch, n)
        tree_outputs(wd.mnt)
        if epoch is not None:
            with b.timings.measure("phase", "(reproducible root)"):
                remade = _remake_root(b, config, state, params, epoch)
        journals = _journal_offsets(config, state)
    # the disk stack has unmounted, written the ESP and detached: the raw file is complete
    if remade is not None:
        _write_at(remade[0], raw, remade[1])
    with b.timings.measure("phase", "(journal)"):
        punched = sum(journal.punch_stale_journal(raw, offset) for offset in journals)
    if punched:
        log.info("disk: %d MiB of stale journal blocks punched out", punched >> 20)
    return DiskResult(raw, has_esp(config), env)


def _journal_offsets(config: "blockdev.Config", state: "blockdev.State") -> List[int]:
    """Where in the raw disk file each ext3/ext4 filesystem starts (for
    :func:`dib.blockdev.journal.punch_stale_journal`); none when the config has more than
    one disk file."""
    if len(config.loops) != 1:
        return []
    return [_extent(state.image_block_devices[spec.name])[0] for spec in config.ordered()
            if isinstance(spec, mkfs.MkfsSpec) and spec.type in ("ext3", "ext4")]
