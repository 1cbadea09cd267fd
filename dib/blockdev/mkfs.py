"""``mkfs``: a filesystem (or swap area) on a loop device or partition.

Labels default to the node name (upper-cased for vfat, as dib does, because firmware and
fstab look FAT labels up in upper case) and must fit the filesystem's limit and be unique,
since fstab and the bootloader find filesystems by ``LABEL=``.

Where dib generates a random UUID, we derive one from the node name and the caller's seed
(:func:`~dib.blockdev.node.derive_uuid`), so two builds of the same config are identical.
vfat has a 32-bit volume id rather than a UUID; it is written and shown as ``XXXX-XXXX``.

For the node named ``mkfs_root``, an unset ``type``, ``opts`` or ``label`` comes from the
build parameters (``FS_TYPE``, ``MKFS_OPTS``, ``ROOT_LABEL`` in dib).

Creating a filesystem needs no undo: it lives on a device whose own undo is registered.
"""
from __future__ import annotations

import logging
import re
import shlex
import uuid as uuidlib
from dataclasses import dataclass, replace
from typing import Any, ClassVar, List, Mapping, Optional, Sequence, Tuple

from dib import cmd
from dib.blockdev.node import Fields, derive_uuid
from dib.blockdev.params import LABEL_LIMITS, Params

log = logging.getLogger("dib.blockdev.mkfs")

ROOT_NODE = "mkfs_root"
_VOLID = re.compile(r"^([0-9A-F]{4})-?([0-9A-F]{4})$")


@dataclass(frozen=True)
class MkfsSpec:
    plugin: ClassVar[str] = "mkfs"

    name: str
    base: str
    type: str
    label: str
    uuid: str
    """A UUID, or ``XXXX-XXXX`` for vfat."""
    opts: Tuple[str, ...] = ()


def parse(name: str, body: Mapping[str, Any], params: Params) -> MkfsSpec:
    fields = Fields("mkfs", name, body, ("type", "label", "opts", "uuid"))
    base = str(fields.required("base"))
    is_root = name == ROOT_NODE
    fstype = fields.text("type", params.root_fs_type if is_root else None)
    if fstype is None:
        raise fields.error("missing required key 'type' for mkfs", "type")
    if fstype not in LABEL_LIMITS:
        raise fields.error(f"filesystem type '{fstype}' is not supported",
                           "type", hint="use one of " + ", ".join(LABEL_LIMITS))
    label = fields.text("label", params.effective_root_label if is_root else name) or name
    if fstype == "vfat":
        label = label.upper()
    if len(label) > LABEL_LIMITS[fstype]:
        raise fields.error(f"label '{label}' is too long for {fstype}: {len(label)} > "
                           f"{LABEL_LIMITS[fstype]} characters", "label")
    opts_text = fields.text("opts", params.root_mkfs_opts if is_root else "") or ""
    try:
        opts = tuple(shlex.split(opts_text))
    except ValueError as exc:
        raise fields.error(f"cannot split {opts_text!r}: {exc}", "opts") from None
    given = fields.text("uuid")
    derived = derive_uuid(params.uuid_seed, "fs", name)
    if fstype == "vfat":
        volid = given.upper() if given else derived.hex[:8].upper()
        match = _VOLID.match(volid)
        if not match:
            raise fields.error(f"'{given}' is not a vfat volume id (XXXX-XXXX)", "uuid")
        fsuuid = f"{match.group(1)}-{match.group(2)}"
    elif given:
        try:
            fsuuid = str(uuidlib.UUID(given))
        except ValueError:
            raise fields.error(f"'{given}' is not a UUID", "uuid") from None
    else:
        fsuuid = str(derived)
    return MkfsSpec(name, base, fstype, label, fsuuid, opts)


#: the filesystems ``mkfs -d`` can fill from a directory
EXT_TYPES = ("ext2", "ext3", "ext4")


def with_extended(opts: Sequence[str], extra: Sequence[str]) -> List[str]:
    """``opts`` with ``extra`` (``key=value``) added to its ``-E`` option (mke2fs takes only
    the last ``-E``), or a new ``-E`` when it has none."""
    out = list(opts)
    for i, opt in enumerate(out):
        if opt == "-E" and i + 1 < len(out):
            out[i + 1] = ",".join([out[i + 1], *extra])
            return out
        if opt.startswith("-E") and len(opt) > 2:
            out[i] = ",".join([opt, *extra])
            return out
    return [*out, "-E", ",".join(extra)]


def reproducible_opts(spec: MkfsSpec, hash_seed: str) -> Tuple[str, ...]:
    """What an ext filesystem of a reproducible build adds to its options: the directory
    hash seed derived like its UUID (mke2fs would pick a random one), inode tables and
    journal written out now (so no lazy initialisation changes them at the first mount)."""
    if spec.type not in EXT_TYPES:
        return spec.opts
    return tuple(with_extended(spec.opts, [f"hash_seed={hash_seed}", "lazy_itable_init=0",
                                           "lazy_journal_init=0"]))


def mkfs_argv(spec: MkfsSpec, device: str, populate: Optional[str] = None) -> List[str]:
    """The command creating ``spec`` on ``device``; ext2/3/4 filled from the directory
    ``populate`` when given."""
    if populate is not None:
        if spec.type not in EXT_TYPES:
            raise ValueError(f"mkfs -d fills only {', '.join(EXT_TYPES)}, not {spec.type}")
        return [f"mkfs.{spec.type}", "-q", "-L", spec.label, "-U", spec.uuid, *spec.opts,
                "-d", populate, device]
    if spec.type == "swap":
        return ["mkswap", "-L", spec.label, "-U", spec.uuid, *spec.opts, device]
    if spec.type == "vfat":
        return ["mkfs.vfat", "-n", spec.label, "-i", spec.uuid.replace("-", ""),
                *spec.opts, device]
    if spec.type == "xfs":
        return ["mkfs.xfs", "-q", "-L", spec.label, "-m", f"uuid={spec.uuid}",
                *spec.opts, device]
    return [f"mkfs.{spec.type}", "-q", "-L", spec.label, "-U", spec.uuid, *spec.opts, device]


def make(spec: MkfsSpec, device: str, hint: Optional[str] = None, *,
         populate: Optional[str] = None, epoch: Optional[int] = None,
         hash_seed: str = "") -> None:
    """Create ``spec`` on ``device`` (filled from ``populate``, see :func:`mkfs_argv`);
    with ``epoch`` (a reproducible build) every time the filesystem records is ``epoch``
    and ext gets :func:`reproducible_opts`."""
    env = None
    if epoch is not None:
        spec = replace(spec, opts=reproducible_opts(spec, hash_seed or spec.uuid))
        env = cmd.base_env({"E2FSPROGS_FAKE_TIME": str(epoch),
                            "SOURCE_DATE_EPOCH": str(epoch)})
    log.info("creating %s filesystem '%s' on %s%s", spec.type, spec.label, device,
             f", filled from {populate}" if populate else "")
    if populate is not None and hint is None:
        hint = ("if the tree does not fit, give more room with DIB_IMAGE_EXTRA_SIZE=<MiB> or "
                f"--image-size <GiB>; else check the 'opts' of block-device node '{spec.name}'")
    cmd.run(mkfs_argv(spec, device, populate), env=env,
            hint=hint or f"check the 'opts' of block-device node '{spec.name}'")
