"""Block-device YAML → validated node specs → a deterministic creation order.

The format is diskimage-builder's: a YAML list of one-key mappings ``{plugin: {...}}``.

* **Graph notation**: each node names its parent with ``base``.
* **Tree notation**: a plugin key nested in a node (or in a ``partitions`` entry) is a child
  whose ``base`` is the parent's name; an unnamed node is called ``<plugin>_<base>``, e.g.
  ``mkfs_root`` → ``mount_mkfs_root`` → ``fstab_mount_mkfs_root``. Both notations mix.

:func:`load_config` flattens the tree, parses every node into a frozen spec (each plugin
module owns its spec and parser), checks the nodes against each other (bases exist and have
the right kind, one consumer per device, unique names, mount points and labels, partitions
that fit) and orders them with networkx. ``lexicographical_topological_sort`` makes the order
a function of the config alone, so logs and images reproduce. Mount points additionally form
a chain of edges, parents first, which fixes the mount and unmount order.

Every problem is a :class:`~dib.errors.ConfigError` naming the node and key. Nothing here
touches the system, so it all runs without root.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import networkx as nx
import yaml

from dib.blockdev import fstab, loop, mkfs, mount, partition
from dib.blockdev.fstab import FstabSpec
from dib.blockdev.loop import LoopSpec
from dib.blockdev.mkfs import MkfsSpec
from dib.blockdev.mount import MountSpec
from dib.blockdev.node import node_error
from dib.blockdev.params import Params
from dib.blockdev.partition import PartitioningSpec, PartitionSpec
from dib.errors import ConfigError, NotYetSupported

Spec = Union[LoopSpec, PartitioningSpec, PartitionSpec, MkfsSpec, MountSpec, FstabSpec]
Parser = Callable[[str, Mapping[str, Any], Params], Spec]


def _lvm(name: str, body: Mapping[str, Any], params: Params) -> Spec:
    raise NotYetSupported(f"block-device node '{name}': lvm is not supported yet",
                          hint="use plain partitions (block-device-mbr, -gpt or -efi)")


#: The plugins, by the YAML key that introduces them.
PLUGINS: Dict[str, Parser] = {
    "local_loop": loop.parse,
    "partitioning": partition.parse,
    "mkfs": mkfs.parse,
    "mount": mount.parse,
    "fstab": fstab.parse,
    "lvm": _lvm,
}

#: Which kinds of node each kind may sit on.
_BASE_KINDS: Dict[type, Tuple[type, ...]] = {
    PartitioningSpec: (LoopSpec,),
    MkfsSpec: (LoopSpec, PartitionSpec),
    MountSpec: (MkfsSpec,),
    FstabSpec: (MountSpec, MkfsSpec),
}

DEFAULT_CONFIG = """\
# dib's built-in fallback: one filesystem on the whole image, no partition table.
- local_loop:
    name: image0

- mkfs:
    name: mkfs_root
    base: image0
    mount:
      mount_point: /
      fstab:
        options: defaults
        fsck-passno: 1
