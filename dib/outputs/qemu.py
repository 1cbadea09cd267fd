"""``-t qcow2,raw,vmdk,vhd,vdi``: the raw disk, converted by ``qemu-img convert``."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from dib import cmd
from dib.config import BuildConfig, ImageFormat
from dib.outputs.base import Family, Needs, Run
from dib.outputs.files import atomic_output
from dib.outputs.stable_ids import FORMATS as STABLE_FORMATS
from dib.outputs.stable_ids import raw_digest, stabilize

log = logging.getLogger("dib.outputs")

#: qemu-img's name for each disk format of this family
QEMU_FORMATS = {"qcow2": "qcow2", "raw": "raw", "vmdk": "vmdk", "vhd": "vpc", "vdi": "vdi"}

#: qcow2 cluster compression. zstd is ~6x faster than zlib at a slightly smaller size
#: (measured on a 1.8 GiB Debian image: zlib 41 s / 505 MiB, zstd 6.9 s / 489 MiB; with
#: -m 8 -W 29 s and 4.1 s) and every QEMU since 5.1 (2020) reads it. For older readers set
#: DIB_QCOW2_COMPRESSION_TYPE=zlib.
DEFAULT_COMPRESSION_TYPE = "zstd"


def qemu_img_convert_argv(raw: Path, fmt: str, dest: Path, *, compress: bool,
                          options: str = "",
                          compression_type: str = DEFAULT_COMPRESSION_TYPE,
                          reproducible: bool = False) -> List[str]:
    """The ``qemu-img convert`` command for one disk format.

    qcow2 is compressed unless ``compress`` is off (``-u``), with ``compression_type``
    (default zstd), by several coroutines writing out of order (``-m 8 -W``), so the
    compression uses every core instead of dib's single-threaded zlib. A
    ``compression_type`` in ``options`` (``--qemu-img-options``) wins. ``reproducible``
    (SOURCE_DATE_EPOCH is set): the clusters are written in order (no ``-W``), so where each
    compressed cluster lands does not depend on which coroutine finished first.
    """
    argv: List[str] = ["qemu-img", "convert", "-f", "raw", "-O", QEMU_FORMATS[fmt]]
    opts = [o for o in options.split(",") if o]
    if fmt == "qcow2":
        if compress:
            argv.append("-c")
            if compression_type and not any(o.startswith("compression_type=") for o in opts):
                opts.append(f"compression_type={compression_type}")
        argv += ["-m", "8"] if reproducible else ["-m", "8", "-W"]
    if opts:
        argv += ["-o", ",".join(opts)]
    argv += [os.fspath(raw), os.fspath(dest)]
    return argv


def convert(run: Run, raw: Path, fmt: ImageFormat, dest: Path,
            digest: Optional[bytes] = None) -> None:
    """``raw`` as ``fmt`` at ``dest`` (a temporary path), with the build's qemu-img settings.
    With SOURCE_DATE_EPOCH, the ids and times qemu-img randomises in vmdk, vhd and vdi are
    made stable (:mod:`dib.outputs.stable_ids`); the vmdk's extent is named after the final
    file, not the temporary one. ``digest``: the raw disk's ``raw_digest``, if known."""
    cfg = run.cfg
    cmd.run(qemu_img_convert_argv(raw, fmt.value, dest, compress=cfg.compress,
                                  options=cfg.qemu_img_options,
                                  compression_type=cfg.qcow2_compression_type,
                                  reproducible=cfg.source_date_epoch is not None))
    if cfg.source_date_epoch is not None and fmt.value in STABLE_FORMATS:
        stabilize(dest, fmt.value, raw, cfg.source_date_epoch,
                  extent_name=cfg.output_path(fmt).name, digest=digest)


def write(run: Run, raw: Path, formats: Sequence[ImageFormat]) -> None:
    # raw last: the other conversions read the raw file, which raw's copy may replace later
    digest = None
    if run.cfg.source_date_epoch is not None and \
            any(f.value in STABLE_FORMATS for f in formats):
        digest = raw_digest(raw)  # once for every format that needs stable ids
    for fmt in sorted(formats, key=lambda f: f is ImageFormat.RAW):
        dest = run.cfg.output_path(fmt)
        log.info("writing %s", dest)
        with run.timings.measure("output", fmt.value), \
                atomic_output(dest, run.cfg.overwrite) as tmp:
            if fmt is ImageFormat.RAW:
                cmd.run(["cp", "--sparse=always", os.fspath(raw), os.fspath(tmp)])
            else:
                convert(run, raw, fmt, tmp, digest)
        run.add(dest)


def cache_inputs(cfg: BuildConfig) -> Dict[str, Any]:
    # compress / qemu_img_options / compression_type are keyed by the engine already (they
    # predate this package; moving them would change every cached image's key)
    return {}


FAMILY = Family("qemu", tuple(ImageFormat(f) for f in QEMU_FORMATS), Needs.DISK, write,
                cache_inputs=cache_inputs)
