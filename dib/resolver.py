"""Element resolution on a networkx graph.

The semantics are diskimage-builder's (``element_dependencies.py``, contract §c):

* requested elements are expanded through ``element-deps``;
* a name that a selected element lists in ``element-provides`` is satisfied by that element:
  it is dropped from the result even when a real element has that name, and that element's
  deps are not pulled in;
* exactly one selected element must provide ``operating-system``;
* a missing element, two selected elements providing one name, and requesting a name that a
  selected element provides are errors.

diskimage-builder walks a breadth-first queue whose order comes from the arguments and from
Python's per-process hash seed, so some requests succeed or fail by chance. We compute the
answer from sets instead, so it depends only on *which* names are requested:

1. Expand: the least set holding the requested elements and, for every selected element, each
   dep that no selected element provides. A dep that is provided is not expanded.
2. Shadow: a real element that was expanded but turns out to be provided by a selected element
   (the provider arrived through another path) is taken back out with everything only it
   pulled in, if the name stays provided without it. Candidates are tried in name order, one at
   a time, until none qualifies.
3. A real element that is provided only by something it pulled in itself (an "alias" such as a
   ``block-device`` element depending on ``block-device-mbr``) stays expanded, as in
   diskimage-builder, and is dropped from the result like any provided name.

Repeating an argument is harmless (``os os`` too, which diskimage-builder rejects), and
``element-deps`` comment lines are ignored (see :mod:`dib.element`).

The output order is a topological order of the dependency graph (dependencies before
dependants), ties broken by name; a dependency cycle, which diskimage-builder accepts, is kept
together and ordered by name.
"""
from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass
from typing import AbstractSet, Dict, FrozenSet, Iterable, List, Mapping, Set, Tuple

import networkx as nx
import yaml

from dib.element import Catalogue, Element
from dib.errors import AlreadyProvided, ElementNotFound, MissingOperatingSystem

log = logging.getLogger("dib.resolver")

OPERATING_SYSTEM = "operating-system"


@dataclass(frozen=True)
class Resolution:
    #: element names, dependencies before dependants, ties by name
    order: Tuple[str, ...]
    elements: Mapping[str, Element]
    #: provided name -> the selected element that provides it
    provided: Mapping[str, str]
    #: edges dependency -> dependant over the resolved elements; an edge's ``via`` attribute is
    #: the element-deps entry it comes from (a provided name when that differs from the source)
    graph: nx.DiGraph
    #: the requested names, deduplicated and sorted
    requested: Tuple[str, ...]

    def ordered(self) -> Tuple[Element, ...]:
        return tuple(self.elements[n] for n in self.order)

    def requires(self, name: str) -> Tuple[str, ...]:
        """The resolved elements that ``name`` depends on, by name."""
        return tuple(sorted(self.graph.predecessors(name)))


@dataclass(frozen=True)
class _Closure:
    selected: FrozenSet[str]
    #: provided name -> its providers among ``selected``, sorted
    provided: Mapping[str, Tuple[str, ...]]
    #: dep that is neither an element nor provided -> the selected elements wanting it
    missing: Mapping[str, FrozenSet[str]]


def _closure(wanted: AbstractSet[str], catalogue: Catalogue, excluded: AbstractSet[str]
             ) -> _Closure:
    """Expand ``wanted`` through element-deps, not expanding names already provided.

    ``excluded`` names are treated as if no element had them.
    """
    selected: Set[str] = {n for n in wanted if n in catalogue}
    while True:
        provided: Dict[str, List[str]] = {}
        for name in selected:
            for virtual in catalogue[name].provides:
                provided.setdefault(virtual, []).append(name)
        missing: Dict[str, Set[str]] = {}
        new: Set[str] = set()
        for name in selected:
            for dep in catalogue[name].deps:
                if dep in selected or dep in provided:
                    continue
                if dep in catalogue and dep not in excluded:
                    new.add(dep)
                else:
                    missing.setdefault(dep, set()).add(name)
        if not new:
            return _Closure(frozenset(selected),
                            {k: tuple(sorted(v)) for k, v in provided.items()},
                            {k: frozenset(v) for k, v in missing.items()})
        selected |= new


def _expand(wanted: FrozenSet[str], catalogue: Catalogue) -> _Closure:
    """Steps 1 and 2 of the module docstring: expansion, then shadowing to a fixpoint."""
    excluded: Set[str] = set()
    while True:
        result = _closure(wanted, catalogue, excluded)
        for name in sorted(n for n in result.selected if n in result.provided and n not in wanted):
            if name in _closure(wanted, catalogue, excluded | {name}).provided:
                excluded.add(name)
                break
        else:
            return result


