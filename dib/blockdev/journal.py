"""The stale blocks of a clean ext3/ext4 journal, punched out of a finished disk file.

Copying the tree into the mounted root filesystem cycles its journal: when the filesystem is
unmounted, the journal is empty (its superblock's start is 0: nothing to replay), but its
blocks still hold the metadata written during the copy. Nothing ever reads them again, yet
they are data to ``qemu-img`` and cost the qcow2 a few MiB of compressed noise. Once the
disk is detached, :func:`punch_stale_journal` turns every journal block but the first (the
journal superblock, which stays as it is) into a hole of the raw file: the filesystem is
unchanged for every reader, ``e2fsck`` included, and the blocks read as zeros.

The e2fsprogs tools open a filesystem at a byte offset in a disk file as
``FILE?offset=N``, so nothing needs to be attached.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from dib import cmd
from dib.errors import CommandFailed

log = logging.getLogger("dib.blockdev.journal")

#: one logical-to-physical extent of ``debugfs -R "stat <8>"``: ``(0-8191):131072-139263``
#: (a one-block extent has no ranges: ``(0):1234``; index blocks, ``(ETB0):...``, never match)
_EXTENT = re.compile(r"\((\d+)(?:-(\d+))?\):(\d+)(?:-(\d+))?")


def journal_extents(stat_text: str) -> List[Tuple[int, int, int]]:
    """(first logical block, first physical block, block count) of every extent in the
    journal inode's ``debugfs stat`` output, in logical order."""
    text = stat_text.split("EXTENTS:", 1)[1] if "EXTENTS:" in stat_text else ""
    out = []
    for m in _EXTENT.finditer(text):
        lstart = int(m.group(1))
        lend = int(m.group(2) or lstart)
        pstart = int(m.group(3))
        out.append((lstart, pstart, lend - lstart + 1))
    return sorted(out)


def superblock_fields(dumpe2fs_text: str) -> Dict[str, str]:
    """``dumpe2fs -h``'s ``Name:  value`` lines as a dict."""
    fields: Dict[str, str] = {}
    for line in dumpe2fs_text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip()] = value.strip()
    return fields


def stale_ranges(fields: Mapping[str, str], extents: List[Tuple[int, int, int]]
                 ) -> Optional[List[Tuple[int, int]]]:
    """(byte offset in the filesystem, length) of every journal block but the journal
    superblock, or None when the journal is not known to be empty (an internal journal in
    inode 8, no recovery needed, start 0) or its block size is unknown."""
    features = fields.get("Filesystem features", "").split()
    if ("has_journal" not in features or "needs_recovery" in features
            or fields.get("Journal inode") != "8" or fields.get("Journal start") != "0"):
        return None
    try:
        block = int(fields["Block size"])
    except (KeyError, ValueError):
        return None
    ranges = []
    for lstart, pstart, count in extents:
        if lstart == 0:  # the journal superblock stays
            pstart, count = pstart + 1, count - 1
        if count > 0:
            ranges.append((pstart * block, count * block))
    return ranges


def punch_stale_journal(image: Path, offset: int) -> int:
    """Punch the stale journal blocks of the ext3/ext4 filesystem at byte ``offset`` of
    ``image`` (see the module's docstring); the bytes punched (0 when the journal is not
    known to be empty or cannot be read, which is logged)."""
    source = f"{image}?offset={offset}"
    try:
        fields = superblock_fields(cmd.output(["dumpe2fs", "-h", source]))
        extents = journal_extents(cmd.output(["debugfs", "-c", "-R", "stat <8>", source]))
    except CommandFailed as exc:  # only a few MiB of qcow2 are at stake: say so and go on
        log.warning("journal of the filesystem at %d of %s not read, left as it is: %s",
                    offset, image.name, exc)
        return 0
    ranges = stale_ranges(fields, extents)
    if ranges is None:
        log.info("journal of the filesystem at %d of %s left as it is (not known to be "
                 "empty)", offset, image.name)
        return 0
    for start, length in ranges:
        cmd.run(["fallocate", "--punch-hole", "--keep-size", "--offset", str(offset + start),
                 "--length", str(length), image])
    return sum(length for _, length in ranges)
