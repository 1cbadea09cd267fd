"""ruff and mypy as tests, so the README's test command (and CI) runs them on every change.

Settings live in pyproject.toml: ruff checks dib/, tests/ and bin/; mypy checks dib/
strictly, with the overrides listed there. The tools come with the ``test`` extra
(``python3 bin/dib-host-setup --test``); without them these tests skip, except under CI
(``CI`` set), where a missing linter is a failure rather than a silent pass.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool(module: str) -> List[str]:
    if importlib.util.find_spec(module) is None:
        message = (f"{module} is not installed for {sys.executable}: "
                   "run `python3 bin/dib-host-setup --test` (or `pip install -e .[test]`)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return [sys.executable, "-m", module]


def _run(argv: List[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def test_ruff() -> None:
    proc = _run([*_tool("ruff"), "check", "--no-cache", "dib", "tests", "bin"])
    assert proc.returncode == 0, f"ruff check dib tests bin:\n{proc.stdout}"


def test_mypy_strict() -> None:
    # the files and the strictness come from pyproject.toml's [tool.mypy]
    proc = _run([*_tool("mypy")])
    assert proc.returncode == 0, f"mypy (strict for dib/):\n{proc.stdout}"
