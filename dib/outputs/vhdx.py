"""``-t vhdx``: the disk as a dynamic VHDX (Hyper-V; Azure takes it converted to a fixed VHD).

``qemu-img convert -O vhdx -o subformat=dynamic``: the file grows with the data written, so
a mostly empty disk stays small. ``--qemu-img-options`` is not applied (its options are
qcow2's). Checked with ``qemu-img check`` / ``qemu-img info`` (format ``vhdx``). With
SOURCE_DATE_EPOCH, the GUIDs qemu-img randomises are made stable (:mod:`dib.outputs.stable_ids`).
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
from dib.outputs.stable_ids import stabilize

log = logging.getLogger("dib.outputs")


def convert_argv(raw: Path, dest: Path) -> List[str]:
    return ["qemu-img", "convert", "-f", "raw", "-O", "vhdx", "-o", "subformat=dynamic",
            os.fspath(raw), os.fspath(dest)]


def write(run: Run, raw: Path, formats: Sequence[ImageFormat]) -> None:
    dest = run.cfg.output_path(ImageFormat.VHDX)
    log.info("writing %s", dest)
    with run.timings.measure("output", "vhdx"), atomic_output(dest, run.cfg.overwrite) as tmp:
        cmd.run(convert_argv(raw, tmp))
        if run.cfg.source_date_epoch is not None:
            stabilize(tmp, "vhdx", raw, run.cfg.source_date_epoch)
    run.add(dest)


FAMILY = Family("vhdx", (ImageFormat.VHDX,), Needs.DISK, write)