def resolve(requested: Iterable[str], catalogue: Catalogue) -> Resolution:
    """Resolve ``requested`` against ``catalogue``; raise a DibError naming the culprit."""
    wanted = frozenset(requested)
    every_provided = {p for e in catalogue.elements.values() for p in e.provides}
    unknown = sorted(n for n in wanted if n not in catalogue and n not in every_provided)
    if unknown:
        raise _not_found(unknown, [], catalogue)

    result = _expand(wanted, catalogue)
    provided = result.provided
    for virtual, providers in sorted(provided.items()):
        if len(providers) > 1:
            raise AlreadyProvided(
                f"'{virtual}' is provided by more than one element: {', '.join(providers)}",
                hint="an image can hold only one of them; keep one")
    clashes = sorted(n for n in wanted if n in provided)
    if clashes:
        name = clashes[0]
        raise AlreadyProvided(
            f"element '{name}' was requested, but '{provided[name][0]}' already provides it",
            hint=f"drop '{name}' or '{provided[name][0]}' from the element list")
    virtual_only = sorted(n for n in wanted if n not in catalogue)
    if virtual_only:
        name = virtual_only[0]
        raise ElementNotFound(
            f"'{name}' is not an element but a name that other elements provide",
            hint=f"ask for one of: {', '.join(catalogue.providers_of(name))}")
    if result.missing:
        name = sorted(result.missing)[0]
        raise _not_found([name], sorted(result.missing[name]), catalogue)
    if OPERATING_SYSTEM not in provided:
        candidates = catalogue.providers_of(OPERATING_SYSTEM)
        raise MissingOperatingSystem(
            "no element provides 'operating-system': include an operating system element",
            hint=("available: " + ", ".join(candidates)) if candidates
            else "no element on the search path provides it; check ELEMENTS_PATH")

    final = frozenset(n for n in result.selected if n not in provided)
    provider = {k: v[0] for k, v in sorted(provided.items())}
    graph = nx.DiGraph()
    graph.add_nodes_from(sorted(final))
    for name in sorted(final):
        vias: Dict[str, Set[str]] = {}
        for dep in catalogue[name].deps:
            for source in _satisfiers(dep, final, result.selected, provider, catalogue,
                                      frozenset()):
                if source != name:
                    vias.setdefault(source, set()).add(dep)
        for source, deps in sorted(vias.items()):  # a direct dep wins over a provided name
            graph.add_edge(source, name, via=source if source in deps else min(deps))
    order = _deterministic_order(graph)
    return Resolution(order=order, elements={n: catalogue[n] for n in order},
                      provided=provider, graph=graph, requested=tuple(sorted(wanted)))


def _satisfiers(dep: str, final: FrozenSet[str], expanded: FrozenSet[str],
                provider: Mapping[str, str], catalogue: Catalogue, seen: FrozenSet[str]
                ) -> Set[str]:
    """The resolved elements that stand for ``dep``: itself, else its provider, plus -- for an
    expanded alias element -- whatever stands for the alias's own deps."""
    if dep in final:
        return {dep}
    if dep in seen:
        return set()
    seen = seen | {dep}
    out: Set[str] = set()
    if dep in provider:
        out |= _satisfiers(provider[dep], final, expanded, provider, catalogue, seen)
        if dep in expanded:  # an alias: provided, but expanded all the same
            for sub in catalogue[dep].deps:
                out |= _satisfiers(sub, final, expanded, provider, catalogue, seen)
    return out


def _deterministic_order(graph: nx.DiGraph) -> Tuple[str, ...]:
    """Topological order, ties by name; a cycle stays together, sorted by name."""
    condensed = nx.condensation(graph)
    comps: Dict[int, List[str]] = {}
    for node, comp in condensed.graph["mapping"].items():
        comps.setdefault(comp, []).append(node)
    order: List[str] = []
    for comp in nx.lexicographical_topological_sort(condensed, key=lambda c: min(comps[c])):
        members = sorted(comps[comp])
        if len(members) > 1:
            cycle = nx.find_cycle(graph.subgraph(members).reverse(copy=False))
            log.debug("dependency cycle (accepted, as diskimage-builder does): %s",
                      " -> ".join([cycle[0][0]] + [v for _, v in cycle]))
        order.extend(members)
    return tuple(order)


