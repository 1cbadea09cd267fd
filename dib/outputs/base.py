"""What an output family declares, and the one object that carries a build's outputs.

A *family* (:class:`Family`) is one module of this package: the formats it writes, what it
needs (:class:`Needs`: the final tree or the finished raw disk), what goes into the key of
the finished-image cache, how to write its outputs and how to store them in and restore them
from that cache. Families are immutable module constants; everything one build learns lives
in its :class:`Run`, which the build engine makes and passes in. Nothing here keeps state at
module level.
"""
from __future__ import annotations

import enum
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

from dib import cmd
from dib.config import BuildConfig, ImageFormat
from dib.log import Timings
from dib.outputs import checksums
from dib.outputs.files import atomic_output
from dib.outputs.manifest import TreeFacts

log = logging.getLogger("dib.outputs")


class Needs(str, enum.Enum):
    """What a family writes its outputs from."""
    TREE = "tree"  #: the final tree (a mount with nothing mounted below it)
    DISK = "disk"  #: the finished raw disk file (unmounted, detached, ESP written)


@dataclass
class Run:
    """One build's outputs: the settings, what the build learned that outputs need, and the
    paths written so far (the build's output list itself, appended to in place)."""
    cfg: BuildConfig
    timings: Timings
    elements: Tuple[str, ...]  #: the resolved elements, in order
    written: List[Path] = field(default_factory=list)
    has_esp: bool = False  #: the disk has an EFI system partition (UEFI boot)
    facts: TreeFacts = field(default_factory=TreeFacts)

    def add(self, path: Path) -> None:
        """Record a finished file output and write its ``--checksum`` files."""
        self.written.append(path)
        self.written.extend(checksums.write(path, self.cfg.checksums))

    def add_directory(self, path: Path) -> None:
        """Record a finished directory output (no checksum files)."""
        self.written.append(path)
        if self.cfg.checksums:
            log.info("%s is a directory: no checksum files (its blobs are named by their "
                     "sha256)", path.name)


#: ``write(run, source, formats)``: write ``formats`` (those of the family the build asked
#: for, in order) from ``source`` (the tree or the raw disk) and record them on ``run``
Writer = Callable[[Run, Path, Sequence[ImageFormat]], None]
#: ``store(output, tmp)``: put one finished output into the cache file ``tmp``
Storer = Callable[[Path, Path], None]
#: ``restore(run, format, cached, dest)``: put a cached output back at ``dest``, record it
Restorer = Callable[[Run, ImageFormat, Path, Path], None]


def no_inputs(cfg: BuildConfig) -> Dict[str, Any]:
    return {}


def no_check(cfg: BuildConfig) -> None:
    return None


def file_suffix(fmt: ImageFormat) -> str:
    return f".{fmt.value}"


def store_file(src: Path, tmp: Path) -> None:
    cmd.run(["cp", "--reflink=auto", "--sparse=always", src, tmp])


def restore_file(run: Run, fmt: ImageFormat, cached: Path, dest: Path) -> None:
    with run.timings.measure("output", f"{fmt.value} (cached)"), \
            atomic_output(dest, run.cfg.overwrite) as tmp:
        cmd.run(["cp", "--reflink=auto", "--sparse=always", os.fspath(cached), tmp])
    run.add(dest)


@dataclass(frozen=True)
class Family:
    """One module's declaration (see the module docstring)."""
    name: str  #: names its settings in the cache key, e.g. ``container``
    formats: Tuple[ImageFormat, ...]
    needs: Needs
    write: Writer
    #: the settings (beyond the format list) that change these outputs: the cache key
    cache_inputs: Callable[[BuildConfig], Dict[str, Any]] = no_inputs
    #: raises ConfigError before the build starts if the settings cannot work
    check: Callable[[BuildConfig], None] = no_check
    cache_suffix: Callable[[ImageFormat], str] = file_suffix
    store: Storer = store_file
    restore: Restorer = restore_file

    def wanted(self, cfg: BuildConfig) -> List[ImageFormat]:
        """The formats of this family the build asked for, in the order it asked."""
        return [f for f in cfg.formats if f in self.formats]
