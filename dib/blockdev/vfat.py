"""Filling a vfat filesystem from a directory with mtools, without mounting it.

Some kernels dib runs on cannot mount vfat at all, yet UEFI images need a FAT ESP. So a vfat
filesystem is never mounted: its mount point is a staging directory (see
:mod:`dib.blockdev.mount`), and when the mount is released the staging tree is written into
the filesystem here, through its block device, with ``mmd`` and ``mcopy``, then checked
with ``fsck.vfat -n``.

The copy walks the tree in sorted order (one ``mmd`` per directory level, one ``mcopy`` per
batch of files) so the FAT directory order does not depend on the host's readdir order.
FAT cannot store symlinks, device nodes or two names differing only in case; such entries
are refused with a clear error instead of being mangled.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from dib import cmd
from dib.errors import BlockDeviceError

log = logging.getLogger("dib.blockdev.vfat")

_BATCH = 100


def _env(epoch: Optional[int] = None) -> Dict[str, str]:
    # No user/system mtools.conf, and no complaints about odd geometry of partitions; a
    # reproducible build's epoch for the directories mtools creates.
    extra = {"MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null"}
    if epoch is not None:
        extra["SOURCE_DATE_EPOCH"] = str(epoch)
    return cmd.base_env(extra)


def _check_names(directory: str, names: Sequence[str]) -> None:
    seen: Dict[str, str] = {}
    for name in names:
        path = os.path.join(directory, name)
        mode = os.lstat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise BlockDeviceError(f"cannot store {path} in a vfat filesystem: only regular "
                                   "files and directories fit (no symlinks or devices)")
        folded = name.casefold()
        if folded in seen:
            raise BlockDeviceError(f"cannot store both '{seen[folded]}' and '{name}' from "
                                   f"{directory} in a vfat filesystem: names differ only "
                                   "in case")
        seen[folded] = name


def _chunks(items: List[str]) -> List[List[str]]:
    return [items[i:i + _BATCH] for i in range(0, len(items), _BATCH)]


def copy_tree(source: Path, device: str, *, epoch: Optional[int] = None) -> int:
    """Copy the contents of ``source`` into the vfat filesystem on ``device``; returns files.
    Files keep their mtimes (``mcopy -m``); directories get ``epoch`` when given."""
    env = _env(epoch)
    copied = 0
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        filenames.sort()
        _check_names(dirpath, dirnames + filenames)
        rel = Path(dirpath).relative_to(source).as_posix()
        prefix = "::" if rel == "." else f"::/{rel}"
        for chunk in _chunks([f"{prefix}/{d}" for d in dirnames]):
            cmd.run(["mmd", "-i", device, *chunk], env=env)
        for chunk in _chunks([os.path.join(dirpath, f) for f in filenames]):
            cmd.run(["mcopy", "-i", device, "-m", *chunk, f"{prefix}/"], env=env)
            copied += len(chunk)
    cmd.run(["sync", device])
    log.info("copied %d file(s) from %s into the vfat filesystem on %s", copied, source, device)
    return copied


def check(device: str) -> None:
    cmd.run(["fsck.vfat", "-n", device],
            hint="the vfat filesystem is damaged or full; see the fsck output above")
