"""``partitioning``: the partition table spec and its layout, computed in pure Python.

The layout (start and size of every partition, in sectors) is computed here rather than left
to sfdisk/sgdisk defaults, for three reasons: a partition that does not fit is reported while
the config is loaded, before any long build step; the result is deterministic and testable
without a device; and MBR logical partitions, ``NN%`` of the *remaining* space and dib's
``align`` keep exactly dib's meaning. Writing the table is :mod:`dib.blockdev.parttable`.

Layout rules:

* partitions start on ``align`` boundaries (default 1 MiB, for MBR and GPT alike);
* an absolute size is rounded up to whole sectors; ``NN%`` takes that share of the space
  still free where the partition starts, rounded down to whole sectors, so ``100%`` fills
  the rest of the disk;
* GPT leaves room for the backup table at the end of the disk;
* MBR: partitions flagged ``primary`` are primary partitions (1-4), the others are logical
  partitions (5, 6, ...) in one extended partition that reaches to the end of the disk. Each
  logical partition's EBR takes one ``align`` step in front of it, as in dib. Primary
  partitions must come before logical ones, and at most 3 of them may precede logical ones.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, List, Mapping, Optional, Tuple

from dib.blockdev.node import Fields, derive_uuid, node_error
from dib.blockdev.params import Params
from dib.blockdev.size import MiB, Percent, Size, human, parse_abs_size, parse_size

FLAGS = ("boot", "primary")
#: MBR types that would make a partition look like an extended one.
_EXTENDED_TYPES = (0x05, 0x0F, 0x85)
_GPT_CODE = re.compile(r"^[0-9A-F]{4}$")
_GUID = re.compile(r"^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$")
GPT_ENTRIES_BYTES = 128 * 128
GPT_NAME_MAX = 36

FIT_HINT = ("make the image larger: raise --image-size (or DIB_IMAGE_EXTRA_SIZE), or the "
            "local_loop's 'size', or make the partitions smaller")


@dataclass(frozen=True)
class PartitionSpec:
    plugin: ClassVar[str] = "partition"

    name: str
    base: str
    """The name of the partitioning node this partition belongs to."""
    size: Size
    type: str
    """MBR: a hex byte as sfdisk wants it (``83``, ``ef``); GPT: an sgdisk code or a GUID."""
    flags: Tuple[str, ...] = ()
    uuid: Optional[str] = None
    """GPT only: the partition's unique GUID (derived from the seed)."""

    @property
    def bootable(self) -> bool:
        return "boot" in self.flags

    @property
    def primary(self) -> bool:
        return "primary" in self.flags


@dataclass(frozen=True)
class PartitioningSpec:
    plugin: ClassVar[str] = "partitioning"

    name: str
    base: str
    label: str
    """``mbr`` or ``gpt``."""
    align: int
    disk_id: str
    """``0x1234abcd`` for MBR, a GUID for GPT (derived from the seed)."""
    partitions: Tuple[PartitionSpec, ...]


def parse(name: str, body: Mapping[str, Any], params: Params) -> PartitioningSpec:
    fields = Fields("partitioning", name, body, ("label", "align", "partitions"))
    base = str(fields.required("base"))
    label = fields.text("label")
    if label is None:
        raise fields.error("missing required key 'label' for partitioning (mbr or gpt)",
                           "label")
    if label not in ("mbr", "gpt"):
        raise fields.error(f"'{label}' is not a partition table label; use mbr or gpt",
                           "label")
    align = fields.convert("align", parse_abs_size) if fields.has("align") else MiB
    raw_parts = fields.required("partitions")
    if not isinstance(raw_parts, list) or not raw_parts:
        raise fields.error("must be a non-empty list of partitions", "partitions")
    seed_id = derive_uuid(params.uuid_seed, "disk", name)
    disk_id = (f"0x{(seed_id.int & 0xFFFFFFFF) or 1:08x}" if label == "mbr"
               else str(seed_id).upper())
    parts = tuple(_parse_partition(name, base, label, raw, params) for raw in raw_parts)
    return PartitioningSpec(name, base, label, align, disk_id, parts)


def _parse_partition(table: str, disk: str, label: str, raw: Any,
                     params: Params) -> PartitionSpec:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise node_error(table, f"every partition needs a 'name': {raw!r}", "partitions")
    name = raw["name"]
    fields = Fields("partition", name, raw, ("size", "flags", "type"))
    if fields.has("base") and str(raw["base"]) not in (disk, table):
        raise fields.error(f"base '{raw['base']}' differs from its partitioning's "
                           f"base '{disk}'", "base")
    if label == "gpt" and len(name) > GPT_NAME_MAX:
        raise fields.error(f"a GPT partition name has at most {GPT_NAME_MAX} characters",
                           "name")
    size = fields.convert("size", parse_size) if fields.has("size") else None
    if size is None:
        raise fields.error("missing required key 'size' for partition", "size")
    flags = raw.get("flags") or []
    if not isinstance(flags, list) or any(f not in FLAGS for f in flags):
        raise fields.error(f"flags must be a list of {', '.join(FLAGS)}, not {flags!r}",
                           "flags")
    if label == "gpt" and "primary" in flags:
        raise fields.error("the 'primary' flag is for MBR only", "flags")
    ptype = _mbr_type(fields) if label == "mbr" else _gpt_type(fields)
    uuid = str(derive_uuid(params.uuid_seed, "part", name)).upper() if label == "gpt" else None
    return PartitionSpec(name, table, size, ptype, tuple(sorted(set(flags))), uuid)


