"""Imports point down: the layers of docs/architecture.md ("Layers"), checked on every run.

Every module of dib/ belongs to exactly one layer. A module may import modules of its own
layer and of the layers below it, never one above; and no chain of imports may lead back to
where it started. Every import counts for the layers: module level, inside functions (the lazy
imports that hide a cycle from the interpreter) and under ``if TYPE_CHECKING``. For cycles,
every import but the ``TYPE_CHECKING`` ones (annotations only: ``a`` runs ``b``, ``b`` only
names ``a``'s type).

A new module fails here until it is given a layer, both below and in the doc's table.
"""
from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "dib"
DOC = ROOT / "docs" / "architecture.md"

#: top first; names relative to ``dib`` (``""`` is the package itself, ``x.*`` every module
#: below the package ``x``). Keep in step with the table in docs/architecture.md, "Layers".
LAYERS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("entry points", ("__main__", "cli")),
    ("front ends", ("dryrun", "farm", "farmtask", "farmworker", "recipe")),
    ("the build", ("build",)),
    ("stages", ("beside", "disk", "steps")),
    ("context", ("context",)),
    ("engine", ("blockdev", "blockdev.*", "bootstrap", "boottest",
                "chroot", "content_keys", "dibcompat", "farmlock", "hooks", "interrupt", "layers",
                "outputs", "outputs.*", "package_installs", "remote", "remote.cache",
                "remote.client", "remote.layer", "remote.oci", "resolver", "runparts", "tree",
                "workdir")),
    ("basics", ("cache", "config", "element", "mirror", "mounts", "pkgmap", "remote.url",
                "reproducible")),
    ("leaves", ("", "cmd", "errors", "log", "phases", "status")),
)

#: The one known upward import, each (importer, imported): config parses the output
#: formats' own settings (ContainerSettings, DomainSettings, VagrantSettings) with the
#: parsers those modules define, which use config.group_values. Moving the three settings
#: classes below config would remove it.
ALLOWED_UPWARD: Set[Tuple[str, str]] = {
    ("dib.config", f"dib.outputs.{fmt}") for fmt in ("container", "libvirt", "vagrant")
}

HOW_TO_FIX = "add it to a layer in tests/unit/test_layers.py and docs/architecture.md"


def module_names() -> Dict[str, Path]:
    """``dib.x.y`` -> its file, for every module below dib/."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _typing_only(tree: ast.AST) -> Set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    found: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
                (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
                or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")):
            found.update(id(n) for stmt in node.body for n in ast.walk(stmt)
                         if isinstance(n, (ast.Import, ast.ImportFrom)))
    return found


def imported(module: str, path: Path,
             known: Set[str]) -> Iterator[Tuple[str, int, bool]]:
    """The dib modules ``module`` imports: (module, line, only under TYPE_CHECKING);
    ``from dib.x import y`` names ``dib.x.y`` when that is a module and ``dib.x`` otherwise."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    typing_only = _typing_only(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "dib" or alias.name.startswith("dib."):
                    yield alias.name, node.lineno, id(node) in typing_only
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base != "dib" and not base.startswith("dib."):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in known else base), node.lineno, id(node) in typing_only


def layer_index() -> Dict[str, int]:
    """Every existing module -> the number of its layer (0 is the top)."""
    modules = module_names()
    index: Dict[str, int] = {}
    for number, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if pattern.endswith(".*"):
                prefix = f"dib.{pattern[:-2]}."
                matched = [m for m in modules if m.startswith(prefix)]
            else:
                matched = [f"dib.{pattern}" if pattern else "dib"]
            for m in matched:
                if m in modules and m not in index:  # a named module wins over a pattern
                    index[m] = number
    return index


def edges() -> List[Tuple[str, str, int, bool]]:
    """(importer, imported, line, only under TYPE_CHECKING) for every import in dib/."""
    modules = module_names()
    known = set(modules)
    return [(m, dep, line, typing) for m, path in modules.items()
            for dep, line, typing in imported(m, path, known) if dep != m]


