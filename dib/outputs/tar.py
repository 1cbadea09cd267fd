"""``-t tar`` and ``-t tgz``: an archive of the final tree."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import List, Optional, Sequence

from dib import cmd
from dib.config import ImageFormat
from dib.outputs.base import Family, Needs, Run
from dib.outputs.files import atomic_output

log = logging.getLogger("dib.outputs")

#: tar flags shared by every archive of a tree: deterministic member order, numeric owners,
#: xattrs and ACLs kept, no atime/ctime in the headers
TAR_FLAGS = ("--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--sort=name",
             "--format=posix", "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,"
             "delete=ctime")


def tar_argv(tree: Path, dest: Path, *, gzip: bool = False, epoch: Optional[int] = None,
             compressor: str = "gzip") -> List[str]:
    """The tar command archiving ``tree`` into ``dest``. With ``epoch`` (a reproducible
    build) no member's mtime is later than it and gzip writes no name or time stamp."""
    argv: List[str] = ["tar", *TAR_FLAGS]
    if epoch is not None:
        argv += [f"--mtime=@{epoch}", "--clamp-mtime"]
    if gzip:
        argv.append(f"--use-compress-program={compressor}"
                    + (" -n" if epoch is not None else ""))
    argv += ["-C", os.fspath(tree), "-cf", os.fspath(dest), "."]
    return argv


def write_tar(tree: Path, dest: Path, *, gzip: bool = False,
              epoch: Optional[int] = None) -> None:
    """Archive ``tree`` (a mount with nothing mounted below it) into ``dest``."""
    compressor = "pigz" if gzip and shutil.which("pigz", path=cmd.SAFE_PATH) else "gzip"
    cmd.run(tar_argv(tree, dest, gzip=gzip, epoch=epoch, compressor=compressor))


def write(run: Run, tree: Path, formats: Sequence[ImageFormat]) -> None:
    for fmt in formats:
        dest = run.cfg.output_path(fmt)
        log.info("writing %s", dest)
        with run.timings.measure("output", fmt.value), \
                atomic_output(dest, run.cfg.overwrite) as tmp:
            write_tar(tree, tmp, gzip=fmt is ImageFormat.TGZ, epoch=run.cfg.source_date_epoch)
        run.add(dest)


FAMILY = Family("tar", (ImageFormat.TAR, ImageFormat.TGZ), Needs.TREE, write)
