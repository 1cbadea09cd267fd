"""Element fixtures: build small element trees in tmp_path and run element-info in-process.

``make_elements`` writes a tree from a dict::

    root = make_elements({
        "os": {"provides": ["operating-system"]},
        "app": {"deps": ["lib"], "readme": "app\\n===\\n\\nDoes app things.\\n"},
        "lib": {"deps_text": "# comments are ignored\\n\\n"},
        "tool": {"hooks": {"install.d": ["10-tool"]}},
    }, under="first")

Each value may hold ``deps`` / ``provides`` (lists, one a line), ``deps_text`` /
``provides_text`` (the raw file), ``readme`` (README.rst text) and ``hooks``
(phase dir -> executable script names). ``under`` names the directory (inside tmp_path) that
holds the elements; calling it twice with the same ``under`` adds to that tree.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import pytest

from dib import cli, element
from dib.element import Catalogue

Spec = Mapping[str, Mapping[str, object]]


def write_elements(root: Path, spec: Spec) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, entry in spec.items():
        path = root / name
        path.mkdir(parents=True, exist_ok=True)
        for key, filename in (("deps", "element-deps"), ("provides", "element-provides")):
            if key in entry:
                (path / filename).write_text("".join(f"{n}\n" for n in entry[key]))
            if f"{key}_text" in entry:
                (path / filename).write_text(str(entry[f"{key}_text"]))
        if "readme" in entry:
            (path / "README.rst").write_text(str(entry["readme"]))
        for phase, scripts in dict(entry.get("hooks", {})).items():
            (path / phase).mkdir(exist_ok=True)
            for script in scripts:
                hook = path / phase / script
                hook.write_text("#!/bin/bash\nset -eu -o pipefail\n")
                hook.chmod(0o755)
    return root


@pytest.fixture
def make_elements(tmp_path: Path) -> Callable[..., Path]:
    def make(spec: Spec, under: str = "elements") -> Path:
        return write_elements(tmp_path / under, spec)
    return make


@pytest.fixture
def catalogue(make_elements) -> Callable[..., Catalogue]:
    """``catalogue(spec)``: discover a one-entry search path built from ``spec``."""
    def build(spec: Spec, under: str = "elements") -> Catalogue:
        return element.discover([make_elements(spec, under)])
    return build


@pytest.fixture
def empty_builtin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the built-in elements directory at an empty directory, so tests see only their
    own trees whatever the checkout's elements/ holds."""
    builtin = tmp_path / "builtin-elements"
    builtin.mkdir()
    monkeypatch.setattr(element, "builtin_elements_dir", lambda: builtin)
    return builtin


@pytest.fixture
def element_info(empty_builtin, monkeypatch, capsys) -> Callable[..., Tuple[int, str, str]]:
    """``element_info(*argv, path=[roots])`` runs the command in-process with ELEMENTS_PATH set
    from ``path`` and returns (exit status, stdout, stderr)."""
    def run(*argv: str, path: Optional[List[Path]] = None,
            env: Optional[Dict[str, str]] = None) -> Tuple[int, str, str]:
        if path is not None:
            monkeypatch.setenv("ELEMENTS_PATH", ":".join(str(p) for p in path))
        else:
            monkeypatch.delenv("ELEMENTS_PATH", raising=False)
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("DIB_DEBUG_TRACEBACK", raising=False)
        try:
            rc = cli.element_info(list(argv))
        except SystemExit as exc:  # argparse usage errors
            rc = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return rc, out, err
    return run


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


@pytest.fixture
def subprocess_env(repo_root) -> Dict[str, str]:
    """An environment for running this checkout's dib in a child process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo_root) + (os.pathsep + env["PYTHONPATH"]
                                          if env.get("PYTHONPATH") else "")
    env.pop("DIB_DEBUG_TRACEBACK", None)
    return env