def test_every_module_has_a_layer() -> None:
    index = layer_index()
    missing = sorted(set(module_names()) - set(index))
    assert not missing, f"modules in no layer: {', '.join(missing)}: {HOW_TO_FIX}"


def test_every_layer_entry_names_a_module() -> None:
    """A layer entry whose module is gone (renamed, merged) is stale."""
    modules = module_names()
    stale = []
    for _, patterns in LAYERS:
        for pattern in patterns:
            if pattern.endswith(".*"):
                if not any(m.startswith(f"dib.{pattern[:-2]}.") for m in modules):
                    stale.append(pattern)
            elif (f"dib.{pattern}" if pattern else "dib") not in modules:
                stale.append(pattern)
    assert not stale, f"layer entries without a module: {stale}: remove them here and in the doc"


def test_imports_point_down() -> None:
    index = layer_index()
    upward = []
    for m, dep, line, _ in edges():
        if m not in index or dep not in index:
            continue  # reported by test_every_module_has_a_layer
        if index[dep] < index[m] and (m, dep) not in ALLOWED_UPWARD:
            upward.append(f"{module_names()[m].relative_to(ROOT)}:{line}: {m} "
                          f"({LAYERS[index[m]][0]}) imports {dep} ({LAYERS[index[dep]][0]})")
    assert not upward, "imports pointing up a layer:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    graph = nx.DiGraph()
    graph.add_edges_from((m, dep) for m, dep, _, typing in edges()
                         if not typing and (m, dep) not in ALLOWED_UPWARD)
    found = itertools.islice(nx.simple_cycles(graph), 20)  # enough to see the loop
    cycles = sorted(" -> ".join([*c, c[0]]) for c in found)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def doc_layers() -> List[Tuple[str, Tuple[str, ...]]]:
    """The rows of the table below docs/architecture.md's "Layers" heading."""
    text = DOC.read_text()
    section = text.split("\n## Layers\n", 1)
    assert len(section) == 2, "docs/architecture.md has no '## Layers' section"
    rows = []
    for line in section[1].split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] and not set(cells[0]) <= set("-: ") \
                and cells[0] != "layer":
            names = tuple(n if n != "dib" else "" for n in re.findall(r"`([^`]+)`", cells[1]))
            rows.append((cells[0], names))
    return rows


def test_the_doc_shows_these_layers() -> None:
    expected = [(name, tuple(sorted(p))) for name, p in LAYERS]
    assert [(name, tuple(sorted(p))) for name, p in doc_layers()] == expected, \
        "docs/architecture.md's Layers table differs from LAYERS in tests/unit/test_layers.py"


@pytest.mark.parametrize("source, expected", [
    ("from dib import cmd, log as dlog\n", {"dib.cmd", "dib.log"}),
    ("from dib import __version__\n", {"dib"}),
    ("import dib.errors\n", {"dib.errors"}),
    ("def f():\n    from dib.blockdev.size import MiB\n", {"dib.blockdev.size"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dib.context import X\n",
     {"dib.context"}),
    ("from . import size\nfrom .node import Node\n", {"dib.blockdev.size", "dib.blockdev.node"}),
    ("import yaml\nfrom dibble import x\n", set()),
])
def test_imports_are_found(tmp_path: Path, source: str, expected: Set[str]) -> None:
    path = tmp_path / "mod.py"
    path.write_text(source)
    known = {"dib", "dib.cmd", "dib.log", "dib.errors", "dib.blockdev.size",
             "dib.blockdev.node", "dib.context"}
    assert {dep for dep, _, _ in imported("dib.blockdev.mod", path, known)} == expected


def test_type_checking_imports_are_told_apart(tmp_path: Path) -> None:
    path = tmp_path / "mod.py"
    path.write_text("import typing\nfrom dib import cmd\nif typing.TYPE_CHECKING:\n"
                    "    from dib import log\n")
    found = {dep: typing for dep, _, typing in imported("dib.mod", path, {"dib.cmd", "dib.log"})}
    assert found == {"dib.cmd": False, "dib.log": True}
