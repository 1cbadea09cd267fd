"""pkg-map: an element's generic package names mapped to the build's distribution.

A pkg-map file is JSON with up to four sections; the most specific wins::

    {"release": {"<distro>": {"<release>": {name: pkg}}},
     "distro":  {"<distro>": {name: pkg}},
     "family":  {"<family>": {name: pkg}},
     "default": {name: pkg}}

A value may name several packages separated by spaces; the empty string means "install
nothing". Resolution happens on the build host, once: :func:`flatten` turns an element's map
into a plain ``name<TAB>packages`` text file that the in-image ``pkg-map`` and
``install-packages -m`` (bash) read -- no Python inside the image.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from dib.errors import ConfigError

FAMILIES = {
    "debian": "debian", "ubuntu": "debian",
    "fedora": "redhat", "rhel": "redhat", "centos": "redhat", "almalinux": "redhat",
    "rocky": "redhat", "openeuler": "redhat",
    "opensuse": "suse", "gentoo": "gentoo",
}
SECTIONS = ("release", "distro", "family", "default")


class PkgMapError(ConfigError):
    pass


def os_family(distro: str) -> Optional[str]:
    return FAMILIES.get(distro)


def load(path: Path, element: str) -> Mapping[str, Any]:
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise PkgMapError(f"element '{element}': pkg-map {path} is not valid JSON: {exc}") \
            from None
    if not isinstance(data, dict):
        raise PkgMapError(f"element '{element}': pkg-map {path} must be a JSON object")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise PkgMapError(f"element '{element}': pkg-map has unknown section(s) "
                          f"{', '.join(unknown)}", hint="sections: " + ", ".join(SECTIONS))
    return data


def resolve(data: Mapping[str, Any], distro: str, release: str,
            element: str = "?") -> Dict[str, str]:
    """The effective ``name -> packages`` map for ``distro``/``release``."""
    def section(value: object, where: str) -> Dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise PkgMapError(f"element '{element}': pkg-map {where} must be an object")
        out = {}
        for k, v in value.items():
            if v is None:
                v = ""
            if not isinstance(v, str):
                raise PkgMapError(f"element '{element}': pkg-map {where}.{k} must be a "
                                  f"string, not {type(v).__name__}")
            out[str(k)] = v
        return out

    result = section(data.get("default"), "default")
    family = os_family(distro)
    if family:
        result.update(section((data.get("family") or {}).get(family), f"family.{family}"))
    result.update(section((data.get("distro") or {}).get(distro), f"distro.{distro}"))
    rel = ((data.get("release") or {}).get(distro) or {})
    if isinstance(rel, dict) and release in rel:
        result.update(section(rel[release], f"release.{distro}.{release}"))
    return result


def map_names(mapping: Optional[Mapping[str, str]], names: Sequence[str], *,
              missing_ok: bool = True, element: str = "?") -> List[str]:
    """Map ``names``; an unmapped name passes through (or is an error without
    ``missing_ok``), an empty mapping drops the name, a value with spaces gives several."""
    out: List[str] = []
    for name in names:
        if mapping is not None and name in mapping:
            out.extend(mapping[name].split())
        elif mapping is None or missing_ok:
            out.append(name)
        else:
            raise PkgMapError(f"element '{element}' has no pkg-map entry for package "
                              f"'{name}'")
    return out


def flatten(mapping: Mapping[str, str]) -> str:
    """``name<TAB>packages`` lines, sorted: what the in-image tools read."""
    return "".join(f"{k}\t{' '.join(v.split())}\n" for k, v in sorted(mapping.items()))