def _mbr_type(fields: Fields) -> str:
    raw = fields.body.get("type", 0x83)
    try:
        value = raw if isinstance(raw, int) and not isinstance(raw, bool) else int(str(raw), 16)
    except ValueError:
        value = -1
    if not 0 < value <= 0xFF or value in _EXTENDED_TYPES:
        raise fields.error(f"{raw!r} is not an MBR partition type (a hex byte such as "
                           "'0x83', '0xef'; not an extended type)", "type")
    return f"{value:x}"


def _gpt_type(fields: Fields) -> str:
    raw = fields.body.get("type", "8300")
    text = f"{raw:04d}" if isinstance(raw, int) and not isinstance(raw, bool) else str(raw)
    text = text.upper()
    if text.startswith("0X"):
        text = text[2:]
    if not (_GPT_CODE.match(text) or _GUID.match(text)):
        raise fields.error(f"{raw!r} is not a GPT partition type (an sgdisk code such as "
                           "8300, EF00, EF02, or a type GUID)", "type")
    return text


# -- layout ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Slot:
    """One partition as placed on the disk; ``start`` and ``size`` are in sectors."""

    spec: PartitionSpec
    number: int
    start: int
    size: int
    logical: bool = False


@dataclass(frozen=True)
class Layout:
    label: str
    sector_size: int
    disk_sectors: int
    disk_id: str
    slots: Tuple[Slot, ...]
    extended: Optional[Tuple[int, int, int]] = None
    """MBR only: (number, start, size) of the extended partition holding the logical ones."""


def _up(value: int, step: int) -> int:
    return -(-value // step) * step


def plan(spec: PartitioningSpec, disk_bytes: int, sector_size: int,
         disk_name: str = "") -> Layout:
    """Place every partition of ``spec`` on a disk of ``disk_bytes``. Raises ConfigError."""
    ss, align = sector_size, spec.align
    if align % ss:
        raise node_error(spec.name, f"{align} is not a multiple of the sector size {ss}",
                         "align")
    total = disk_bytes // ss * ss
    if spec.label == "gpt":
        first, end = 2 * ss + GPT_ENTRIES_BYTES, total - GPT_ENTRIES_BYTES - ss
    else:
        first, end = ss, total
    cursor = _up(first, align)
    slots: List[Slot] = []
    extended_start: Optional[int] = None
    primaries = 0
    for number_gpt, part in enumerate(spec.partitions, start=1):
        logical = spec.label == "mbr" and not part.primary
        if spec.label == "mbr" and part.primary:
            if extended_start is not None:
                raise node_error(part.name, "primary partitions must come before the "
                                 "logical ones (partitions without the 'primary' flag)",
                                 "flags")
            primaries += 1
        if logical:
            if extended_start is None:
                extended_start = cursor
            cursor = _up(cursor + ss, align)
        start = cursor
        free = max(end - start, 0)
        if isinstance(part.size, Percent):
            size = part.size.of(free) // ss * ss
        else:
            size = _up(part.size, ss)
        if size <= 0 or start + size > end:
            want = str(part.size) if isinstance(part.size, Percent) else human(size)
            where = f" on '{disk_name}'" if disk_name else ""
            raise node_error(part.name, f"partition does not fit: it needs {want} but only "
                             f"{human(free)} of the {human(disk_bytes)} disk{where} is left",
                             "size", hint=FIT_HINT)
        if spec.label == "mbr" and (start + size) // ss > 2 ** 32:
            raise node_error(part.name, "an MBR partition cannot end beyond 2 TiB (at 512 "
                             "byte sectors); use label: gpt", "size")
        if logical:
            number = 5 + sum(1 for s in slots if s.logical)
        else:
            number = number_gpt if spec.label == "gpt" else primaries
        slots.append(Slot(part, number, start // ss, size // ss, logical))
        cursor = _up(start + size, align)
    if primaries + (1 if extended_start is not None else 0) > 4:
        raise node_error(spec.name, "an MBR holds at most 4 primary partitions (3 when "
                         "there are logical ones)", "partitions")
    extended = None
    if extended_start is not None:
        extended = (primaries + 1, extended_start // ss, (end - extended_start) // ss)
    return Layout(spec.label, ss, total // ss, spec.disk_id, tuple(slots), extended)


def partition_node(device: str, number: int) -> str:
    """``/dev/loop3`` + 2 → ``/dev/loop3p2`` (``/dev/sda`` + 2 → ``/dev/sda2``)."""
    return f"{device}{'p' if device[-1:].isdigit() else ''}{number}"
