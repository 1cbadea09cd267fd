"""The image tree as a stack of overlayfs layers, Docker-style.

root.d writes the base layer (a plain directory, bind-mounted at ``TMP_MOUNT_PATH`` so hooks
can use either name). Every later step mounts an overlay at ``TMP_MOUNT_PATH`` whose lower
layers are all earlier layers and whose upper directory is new; when the step ends the
overlay is unmounted and its upper directory becomes the next layer. A step's layer is
therefore exactly what that step changed -- the unit the layer cache stores and reuses.

:meth:`LayeredTree.view` mounts the merged result read-only for packing.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Iterator, List

from dib import mounts


class LayeredTree:
    def __init__(self, layers_dir: Path, mnt: Path) -> None:
        self.layers_dir = layers_dir
        self.mnt = mnt
        self.layers: List[Path] = []

    def _new_dir(self, label: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", label)
        path = self.layers_dir / f"{len(self.layers):03d}-{safe}"
        path.mkdir()
        return path

    @contextlib.contextmanager
    def base(self, label: str = "root.d") -> Iterator[Path]:
        """The first layer, writable at ``mnt``. Yields ``mnt``."""
        if self.layers:
            raise RuntimeError("the base layer exists already")
        layer = self._new_dir(label)
        os.chmod(layer, 0o755)
        with mounts.mounted(os.fspath(layer), self.mnt, bind=True):
            yield self.mnt
        self.layers.append(layer)

    def add_layer(self, layer: Path) -> None:
        """Put an existing directory (e.g. a cached layer) on top of the stack."""
        self.layers.append(layer)

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[Path]:
        """A writable overlay at ``mnt`` over every layer so far; its changes become a layer."""
        if not self.layers:
            raise RuntimeError("a step needs the base layer first")
        upper = self._new_dir(label)
        work = self.layers_dir / f"{upper.name}.work"
        work.mkdir()
        lowers = list(reversed(self.layers))  # topmost first
        try:
            with mounts.overlay(lowers, upper, work, self.mnt):
                yield self.mnt
        finally:
            with contextlib.suppress(OSError):
                _rmtree_quiet(work)
        self.layers.append(upper)

    @contextlib.contextmanager
    def view(self, target: Path) -> Iterator[Path]:
        """The merged tree, read-only, at ``target``."""
        if len(self.layers) == 1:
            with mounts.mounted(os.fspath(self.layers[0]), target, bind=True, options=("ro",)):
                yield target
            return
        names = ":".join(p.name for p in reversed(self.layers))
        with mounts.mount_overlay([f"lowerdir={names}"], target, self.layers_dir):
            yield target


def _rmtree_quiet(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
