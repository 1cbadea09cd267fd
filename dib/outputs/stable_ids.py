"""Reproducible VMDK, VHD, VDI and VHDX files: the ids and times qemu-img randomises, made stable.

``qemu-img convert`` writes the same data the same way every time, but these containers also
get a random id or a creation time, and qemu-img has no option to set them. With
``SOURCE_DATE_EPOCH`` set, :func:`stabilize` rewrites them in the finished file:

* every random id becomes one derived from a sha256 of the raw disk and the format (same
  content, same ids; other content, other ids, so two different disks never share an id).
  Ids are mapped by value: two fields that held the same id still hold the same one;
* every creation time becomes the epoch;
* every checksum over a changed structure is computed again.

Per format (what an empirical ``cmp`` of two conversions of one raw file showed to differ):

* **vmdk** (monolithicSparse and streamOptimized): the embedded descriptor's ``CID=`` (random,
  and written without zero padding, so its length varies and moves the rest of the text)
  and the extent's file name, which is the temporary file qemu-img wrote to. The descriptor
  is written again with an 8-digit CID and the final file name, padded with NULs to its
  fixed size; it has no checksum.
* **vhd** (``vpc``): the footer's time stamp (seconds since 2000-01-01) and UUID, and its
  checksum; the footer is at the end and, for a dynamic disk, copied at offset 0.
* **vdi**: the header's image and last-snapshot UUIDs (no checksum).
* **vhdx**: both headers' FileWriteGuid, DataWriteGuid, LogGuid and sequence numbers (each
  with a CRC-32C), the log entries' LogGuid (each entry's CRC-32C over its whole length),
  and the Page 83 virtual disk id in the metadata region (no checksum).
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import struct
import uuid
from pathlib import Path
from typing import BinaryIO, Dict, List, Optional

from dib.errors import DibError

log = logging.getLogger("dib.outputs")

#: seconds from 1970-01-01 to 2000-01-01, the VHD time stamp's origin
VHD_EPOCH = 946684800
ZERO_ID = bytes(16)

VHDX_HEADERS = (64 * 1024, 128 * 1024)
VHDX_HEADER_SIZE = 4096
VHDX_REGION_TABLE = 192 * 1024
VHDX_METADATA_REGION = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
VHDX_PAGE83 = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746").bytes_le


def _crc32c_table() -> List[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = tuple(_crc32c_table())


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of VHDX structures."""
    crc = 0xFFFFFFFF
    table = _CRC32C
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def raw_digest(raw: Path) -> bytes:
    """A sha256 of the raw disk's bytes, which seeds (with the format) a file's ids.

    A disk is mostly zeros: each MiB of zeros is hashed as a marker, not byte by byte, and a
    MiB inside a hole of the sparse file is not even read. A hole and written zeros hash
    alike: only the bytes count, not how the file is allocated."""
    mib = 1 << 20
    zeros = bytes(mib)
    h = hashlib.sha256()
    with open(raw, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                data = os.lseek(f.fileno(), offset, os.SEEK_DATA)
            except OSError as exc:
                # ENXIO: only a hole from here on; anything else: no hole map, read it all
                data = size if exc.errno == errno.ENXIO else offset
            holes = (min(data, size) - offset) // mib
            if holes:
                h.update(struct.pack("<BI", 0, mib) * holes)
                offset += holes * mib
                continue
            f.seek(offset)
            block = f.read(min(mib, size - offset))
            if not block:
                raise DibError(f"{raw}: shorter than its size while reading")
            zero = block == zeros[:len(block)]
            h.update(struct.pack("<BI", 0 if zero else 1, len(block)))
            if not zero:
                h.update(block)
            offset += len(block)
    return h.digest()


class Ids:
    """Derived ids, one per distinct random id met (the all-zero id stays zero)."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.seen: Dict[bytes, bytes] = {}

    def derive(self, role: str) -> bytes:
        digest = hashlib.sha256(self.seed + b"\0" + role.encode()).digest()
        return uuid.UUID(bytes=digest[:16], version=4).bytes

    def map(self, old: bytes) -> bytes:
        if old == ZERO_ID:
            return old
        if old not in self.seen:
            self.seen[old] = self.derive(f"id{len(self.seen)}")
        return self.seen[old]


def _read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise DibError(f"{getattr(f, 'name', 'image')}: ends before offset {offset + size}")
    return data


def _write_at(f: BinaryIO, offset: int, data: bytes) -> None:
    f.seek(offset)
    f.write(data)


# -- vmdk --------------------------------------------------------------------------------------

def stabilize_vmdk(f: BinaryIO, ids: Ids, extent_name: Optional[str]) -> None:
    header = _read_at(f, 0, 512)
    if header[:4] != b"KDMV":
        # a descriptor file (monolithicFlat, twoGbMaxExtent*, from --qemu-img-options
        # subformat=...): its extents are other files; left as qemu-img wrote it
        log.warning("vmdk: only a single-file sparse VMDK (monolithicSparse, "
                    "streamOptimized) gets stable ids; this one keeps qemu-img's random CID")
        return
    desc_offset, desc_size = struct.unpack_from("<QQ", header, 28)
    if not desc_offset or not desc_size:
        raise DibError("the VMDK has no embedded descriptor: cannot make its CID stable")
    size = desc_size * 512
    text = _read_at(f, desc_offset * 512, size).split(b"\0", 1)[0].decode("ascii")
    cid = ids.derive("vmdk-cid")[:4].hex()
    text = re.sub(r"^CID=[0-9a-fA-F]+$", f"CID={cid}", text, count=1, flags=re.M)
    if extent_name is not None:
        if '"' in extent_name:
            raise DibError(f"VMDK extent name {extent_name!r} has a double quote")
        text = re.sub(r'^((?:RW|RDONLY|NOACCESS) \d+ SPARSE) "[^"]*"',
                      lambda m: f'{m.group(1)} "{extent_name}"', text, flags=re.M)
    data = text.encode("ascii")
    if len(data) > size:
        raise DibError(f"the VMDK descriptor does not fit its {size} bytes after the rewrite")
    _write_at(f, desc_offset * 512, data.ljust(size, b"\0"))


# -- vhd ---------------------------------------------------------------------------------------

def vhd_checksum(footer: bytes) -> int:
    """One's complement of the byte sum, the checksum field (64..67) counted as zero."""
    return ~sum(footer[:64] + footer[68:]) & 0xFFFFFFFF


def stabilize_vhd(f: BinaryIO, ids: Ids, epoch: int) -> None:
    end = f.seek(0, os.SEEK_END)
    footer = bytearray(_read_at(f, end - 512, 512))
    if footer[:8] != b"conectix":
        raise DibError("not a VHD (no conectix footer): cannot make its ids stable")
    struct.pack_into(">I", footer, 24, max(0, epoch - VHD_EPOCH))
    footer[68:84] = ids.map(bytes(footer[68:84]))
    struct.pack_into(">I", footer, 64, vhd_checksum(bytes(footer)))
    _write_at(f, end - 512, bytes(footer))
    disk_type = struct.unpack_from(">I", footer, 60)[0]
    if disk_type != 2 and _read_at(f, 0, 8) == b"conectix":  # dynamic / differencing: a copy
        _write_at(f, 0, bytes(footer))


# -- vdi ---------------------------------------------------------------------------------------

VDI_SIGNATURE = 0xBEDA107F
VDI_UUIDS = (392, 408, 424, 440)  # image, last snapshot, link, parent


def stabilize_vdi(f: BinaryIO, ids: Ids) -> None:
    header = bytearray(_read_at(f, 0, 456))
    if struct.unpack_from("<I", header, 64)[0] != VDI_SIGNATURE:
        raise DibError("not a VDI (bad signature): cannot make its ids stable")
    for off in VDI_UUIDS:
        header[off:off + 16] = ids.map(bytes(header[off:off + 16]))
    _write_at(f, 0, bytes(header))


# -- vhdx --------------------------------------------------------------------------------------

def _vhdx_log(f: BinaryIO, ids: Ids, log_offset: int, log_length: int) -> None:
    pos = 0
    while pos + 4096 <= log_length:
        head = _read_at(f, log_offset + pos, 64)
        if head[:4] != b"loge":
            pos += 4096
            continue
        length = struct.unpack_from("<I", head, 8)[0]
        if length < 4096 or length % 4096 or pos + length > log_length:
            pos += 4096
            continue
        entry = bytearray(_read_at(f, log_offset + pos, length))
        entry[32:48] = ids.map(bytes(entry[32:48]))
        entry[4:8] = bytes(4)
        struct.pack_into("<I", entry, 4, crc32c(bytes(entry)))
        _write_at(f, log_offset + pos, bytes(entry))
        pos += length


def _vhdx_page83(f: BinaryIO, ids: Ids) -> None:
    table = _read_at(f, VHDX_REGION_TABLE, 64 * 1024)
    if table[:4] != b"regi":
        raise DibError("VHDX region table not found: cannot make its disk id stable")
    count = struct.unpack_from("<I", table, 8)[0]
    for i in range(min(count, 2047)):
        entry = table[16 + 32 * i:48 + 32 * i]
        if entry[:16] != VHDX_METADATA_REGION:
            continue
        region = struct.unpack_from("<Q", entry, 16)[0]
        meta = _read_at(f, region, 64 * 1024)
        if meta[:8] != b"metadata":
            raise DibError("VHDX metadata table not found: cannot make its disk id stable")
        for j in range(struct.unpack_from("<H", meta, 10)[0]):
            item = meta[32 + 32 * j:64 + 32 * j]
            if item[:16] == VHDX_PAGE83:
                off = region + struct.unpack_from("<I", item, 16)[0]
                _write_at(f, off, ids.map(_read_at(f, off, 16)))


def stabilize_vhdx(f: BinaryIO, ids: Ids) -> None:
    if _read_at(f, 0, 8) != b"vhdxfile":
        raise DibError("not a VHDX (no vhdxfile identifier): cannot make its ids stable")
    headers = [bytearray(_read_at(f, off, VHDX_HEADER_SIZE)) for off in VHDX_HEADERS]
    valid = [h for h in headers if h[:4] == b"head"]
    if not valid:
        raise DibError("VHDX has no valid header: cannot make its ids stable")
    base = min(struct.unpack_from("<Q", h, 8)[0] for h in valid) - 1
    logs = set()
    for off, h in zip(VHDX_HEADERS, headers):
        if h[:4] != b"head":
            continue
        struct.pack_into("<Q", h, 8, struct.unpack_from("<Q", h, 8)[0] - base)
        for field in (16, 32, 48):  # FileWriteGuid, DataWriteGuid, LogGuid
            h[field:field + 16] = ids.map(bytes(h[field:field + 16]))
        logs.add((struct.unpack_from("<Q", h, 72)[0], struct.unpack_from("<I", h, 68)[0]))
        h[4:8] = bytes(4)
        struct.pack_into("<I", h, 4, crc32c(bytes(h)))
        _write_at(f, off, bytes(h))
    for log_offset, log_length in sorted(logs):
        _vhdx_log(f, ids, log_offset, log_length)
    _vhdx_page83(f, ids)


# -- the entry point ---------------------------------------------------------------------------

#: the dib formats :func:`stabilize` knows (dib's name: vhd, not qemu-img's vpc)
FORMATS = ("vmdk", "vhd", "vdi", "vhdx")


def stabilize(path: Path, fmt: str, raw: Path, epoch: int,
              extent_name: Optional[str] = None, digest: Optional[bytes] = None) -> None:
    """Make the ids and times in ``path`` (a ``fmt`` file converted from ``raw``) depend only
    on ``raw``'s content, ``fmt`` and ``epoch``. ``extent_name``: for vmdk, the file name the
    descriptor's extent line should carry (the final name, not the temporary one).
    ``digest``: ``raw_digest(raw)``, when the caller has it already (several formats)."""
    if fmt not in FORMATS:
        raise DibError(f"no stable ids for format {fmt}")
    if digest is None:
        digest = raw_digest(raw)
    ids = Ids(hashlib.sha256(digest + b"\0" + fmt.encode()).digest())
    with open(path, "r+b") as f:
        if fmt == "vmdk":
            stabilize_vmdk(f, ids, extent_name)
        elif fmt == "vhd":
            stabilize_vhd(f, ids, epoch)
        elif fmt == "vdi":
            stabilize_vdi(f, ids)
        else:
            stabilize_vhdx(f, ids)
