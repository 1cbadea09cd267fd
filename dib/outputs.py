"""Writing outputs: archives of the tree, disk conversions, checksums.

Every output is written under a temporary name in the destination directory and renamed
into place only when complete, so the output path never holds a half-written file. An old
output is renamed aside with a timestamp unless ``OVERWRITE_OLD_IMAGE`` is set (as dib does).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

from dib import cmd

log = logging.getLogger("dib.outputs")

#: tar flags shared by every archive of a tree: deterministic member order, numeric owners,
#: xattrs and ACLs kept, no atime/ctime in the headers
TAR_FLAGS = ("--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--sort=name",
             "--format=posix", "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,"
             "delete=ctime", "--one-file-system")


@contextlib.contextmanager
def atomic_output(dest: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if dest.exists() and not overwrite:
        stamp = time.strftime("%Y.%m.%d-%H.%M.%S")
        aside = dest.with_name(f"{dest.stem}-{stamp}{dest.suffix}")
        os.replace(dest, aside)
        for ext in (".md5", ".sha256"):
            old = Path(f"{dest}{ext}")
            if old.exists():
                os.replace(old, Path(f"{aside}{ext}"))
        log.info("kept the previous %s as %s", dest.name, aside.name)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)


def write_tar(tree: Path, dest: Path, *, gzip: bool = False) -> None:
    """Archive ``tree`` (a mount with nothing mounted below it) into ``dest``."""
    argv: List[str] = ["tar", *TAR_FLAGS]
    if gzip:
        compressor = "pigz" if shutil.which("pigz", path=cmd.SAFE_PATH) else "gzip"
        argv.append(f"--use-compress-program={compressor}")
    argv += ["-C", os.fspath(tree), "-cf", os.fspath(dest), "."]
    cmd.run(argv)


def write_checksums(image: Path, algorithms: Sequence[str]) -> List[Path]:
    """``<image>.<alg>`` files naming the image by its base name (sha256sum -c works)."""
    if not algorithms:
        return []
    hashes = {alg: hashlib.new(alg) for alg in algorithms}
    with open(image, "rb") as f:
        for chunk in iter(lambda: f.read(4 << 20), b""):
            for h in hashes.values():
                h.update(chunk)
    written = []
    for alg, h in hashes.items():
        path = Path(f"{image}.{alg}")
        path.write_text(f"{h.hexdigest()}  {image.name}\n")
        written.append(path)
    return written


def file_summary(path: Path) -> Tuple[str, int]:
    return (path.name, path.stat().st_size)