def _not_found(names: List[str], wanted_by: List[str], catalogue: Catalogue) -> ElementNotFound:
    """ElementNotFound for ``names``; the hint gives close matches and the searched paths."""
    searched = "searched: " + (":".join(str(p) for p in catalogue.search_path) or "(nothing)")
    if len(names) == 1 and catalogue.providers_of(names[0]):
        return ElementNotFound(
            f"nothing selected provides '{names[0]}'" + _wanted_by(wanted_by),
            hint=f"add an element that provides it: {', '.join(catalogue.providers_of(names[0]))}")
    known = list(catalogue.names()) + sorted({p for e in catalogue.elements.values()
                                              for p in e.provides})
    guesses = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=3)
        if close:
            guesses.append(f"{name}: did you mean {', '.join(close)}?" if len(names) > 1
                           else f"did you mean {', '.join(close)}?")
    hint = "; ".join(guesses + [searched + " (to use an element from elsewhere, add the "
                                "directory that holds it to ELEMENTS_PATH, colon separated)"])
    if len(names) == 1:
        return ElementNotFound(f"element '{names[0]}' not found" + _wanted_by(wanted_by),
                               hint=hint)
    return ElementNotFound("elements not found: " + ", ".join(f"'{n}'" for n in names),
                           hint=hint)


def _wanted_by(names: List[str]) -> str:
    if not names:
        return ""
    return f" (in the element-deps of {', '.join(repr(n) for n in names)})"


def implicit_elements(requested: Iterable[str], *, skip_base: bool, arch: str) -> List[str]:
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

def _single_quoted(text: str) -> str:
    """``text`` for the inside of a shell '...' string (a no-op unless it holds a quote)."""
    return text.replace("'", "'\\''")


def _double_quoted(text: str) -> str:
    """``text`` for the inside of a shell "..." string."""
    for ch in ("\\", '"', "$", "`"):
        text = text.replace(ch, "\\" + ch)
    return text


def env_exports(res: Resolution) -> str:
    """The shell text ``element-info --env`` prints, in diskimage-builder's exact format.

    ``IMAGE_ELEMENT`` lists the names (in resolution order, where dib's order is arbitrary),
    ``IMAGE_ELEMENT_YAML`` maps names to paths (sorted YAML, as dib), and the exported function
    ``get_image_element_array`` echoes ``[name]=path `` pairs for
    ``eval declare -A arr=($(get_image_element_array))``.
    """
    paths = {n: str(res.elements[n].path) for n in res.order}
    image_yaml = yaml.safe_dump(paths)
    array = "".join(f"[{n}]={p} " for n, p in paths.items())
    return (f"export IMAGE_ELEMENT='{_single_quoted(' '.join(res.order))}'\n"
            f"export IMAGE_ELEMENT_YAML='{_single_quoted(image_yaml)}'\n"
            "function get_image_element_array {\n"
            f"  echo \"{_double_quoted(array)}\"\n"
            "};\n"
            "export -f get_image_element_array;\n")


def _dot_id(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(res: Resolution) -> str:
    """The resolved graph in DOT. An edge points from an element to one it depends on; an edge
    that goes through a provided name is dashed and labelled with that name. Requested
    elements are bold."""
    lines = ["// an edge A -> B: element A depends on element B",
             "digraph elements {", "  rankdir=LR;", "  node [shape=box];"]
    for name in res.order:
        attrs = " [style=bold]" if name in res.requested else ""
        lines.append(f"  {_dot_id(name)}{attrs};")
    for name in res.order:
        for dep in res.requires(name):
            via = res.graph.edges[dep, name]["via"]
            attrs = "" if via == dep else f" [style=dashed, label={_dot_id(via)}]"
            lines.append(f"  {_dot_id(name)} -> {_dot_id(dep)}{attrs};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_data(res: Resolution) -> Dict[str, object]:
    """The resolution as plain data (what ``element-info --json`` prints)."""
    return {
        "requested": list(res.requested),
        "order": list(res.order),
        "provided": dict(res.provided),
        "elements": [
            {"name": e.name, "path": str(e.path), "deps": list(e.deps),
             "provides": list(e.provides), "requires": list(res.requires(e.name))}
            for e in res.ordered()],
    }


def to_json(res: Resolution) -> str:
    return json.dumps(to_data(res), indent=2) + "\n"