"""


def default_config_text() -> str:
    """The config used when neither DIB_BLOCK_DEVICE_CONFIG nor an element gives one."""
    return DEFAULT_CONFIG


@dataclass(frozen=True)
class Config:
    """A validated block-device config. ``specs`` keep their YAML order, ``order`` is the
    creation order (names), ``edges`` the dependency graph."""

    specs: Tuple[Spec, ...]
    order: Tuple[str, ...]
    edges: Tuple[Tuple[str, str], ...]

    def node(self, name: str) -> Spec:
        for spec in self.specs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def ordered(self) -> Tuple[Spec, ...]:
        by_name = {s.name: s for s in self.specs}
        return tuple(by_name[n] for n in self.order)

    def graph(self) -> nx.DiGraph[str]:
        graph: nx.DiGraph[str] = nx.DiGraph()
        graph.add_nodes_from(s.name for s in self.specs)
        graph.add_edges_from(self.edges)
        return graph

    @property
    def loops(self) -> Tuple[LoopSpec, ...]:
        return tuple(s for s in self.specs if isinstance(s, LoopSpec))

    def mounts(self) -> Tuple[MountSpec, ...]:
        """Mount nodes in mount order (parents first)."""
        found = [s for s in self.specs if isinstance(s, MountSpec)]
        return tuple(sorted(found, key=lambda m: mount.order_key(m.mount_point)))

    def filesystem(self, spec: Union[MountSpec, MkfsSpec]) -> MkfsSpec:
        fs = spec if isinstance(spec, MkfsSpec) else self.node(spec.base)
        assert isinstance(fs, MkfsSpec)
        return fs

    @property
    def root_filesystem(self) -> Optional[MkfsSpec]:
        for m in self.mounts():
            if m.mount_point == "/":
                return self.filesystem(m)
        root = [s for s in self.specs if isinstance(s, MkfsSpec) and s.name == mkfs.ROOT_NODE]
        return root[0] if root else None

    def fstab(self) -> str:
        """fstab text: one line per fstab node, in mount order, swap last."""
        lines: List[str] = []
        tabs = {s.base: s for s in self.specs if isinstance(s, FstabSpec)}
        for m in self.mounts():
            if m.name in tabs:
                fs = self.filesystem(m)
                lines.append(fstab.line(tabs[m.name], fs.label, fs.uuid, m.mount_point,
                                        fs.type))
        for s in self.specs:
            if isinstance(s, MkfsSpec) and s.type == "swap" and s.name in tabs:
                lines.append(fstab.line(tabs[s.name], s.label, s.uuid, None, "swap"))
        return "".join(line + "\n" for line in lines)


# -- loading -----------------------------------------------------------------------------------

def load_config(text: str, params: Params) -> Config:
    """Parse, validate and order a block-device config. Raises ConfigError."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"the block-device config is not valid YAML: {exc}") from None
    if not isinstance(data, list) or not data:
        raise ConfigError("the block-device config must be a non-empty YAML list of "
                          "{plugin: {...}} entries", hint=_plugins_hint())
    flat: List[Tuple[str, Dict[str, Any]]] = []
    for index, entry in enumerate(data, start=1):
        flat.extend(_flatten(entry, None, index))
    specs: List[Spec] = []
    names: Dict[str, str] = {}
    for plugin, body in flat:
        spec = PLUGINS[plugin](body["name"], body, params)
        members = spec.partitions if isinstance(spec, PartitioningSpec) else ()
        for item in (spec, *members):
            if item.name in names:
                raise node_error(item.name, f"duplicate node name (a {item.plugin} and a "
                                 f"{names[item.name]} are both called '{item.name}')", "name")
            names[item.name] = item.plugin
            specs.append(item)
    _check(specs, params)
    edges = _edges(specs)
    graph: nx.DiGraph[str] = nx.DiGraph()
    graph.add_nodes_from(s.name for s in specs)
    graph.add_edges_from(edges)
    if not nx.is_directed_acyclic_graph(graph):
        cycle = " -> ".join(a for a, _ in nx.find_cycle(graph))
        raise ConfigError(f"the block-device config has a cycle: {cycle}")
    order = tuple(nx.lexicographical_topological_sort(graph))
    return Config(tuple(specs), order, tuple(edges))


def _plugins_hint() -> str:
    return "known plugins: " + ", ".join(sorted(PLUGINS))


def _flatten(entry: Any, parent: Optional[str], index: int) -> List[Tuple[str, Dict[str, Any]]]:
    """Tree notation → graph notation: [(plugin, body with name and base)], parents first."""
    where = f"block-device entry #{index}"
    if not isinstance(entry, dict) or len(entry) != 1:
        raise ConfigError(f"{where}: every entry must be a single-key mapping "
                          f"{{plugin: {{...}}}}, not {entry!r}", hint=_plugins_hint())
    ((plugin, body),) = entry.items()
    body = {} if body is None else body
    if plugin not in PLUGINS:
        who = (f"block-device node '{body['name']}'"
               if isinstance(body, dict) and "name" in body else where)
        raise ConfigError(f"{who}: '{plugin}' is not a block-device plugin",
                          hint=_plugins_hint())
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: the value of '{plugin}' must be a mapping, "
                          f"not {body!r}")
    base = body.get("base", parent)
    name = body.get("name")
    if name is None:
        if base is None:
            key = "name" if plugin == "local_loop" else "base"
            raise ConfigError(f"{where} ({plugin}): missing required key '{key}'")
        name = f"{plugin}_{base}"
    if isinstance(name, bool) or not isinstance(name, (str, int)) or not str(name) \
            or "/" in str(name):
        raise ConfigError(f"{where} ({plugin}): name {name!r} must be a non-empty string "
                          "without '/'")
    node: Dict[str, Any] = {"name": str(name)}
    if base is not None:
        node["base"] = str(base)
    children: List[Tuple[str, Dict[str, Any]]] = []
    for key, value in body.items():
        if key in ("name", "base"):
            continue
        if key in PLUGINS:
            children.extend(_flatten({key: value}, node["name"], index))
        elif key == "partitions" and plugin == "partitioning" and isinstance(value, list):
            node[key] = [_flatten_partition(p, node["name"], index, children)
                         for p in value]
        else:
            node[key] = value
    return [(plugin, node), *children]


