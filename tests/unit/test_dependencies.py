"""Every declared package earns its place, and every package dib imports is declared.

setup.cfg's ``install_requires`` must be exactly the third-party packages that dib/ imports
(a package declared and imported nowhere -- ``sh`` was one -- costs every install for
nothing); the extras must each be used by what they are for.
"""
from __future__ import annotations

import ast
import configparser
import re
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: distribution name (lower case) -> the module it is imported as, where the two differ
IMPORT_NAME = {"pyyaml": "yaml", "diskimage-builder": "diskimage_builder"}

#: stub-only distributions: no import of their own, they type another declared package
STUBS = {"types-pyyaml": "pyyaml"}


def declared(option: str, section: str = "options") -> List[str]:
    """Distribution names (lower case, no version) of one setup.cfg requirement list."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    names = []
    for line in cfg.get(section, option).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].lower())
    return names


def top_level_imports(paths: Iterable[Path]) -> Set[str]:
    """Top-level names of every absolute import in ``paths``, at any depth of the code."""
    names: Set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
    return names


def third_party(names: Set[str], own: Set[str]) -> Set[str]:
    return {n for n in names if n not in sys.stdlib_module_names and n not in own}


def module_of(dist: str) -> str:
    return IMPORT_NAME.get(dist, dist.replace("-", "_"))


def python_files(*dirs: str) -> List[Path]:
    return [p for d in dirs for p in sorted((ROOT / d).rglob("*.py"))]


pytestmark = pytest.mark.skipif(not hasattr(sys, "stdlib_module_names"),
                                reason="needs Python 3.10+ (sys.stdlib_module_names)")


def test_install_requires_is_what_dib_imports() -> None:
    requires = {module_of(d): d for d in declared("install_requires")}
    imported = third_party(top_level_imports(python_files("dib")), {"dib"})
    unused = sorted(requires[m] for m in set(requires) - imported)
    optional = {module_of(d) for d in declared("farm", "options.extras_require")}
    undeclared = sorted(imported - set(requires) - optional)
    assert not unused, f"declared in setup.cfg install_requires, imported nowhere in dib/: " \
                       f"{unused}: drop them (docs/architecture.md, 'Dependencies')"
    assert not undeclared, f"imported in dib/ but not in install_requires: {undeclared}"


#: the modules that may import the farm extra (docs/farm.md): nothing else loads Dask
FARM_MODULES = ("dib/farm.py", "dib/farmlock.py", "dib/farmworker.py")


def test_the_farm_extra_is_imported_by_the_farm_modules_alone() -> None:
    extra = {module_of(d) for d in declared("farm", "options.extras_require")}
    assert extra == {"distributed"}
    for path in python_files("dib"):
        uses = extra & top_level_imports([path])
        rel = path.relative_to(ROOT).as_posix()
        assert rel in FARM_MODULES or not uses, f"{rel} imports {sorted(uses)}"
    assert all(extra <= top_level_imports([ROOT / m]) for m in FARM_MODULES)


def test_the_test_extra_is_used_by_the_tests() -> None:
    tests = python_files("tests")
    imported = top_level_imports(tests)
    # the linters run as `python -m <tool>` (tests/unit/test_linters.py)
    linters = set(re.findall(r'_tool\("(\w+)"\)',
                             (ROOT / "tests" / "unit" / "test_linters.py").read_text()))
    extra = declared("test", "options.extras_require")
    unused = []
    for dist in extra:
        if dist in STUBS:
            if STUBS[dist] not in declared("install_requires") or "mypy" not in extra:
                unused.append(dist)
        elif module_of(dist) not in imported | linters:
            unused.append(dist)
    assert not unused, f"in the test extra but used by no test: {unused}"


def test_the_dib_elements_extra_is_what_the_hooks_probe() -> None:
    """diskimage-builder is never imported by dib itself: its element library's hooks import
    it, in the interpreter dibcompat finds for them."""
    from dib import dibcompat

    dists: Dict[str, str] = {d: module_of(d) for d in declared("dib-elements",
                                                               "options.extras_require")}
    assert dists == {"diskimage-builder": "diskimage_builder"}
    assert "import diskimage_builder" in dibcompat.PROBE
