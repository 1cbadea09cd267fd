"""Writing one output file safely.

Every output is written under a temporary name in the destination directory and renamed
into place only when complete, so the output path never holds a half-written file. An old
output is renamed aside with a timestamp unless ``OVERWRITE_OLD_IMAGE`` is set (as dib does).
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

log = logging.getLogger("dib.outputs")


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
                _move_checksum(old, Path(f"{aside}{ext}"), dest.name, aside.name)
        log.info("kept the previous %s as %s", dest.name, aside.name)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)


def _move_checksum(old: Path, new: Path, name: str, new_name: str) -> None:
    """Move a checksum file aside with its image, renaming the image inside it too (so
    ``sha256sum -c`` still checks the kept image, not the new one)."""
    lines = []
    for line in old.read_text().splitlines():
        digest, sep, named = line.partition("  ")
        if sep and os.path.basename(named) == name:
            named = os.path.join(os.path.dirname(named), new_name)
        lines.append(f"{digest}{sep}{named}")
    new.write_text("".join(f"{line}\n" for line in lines))
    old.unlink()
