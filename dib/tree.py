"""The image tree as a stack of overlayfs layers, Docker-style.

root.d writes the base layer (a plain directory, bind-mounted at ``TMP_MOUNT_PATH`` so hooks
can use either name). Every later step mounts an overlay at ``TMP_MOUNT_PATH`` whose lower
layers are all earlier layers and whose upper directory is new; when the step ends the
overlay is unmounted and the upper directory -- exactly what the step changed -- becomes the
next layer. Layers may come from the layer cache (:mod:`dib.layers`) instead of a step.

All layers live in one directory, so the overlay's ``lowerdir`` option lists them by name
relative to it; :meth:`LayeredTree.view` mounts the merged result read-only for packing.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Collection, Iterator, List, Optional, Sequence

from dib import mounts
from dib.errors import DibError


class LayeredTree:
    def __init__(self, layers_dir: Path, mnt: Path) -> None:
        self.layers_dir = layers_dir
        self.mnt = mnt
        self.layers: List[Path] = []

    def _check(self, path: Path) -> None:
        if path.parent != self.layers_dir:
            raise DibError(f"layer {path} is not in {self.layers_dir}")

    def add_layer(self, layer: Path) -> None:
        """Put a finished layer (a step's upper directory, or a cached one) on top."""
        self._check(layer)
        self.layers.append(layer)

    def insert_layer(self, index: int, layer: Path) -> None:
        """Put a finished layer at ``index`` of the stack (a step that ran beside the steps
        above it takes its own place: :mod:`dib.beside`)."""
        self._check(layer)
        self.layers.insert(index, layer)

    @contextlib.contextmanager
    def write_base(self, upper: Path) -> Iterator[Path]:
        """``upper`` writable at ``mnt`` as the first layer (root.d). Yields ``mnt``."""
        if self.layers:
            raise DibError("the base layer exists already")
        self._check(upper)
        with mounts.mounted(os.fspath(upper), self.mnt, bind=True):
            yield self.mnt

    @contextlib.contextmanager
    def write_step(self, upper: Path, work: Path, *, at: Optional[Path] = None,
                   below: Optional[Sequence[Path]] = None) -> Iterator[Path]:
        """A writable overlay at ``mnt`` (or ``at``): every layer so far (or ``below``, bottom
        first) under ``upper``. Yields the mount point."""
        below = self.layers if below is None else below
        if not below:
            raise DibError("a step needs the base layer first")
        self._check(upper)
        target = self.mnt if at is None else at
        with mounts.overlay(list(reversed(below)), upper, work, target):  # topmost first
            yield target

    @contextlib.contextmanager
    def view(self, target: Path, without: Collection[Path] = ()) -> Iterator[Path]:
        """The merged tree (less the layers ``without``), read-only, at ``target``."""
        layers = [p for p in self.layers if p not in without]
        if len(layers) == 1:
            with mounts.mounted(os.fspath(layers[0]), target, bind=True, options=("ro",)):
                yield target
            return
        names = ":".join(p.name for p in reversed(layers))
        with mounts.mount_overlay([f"lowerdir={names}"], target, self.layers_dir):
            yield target
