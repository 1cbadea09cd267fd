"""``--checksum``: ``<output>.md5`` / ``<output>.sha256`` beside every file output.

Not a family of its own formats: :meth:`dib.outputs.base.Run.add` calls :func:`write` for each
file output it records, so every format gets its checksum files the same way. Directory
outputs (an OCI layout) get none: their blobs are named by their sha256 already.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import List, Sequence


def write(image: Path, algorithms: Sequence[str]) -> List[Path]:
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


def recorded_sha256(path: Path) -> str:
    """The sha256 from the ``.sha256`` file beside ``path`` when there is one, else ''."""
    sums = Path(f"{path}.sha256")
    if sums.is_file():
        word = sums.read_text().split()
        if word and len(word[0]) == 64:
            return word[0]
    return ""
