"""``-t vhdx``: the disk as a dynamic VHDX (Hyper-V; Azure takes it converted to a fixed VHD).

``qemu-img convert -O vhdx -o subformat=dynamic``: the file grows with the data written, so
a mostly empty disk stays small. ``--qemu-img-options`` is not applied (its options are
qcow2's). Checked with ``qemu-img check`` / ``qemu-img info`` (format ``vhdx``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Sequence

from dib import cmd
from dib.config import ImageFormat
from dib.outputs.base import Family, Needs, Run
from dib.outputs.files import atomic_output

log = logging.getLogger("dib.outputs")


def convert_argv(raw: Path, dest: Path) -> List[str]:
    return ["qemu-img", "convert", "-f", "raw", "-O", "vhdx", "-o", "subformat=dynamic",
            os.fspath(raw), os.fspath(dest)]


def write(run: Run, raw: Path, formats: Sequence[ImageFormat]) -> None:
    dest = run.cfg.output_path(ImageFormat.VHDX)
    log.info("writing %s", dest)
    with run.timings.measure("output", "vhdx"), atomic_output(dest, run.cfg.overwrite) as tmp:
        cmd.run(convert_argv(raw, tmp))
    run.add(dest)


FAMILY = Family("vhdx", (ImageFormat.VHDX,), Needs.DISK, write)
