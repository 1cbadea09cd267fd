"""Element resolution on a networkx graph.

The semantics are diskimage-builder's (``element_dependencies.py``), made deterministic:

* requested elements are expanded through ``element-deps``;
* a name that a selected element lists in ``element-provides`` is satisfied by that element
  and is never looked up as a real element (so its deps are not pulled in either);
* exactly one element must provide ``operating-system``;
* two selected elements providing the same name, or asking for a name that a selected element
  provides, are errors.

Where diskimage-builder depends on argument order or on Python's hash seed (a breadth-first
queue over sets), we compute a fixpoint instead: the selection is the least set closed under
deps in which no name is both selected and provided. The output order is a topological order
of the dependency graph (dependencies first), ties broken by name; cycles, which dib accepts,
are kept together and ordered by name.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Sequence, Set, Tuple

import networkx as nx
import yaml

from dib.element import Catalogue, Element
from dib.errors import AlreadyProvided, ElementNotFound, MissingOperatingSystem

OPERATING_SYSTEM = "operating-system"


@dataclass(frozen=True)
class Resolution:
    #: element names, dependencies before dependants, ties by name
    order: Tuple[str, ...]
    elements: Mapping[str, Element]
    #: virtual name -> the element that provides it
    provided: Mapping[str, str]
    #: edges dependency -> dependant, over the selected elements
    graph: nx.DiGraph
    requested: Tuple[str, ...]

    def ordered(self) -> Tuple[Element, ...]:
        return tuple(self.elements[n] for n in self.order)


def _closure(requested: Sequence[str], catalogue: Catalogue, excluded: Set[str]
             ) -> Tuple[Set[str], Dict[str, List[str]], Dict[str, Set[str]]]:
    """Least set containing ``requested`` and closed under deps not provided within it.

    Returns (selected, providers by virtual name, missing name -> elements wanting it).
    """
    selected: Set[str] = {n for n in requested if n in catalogue}
    while True:
        provided: Dict[str, List[str]] = {}
        for name in selected:
            for p in catalogue[name].provides:
                provided.setdefault(p, []).append(name)
        missing: Dict[str, Set[str]] = {}
        new: Set[str] = set()
        for name in selected:
            for dep in catalogue[name].deps:
                if dep in provided or dep in selected:
                    continue
                if dep in catalogue and dep not in excluded:
                    new.add(dep)
                else:
                    missing.setdefault(dep, set()).add(name)
        if not new:
            return selected, {k: sorted(v) for k, v in provided.items()}, missing
        selected |= new


def resolve(requested: Iterable[str], catalogue: Catalogue) -> Resolution:
    """Resolve ``requested`` against ``catalogue``; raise a DibError naming the culprit."""
    wanted = tuple(dict.fromkeys(requested))  # repeated arguments are harmless
    for name in wanted:
        if name not in catalogue and not any(name in e.provides for e in catalogue.elements.values()):
            raise _not_found(name, None, catalogue)

    # A real element that some other selected element provides is shadowed: drop it (and
    # whatever only it pulled in) and recompute, until nothing is shadowed.
    excluded: Set[str] = set()
    while True:
        selected, provided, missing = _closure(wanted, catalogue, excluded)
        shadowed = {n for n in selected if n in provided and n not in wanted}
        if not shadowed:
            break
        excluded |= shadowed

    for virtual, providers in sorted(provided.items()):
        if len(providers) > 1:
            raise AlreadyProvided(
                f"'{virtual}' is provided by more than one element: {', '.join(providers)}",
                hint="keep only one of them")
    for name in wanted:
        if name in provided:
            raise AlreadyProvided(
                f"element '{name}' was requested, but '{provided[name][0]}' already provides it",
                hint=f"drop '{name}' from the element list (or drop '{provided[name][0]}')")
    for name in wanted:
        if name not in catalogue and name not in provided:
            providers = catalogue.providers_of(name)
            raise ElementNotFound(
                f"'{name}' is not an element but a name that other elements provide",
                hint=f"ask for one of: {', '.join(providers)}")
    if missing:
        name = sorted(missing)[0]
        raise _not_found(name, sorted(missing[name]), catalogue)
    if OPERATING_SYSTEM not in provided:
        candidates = catalogue.providers_of(OPERATING_SYSTEM)
        raise MissingOperatingSystem(
            "no element provides 'operating-system': include an operating system element",
            hint=("available: " + ", ".join(candidates)) if candidates else None)

    graph = nx.DiGraph()
    graph.add_nodes_from(selected)
    by_virtual = {k: v[0] for k, v in provided.items()}
    for name in selected:
        for dep in catalogue[name].deps:
            source = dep if dep in selected else by_virtual[dep]
            if source != name:
                graph.add_edge(source, name)
    order = _deterministic_order(graph)
    return Resolution(order=order, elements={n: catalogue[n] for n in order},
                      provided=dict(sorted(by_virtual.items())), graph=graph,
                      requested=wanted)


def _deterministic_order(graph: nx.DiGraph) -> Tuple[str, ...]:
    """Topological order, ties by name; a cycle stays together, sorted by name."""
    condensed = nx.condensation(graph)
    members = condensed.graph["mapping"]  # node -> component id
    comps: Dict[int, List[str]] = {}
    for node, comp in members.items():
        comps.setdefault(comp, []).append(node)
    order: List[str] = []
    for comp in nx.lexicographical_topological_sort(condensed, key=lambda c: min(comps[c])):
        order.extend(sorted(comps[comp]))
    return tuple(order)


def _not_found(name: str, wanted_by, catalogue: Catalogue) -> ElementNotFound:
    by = f" (a dependency of {', '.join(repr(w) for w in wanted_by)})" if wanted_by else ""
    hint = "searched: " + ":".join(str(p) for p in catalogue.search_path)
    providers = catalogue.providers_of(name)
    if providers:
        return ElementNotFound(
            f"nothing selected provides '{name}'{by}",
            hint=f"add an element that provides it: {', '.join(providers)}")
    virtuals = {p for e in catalogue.elements.values() for p in e.provides}
    close = difflib.get_close_matches(name, list(catalogue.names()) + sorted(virtuals), n=3)
    if close:
        hint = f"did you mean {', '.join(close)}? " + hint
    return ElementNotFound(f"element '{name}' not found{by}", hint=hint)


def implicit_elements(requested: Sequence[str], *, skip_base: bool, arch: str) -> List[str]:
    """What disk-image-create adds before resolving, as diskimage-builder does:
    ``base`` first unless ``-n``, and a block-device element when ``vm`` is asked for
    without one (``block-device-efi`` on arm64, else ``block-device-mbr``)."""
    names = list(requested)
    if "vm" in names and not any(n.startswith("block-device-") for n in names):
        names.append("block-device-efi" if arch in ("arm64", "aarch64") else "block-device-mbr")
    if not skip_base:
        names.insert(0, "base")
    return names


# -- exports ------------------------------------------------------------------------------

def env_exports(res: Resolution) -> str:
    """The shell text ``element-info --env`` prints (diskimage-builder compatible)."""
    paths = {n: str(res.elements[n].path) for n in res.order}
    image_yaml = yaml.safe_dump(paths, default_flow_style=False)
    array = " ".join(f"[{n}]={p}" for n, p in paths.items())
    return (f"export IMAGE_ELEMENT='{' '.join(res.order)}'\n"
            f"export IMAGE_ELEMENT_YAML='{image_yaml}'\n"
            "function get_image_element_array {\n"
            f"  echo \"{array}\"\n"
            "};\n"
            "export -f get_image_element_array;\n")


def to_dot(res: Resolution) -> str:
    """The dependency graph in DOT: real edges solid, edges through a provided name dashed."""
    lines = ["digraph elements {", "  rankdir=LR;", "  node [shape=box];"]
    for name in res.order:
        attrs = ' style=bold' if name in res.requested else ""
        lines.append(f'  "{name}"[label="{name}"{attrs}];')
    for name in res.order:
        for dep in res.elements[name].deps:
            if dep in res.elements:
                lines.append(f'  "{dep}" -> "{name}";')
            else:
                lines.append(f'  "{res.provided[dep]}" -> "{name}" [style=dashed label="{dep}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_json(res: Resolution) -> str:
    data = {
        "requested": list(res.requested),
        "elements": [
            {"name": n, "path": str(res.elements[n].path),
             "deps": list(res.elements[n].deps), "provides": list(res.elements[n].provides)}
            for n in res.order],
        "order": list(res.order),
        "provided": dict(res.provided),
        "edges": sorted([list(e) for e in res.graph.edges]),
    }
    return json.dumps(data, indent=2) + "\n"