def _flatten_partition(part: Any, table: str, index: int,
                       children: List[Tuple[str, Dict[str, Any]]]) -> Any:
    if not isinstance(part, dict):
        return part     # partition.parse reports it
    kept = {k: v for k, v in part.items() if k not in PLUGINS}
    for key, value in part.items():
        if key in PLUGINS:
            if not part.get("name"):
                raise node_error(table, "a partition with children needs a 'name'",
                                 "partitions")
            children.extend(_flatten({key: value}, str(part["name"]), index))
    return kept


def _check(specs: List[Spec], params: Params) -> None:
    by_name = {s.name: s for s in specs}
    if not any(isinstance(s, LoopSpec) for s in specs):
        raise ConfigError("the block-device config has no local_loop node",
                          hint="the image needs a local_loop (e.g. named image0)")
    consumer: Dict[str, str] = {}
    mount_points: Dict[str, str] = {}
    labels: Dict[str, str] = {}
    for spec in specs:
        if isinstance(spec, (LoopSpec, PartitionSpec)):
            continue
        base = by_name.get(spec.base)
        if base is None:
            raise node_error(spec.name, f"base '{spec.base}' is not defined", "base")
        kinds = _BASE_KINDS[type(spec)]
        swap_base = isinstance(base, MkfsSpec) and base.type == "swap"
        if not isinstance(base, kinds) or (isinstance(spec, MountSpec) and swap_base) \
                or (isinstance(spec, FstabSpec) and isinstance(base, MkfsSpec)
                    and not swap_base):
            raise node_error(spec.name, f"base '{spec.base}' is {_kind(base)}, but "
                             f"{_a(spec.plugin)} node needs {_needs(spec)}", "base")
        if spec.base in consumer:
            raise node_error(spec.name, f"base '{spec.base}' is already used by "
                             f"'{consumer[spec.base]}'", "base")
        consumer[spec.base] = spec.name
        if isinstance(spec, MountSpec):
            if spec.mount_point in mount_points:
                raise node_error(spec.name, f"mount point '{spec.mount_point}' is also "
                                 f"used by '{mount_points[spec.mount_point]}'", "mount_point")
            mount_points[spec.mount_point] = spec.name
        if isinstance(spec, MkfsSpec):
            if spec.label in labels:
                raise node_error(spec.name, f"label '{spec.label}' is also used by "
                                 f"'{labels[spec.label]}'", "label")
            labels[spec.label] = spec.name
        if isinstance(spec, PartitioningSpec):
            disk = by_name[spec.base]
            assert isinstance(disk, LoopSpec)
            size = disk.image_size(params)
            if size is not None:
                partition.plan(spec, size, disk.sector_size(params), disk.name)


def _a(word: str) -> str:
    return ("an " if word[0] in "aefhilmnorsx" else "a ") + word


def _kind(spec: Spec) -> str:
    if isinstance(spec, MkfsSpec) and spec.type == "swap":
        return "a swap mkfs"
    return _a(spec.plugin)


def _needs(spec: Spec) -> str:
    return {PartitioningSpec: "a local_loop", MkfsSpec: "a local_loop or a partition",
            MountSpec: "a (non-swap) mkfs", FstabSpec: "a mount (or a swap mkfs)"}[type(spec)]


def _edges(specs: List[Spec]) -> List[Tuple[str, str]]:
    edges = [(s.base, s.name) for s in specs if s.base is not None]
    mounts = sorted((s for s in specs if isinstance(s, MountSpec)),
                    key=lambda m: mount.order_key(m.mount_point))
    edges += [(a.name, b.name) for a, b in zip(mounts, mounts[1:])]
    return edges
