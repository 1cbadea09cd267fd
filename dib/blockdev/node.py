"""Shared pieces of the node specs: reading one YAML node's keys, and derived identifiers.

Every plugin module (loop, partition, mkfs, mount, fstab) turns the keys of one node into a
frozen spec dataclass. :class:`Fields` does the tedious part the same way for all of them:
unknown keys are refused (a typo such as ``mount-point`` must not silently fall back to a
default), and every error is a :class:`~dib.errors.ConfigError` that names the node and key.

Identifiers that dib generates randomly (filesystem UUIDs, disk ids) are derived instead with
:func:`derive_uuid`, from the node name and :attr:`Params.uuid_seed`, so that the same config
and seed always give byte-identical partition tables and superblock ids.
"""
from __future__ import annotations

import uuid
from typing import Any, Callable, Iterable, Mapping, Optional, TypeVar

from dib.errors import ConfigError

T = TypeVar("T")

#: Namespace of every UUID this package derives.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_OID, "dib.blockdev")


def derive_uuid(seed: str, kind: str, name: str) -> uuid.UUID:
    """A stable UUID for ``kind`` (``fs``, ``disk``, ``part``) of node ``name``."""
    return uuid.uuid5(_NAMESPACE, f"{seed}\0{kind}\0{name}")


def node_error(name: str, message: str, key: Optional[str] = None,
               hint: Optional[str] = None) -> ConfigError:
    where = f"node '{name}'" + (f", key '{key}'" if key else "")
    return ConfigError(f"block-device {where}: {message}", hint)


class Fields:
    """The keys of one node, checked against the keys its plugin knows."""

    def __init__(self, plugin: str, name: str, body: Mapping[str, Any],
                 allowed: Iterable[str]) -> None:
        self.plugin = plugin
        self.name = name
        self.body = body
        known = set(allowed) | {"name", "base"}
        unknown = sorted(str(k) for k in body if k not in known)
        if unknown:
            raise self.error(f"unknown key(s) {', '.join(repr(k) for k in unknown)} for "
                             f"{plugin}", hint="known keys: " + ", ".join(sorted(known)))

    def error(self, message: str, key: Optional[str] = None,
              hint: Optional[str] = None) -> ConfigError:
        return node_error(self.name, message, key, hint)

    def has(self, key: str) -> bool:
        return self.body.get(key) is not None

    def required(self, key: str) -> Any:
        if not self.has(key):
            raise self.error(f"missing required key '{key}' for {self.plugin}", key)
        return self.body[key]

    def text(self, key: str, default: Optional[str] = None) -> Optional[str]:
        value = self.body.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.error(f"must be a string, not {value!r}", key)
        return str(value)

    def integer(self, key: str, default: int) -> int:
        value = self.body.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.error(f"must be a non-negative integer, not {value!r}", key)
        return value

    def convert(self, key: str, parse: Callable[[Any], T]) -> T:
        """``parse(value)``; its ValueError becomes a ConfigError naming node and key."""
        try:
            return parse(self.body[key])
        except ValueError as exc:
            raise self.error(str(exc), key) from None
