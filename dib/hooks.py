"""Assemble the hooks tree (``TMP_HOOKS_PATH``) from the resolved elements.

As in diskimage-builder, every element's sub-directories are merged into the tree (``tests``
and ``__pycache__`` excepted) and its top-level files are copied flat. Two elements shipping
a regular file of the same name in the same directory is an error -- and unlike dib, the
message names both elements. Unlike dib, every hook script keeps its element of origin, so
logs and errors can say which element a failing script came from.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

from dib.element import ENV_NAME, HOOK_NAME, run_parts_key
from dib.errors import DuplicateHook
from dib.resolver import Resolution

SKIP_DIRS = {"tests", "__pycache__"}


@dataclass(frozen=True)
class Script:
    phase: str
    name: str
    element: str
    path: Path  # in the hooks tree


@dataclass(frozen=True)
class HooksTree:
    root: Path
    #: (directory relative to root, file name) -> element
    origin: Mapping[Tuple[str, str], str]

    def scripts(self, phase: str) -> Tuple[Script, ...]:
        """The scripts dib-run-parts would run for ``phase``, in its order."""
        d = self.root / phase
        if not d.is_dir():
            return ()
        names = [n for n in os.listdir(d)
                 if HOOK_NAME.match(n) and (d / n).is_file() and os.access(d / n, os.X_OK)]
        return tuple(Script(phase, n, self.origin.get((phase, n), "?"), d / n)
                     for n in sorted(names, key=run_parts_key))

    def environment_files(self) -> Tuple[str, ...]:
        d = self.root / "environment.d"
        if not d.is_dir():
            return ()
        return tuple(n for n in sorted(os.listdir(d), key=run_parts_key)
                     if ENV_NAME.match(n) and (d / n).is_file())


def assemble(res: Resolution, dest: Path) -> HooksTree:
    """Copy the resolved elements into ``dest`` (which must exist and be empty)."""
    origin: Dict[Tuple[str, str], str] = {}
    for element in res.ordered():
        for entry in sorted(element.path.iterdir()):
            if entry.is_dir():
                if entry.name in SKIP_DIRS:
                    continue
                _merge_dir(entry, dest / entry.name, entry.name, element.name, origin)
            else:
                shutil.copy2(entry, dest / entry.name)
    _write_element_data(res, dest)
    return HooksTree(dest, origin)


def _merge_dir(src: Path, dst: Path, rel: str, element: str,
               origin: Dict[Tuple[str, str], str]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink():
            _merge_dir(entry, target, f"{rel}/{entry.name}", element, origin)
            continue
        key = (rel, entry.name)
        if key in origin and "/" not in rel:
            raise DuplicateHook(
                f"{rel}/{entry.name} is shipped by both element '{origin[key]}' and "
                f"element '{element}'",
                hint="hook names must be unique across the element set; rename one of them")
        if target.exists() or target.is_symlink():
            target.unlink()
        # a symlink to a file counts as that file (dib-run-parts uses find -xtype f)
        shutil.copy2(entry, target, follow_symlinks=entry.exists())
        origin[key] = element


def _write_element_data(res: Resolution, dest: Path) -> None:
    """The resolved set as data for hooks (instead of shell to eval)."""
    data: List[Dict[str, Any]] = [{"name": e.name, "path": str(e.path)} for e in res.ordered()]
    (dest / "dib-elements.json").write_text(json.dumps(data, indent=2) + "\n")
