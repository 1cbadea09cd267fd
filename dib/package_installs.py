"""package-installs: declarative packages, parsed on the build host into plain lists.

Each element may ship ``package-installs.yaml`` (or ``.json``): a mapping of package name to
``null``, a dict, or a list of dicts. The keys of a dict:

``phase``        pre-install.d, install.d (default) or post-install.d
``uninstall``    true: remove the package in that phase
``build-only``   true: install it, then remove it at the end of the same phase
``installtype``  only when the element's install type (DIB_INSTALLTYPE_<element>, else
                 DIB_DEFAULT_INSTALLTYPE) is this
``arch``         comma list (or YAML list) of architectures to install on
``not-arch``     ... to skip (never together with ``arch``)
``when``         ``VAR=value`` / ``VAR!=value``, or a list of them (all must hold); an unset
                 VAR is an error naming element, package and variable
``dib_python_version``  accepted for dib compatibility (matched against
                 DIB_PYTHON_VERSION, default 3)

Unlike dib: only the winning copy of an element on ELEMENTS_PATH is read (dib merges every
copy), arch lists are stripped of spaces (dib's ``not-arch: ppc64, ppc64le`` bug), malformed
entries are errors that name the element and key, and filters apply before the
install/uninstall bookkeeping.

``python -m dib.package_installs`` (run by the package-installs element in extra-data.d)
reads ``$TMP_HOOKS_PATH/dib-elements.json``, maps every package through its element's pkg-map
and writes ``$TMP_HOOKS_PATH/dib-package-installs/<phase>.install`` / ``.uninstall``: one
``package<TAB>element<TAB>generic name`` line each, read by bash hooks in the chroot.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from dib import pkgmap
from dib.errors import ConfigError, DibError
from dib.log import helper_main

log = logging.getLogger("dib.package_installs")

PHASES = ("pre-install.d", "install.d", "post-install.d")
KEYS = {"phase", "uninstall", "build-only", "installtype", "arch", "not-arch", "when",
        "dib_python_version"}
OUT_DIR = "dib-package-installs"
PKG_MAP_DIR = "dib-pkg-map"
_WHEN = re.compile(r"^\s*(?P<var>\w+)\s*(?P<op>!=|=)\s*(?P<val>.*?)\s*$")


class PackageInstallsError(ConfigError):
    pass


@dataclass(frozen=True)
class Spec:
    """One dict of one package of one element, validated."""

    element: str
    package: str
    phase: str = "install.d"
    uninstall: bool = False
    build_only: bool = False
    installtype: Optional[str] = None
    arch: Optional[Tuple[str, ...]] = None
    not_arch: Optional[Tuple[str, ...]] = None
    when: Tuple[Tuple[str, str, str], ...] = ()
    python_version: Optional[str] = None


@dataclass
class Lists:
    """phase -> ordered [(package, element)] to install / uninstall (generic names)."""

    install: Dict[str, List[Tuple[str, str]]]
    uninstall: Dict[str, List[Tuple[str, str]]]

    @classmethod
    def empty(cls) -> "Lists":
        return cls({p: [] for p in PHASES}, {p: [] for p in PHASES})


# -- parsing ---------------------------------------------------------------------------------

def _err(element: str, package: Optional[str], msg: str,
         hint: Optional[str] = None) -> PackageInstallsError:
    where = f"element '{element}'" + (f", package '{package}'" if package else "")
    return PackageInstallsError(f"package-installs: {where}: {msg}", hint=hint)


def _arch_list(value: object, element: str, package: str, key: str) -> Tuple[str, ...]:
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = value
    else:
        raise _err(element, package, f"'{key}' must be a comma separated string or a list "
                                     f"of architectures, not {value!r}")
    out = tuple(i.strip() for i in items if i.strip())
    if not out:
        raise _err(element, package, f"'{key}' is empty")
    return out


def _bool(value: object, element: str, package: str, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "false", "no",
                                                            "0"):
        return value.strip().lower() in ("true", "yes", "1")
    raise _err(element, package, f"'{key}' must be true or false, not {value!r}")


def _when(value: object, element: str, package: str) -> Tuple[Tuple[str, str, str], ...]:
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        m = _WHEN.match(item) if isinstance(item, str) else None
        if not m:
            raise _err(element, package, f"malformed 'when' condition {item!r}",
                       hint="use VAR=value or VAR!=value, or a list of them")
        out.append((m.group("var"), m.group("op"), m.group("val")))
    return tuple(out)


def parse(data: Any, element: str) -> List[Spec]:
    """Validate one element's package-installs document into Specs."""
    if data is None:
        return []
    if not isinstance(data, dict):
        raise _err(element, None, "package-installs must be a mapping of package names, "
                                  f"not {type(data).__name__}")
    specs: List[Spec] = []
    for package, params in data.items():
        package = str(package)
        if params is None or params == {}:
            params = [{}]
        elif isinstance(params, dict):
            params = [params]
        elif not (isinstance(params, list) and all(isinstance(p, dict) for p in params)):
            raise _err(element, package, "the value must be empty, a mapping or a list of "
                                         f"mappings, not {params!r}")
        for p in params:
            unknown = sorted(set(p) - KEYS)
            if unknown:
                raise _err(element, package, f"unknown key(s) {', '.join(map(repr, unknown))}",
                           hint="valid keys: " + ", ".join(sorted(KEYS)))
            phase = p.get("phase", "install.d")
            if phase not in PHASES:
                raise _err(element, package, f"'phase' must be one of {', '.join(PHASES)}, "
                                             f"not {phase!r}")
            if p.get("arch") is not None and p.get("not-arch") is not None:
                raise _err(element, package, "'arch' and 'not-arch' cannot both be given")
            specs.append(Spec(
                element=element, package=package, phase=phase,
                uninstall=_bool(p.get("uninstall", False), element, package, "uninstall"),
                build_only=_bool(p.get("build-only", False), element, package, "build-only"),
                installtype=str(p["installtype"]) if p.get("installtype") is not None else None,
                arch=_arch_list(p["arch"], element, package, "arch")
                if p.get("arch") is not None else None,
                not_arch=_arch_list(p["not-arch"], element, package, "not-arch")
                if p.get("not-arch") is not None else None,
                when=_when(p["when"], element, package) if p.get("when") is not None else (),
                python_version=str(p["dib_python_version"])
                if p.get("dib_python_version") is not None else None,
            ))
    return specs


def load_file(element_dir: Path, element: str) -> List[Spec]:
    """The element's package-installs.yaml/.json (both, if both exist) plus the deprecated
    ``<phase>/package-installs-<element>`` plain lists."""
    specs: List[Spec] = []
    for name in ("package-installs.json", "package-installs.yaml"):
        path = element_dir / name
        if not path.is_file():
            continue
        try:
            text = path.read_text()
            data = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise _err(element, None, f"{path} does not parse: {exc}") from None
        specs += parse(data, element)
    for phase in PHASES:
        legacy = element_dir / phase / f"package-installs-{element}"
        if legacy.is_file():
            for line in legacy.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                remove = line.startswith("-")
                specs.append(Spec(element, line.lstrip("-").strip(), phase, uninstall=remove))
    return specs


# -- evaluation ------------------------------------------------------------------------------

def installtype_of(element: str, env: Mapping[str, str]) -> str:
    default = env.get("DIB_DEFAULT_INSTALLTYPE") or "source"
    return env.get("DIB_INSTALLTYPE_" + element.replace("-", "_")) or default


def applies(spec: Spec, env: Mapping[str, str]) -> bool:
    """Do arch, installtype, python version and ``when`` let this spec through?"""
    arch = env.get("ARCH", "")
    if spec.arch is not None and arch not in spec.arch:
        return False
    if spec.not_arch is not None and arch in spec.not_arch:
        return False
    if spec.installtype is not None and spec.installtype != installtype_of(spec.element, env):
        return False
    if spec.python_version is not None and \
            spec.python_version != (env.get("DIB_PYTHON_VERSION") or "3"):
        return False
    for var, op, val in spec.when:
        if var not in env:
            raise _err(spec.element, spec.package,
                       f"'when' uses the variable {var}, which is not set",
                       hint=f"export {var} (e.g. with a default in the element's "
                            "environment.d)")
        if (env[var] == val) != (op == "="):
            return False
    return True


def collect(specs_by_element: Sequence[Tuple[str, Sequence[Spec]]],
            env: Mapping[str, str]) -> Lists:
    """dib's squash: per phase, what to install and what to remove, in element order."""
    out = Lists.empty()
    for _element, specs in specs_by_element:
        for s in specs:
            if not applies(s, env):
                continue
            inst, uninst = out.install[s.phase], out.uninstall[s.phase]
            key = (s.package, s.element)
            if s.uninstall or s.build_only:
                wanted = any(p == s.package for p, _ in inst) and \
                    not any(p == s.package for p, _ in uninst)
                if wanted:
                    # someone installs it for good: keep it (a build-only still installs)
                    if s.build_only and key not in inst:
                        inst.append(key)
                    continue
                if s.build_only and key not in inst:
                    inst.append(key)
                if key not in uninst:
                    uninst.append(key)
            else:
                out.uninstall[s.phase] = [x for x in uninst if x[0] != s.package]
                if key not in inst:
                    inst.append(key)
    return out


def mapped(entries: Sequence[Tuple[str, str]], maps: Mapping[str, Mapping[str, str]],
           ) -> List[Tuple[str, str, str]]:
    """(distro package, element, generic name), each element through its own pkg-map."""
    out: List[Tuple[str, str, str]] = []
    seen = set()
    for generic, element in entries:
        for pkg in pkgmap.map_names(maps.get(element), [generic], element=element):
            if pkg not in seen:
                seen.add(pkg)
                out.append((pkg, element, generic))
    return out


# -- the host-side step --------------------------------------------------------------------

def read_elements(hooks: Path) -> List[Tuple[str, Path]]:
    """The resolved elements and their winning paths, as the engine wrote them."""
    path = hooks / "dib-elements.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DibError(f"cannot read the element list {path}: {exc}") from None
    return [(e["name"], Path(e["path"])) for e in data]


def load_maps(elements: Sequence[Tuple[str, Path]], env: Mapping[str, str],
              ) -> Dict[str, Dict[str, str]]:
    distro, release = env.get("DISTRO_NAME", ""), env.get("DIB_RELEASE", "")
    maps = {}
    for name, path in elements:
        f = path / "pkg-map"
        if f.is_file():
            maps[name] = pkgmap.resolve(pkgmap.load(f, name), distro, release, name)
    return maps


def write_pkg_maps(hooks: Path, maps: Mapping[str, Mapping[str, str]]) -> None:
    d = hooks / PKG_MAP_DIR
    d.mkdir(exist_ok=True)
    for name, mapping in maps.items():
        (d / name).write_text(pkgmap.flatten(mapping))


def write_lists(hooks: Path, lists: Lists, maps: Mapping[str, Mapping[str, str]]) -> Path:
    d = hooks / OUT_DIR
    d.mkdir(exist_ok=True)
    for phase in PHASES:
        for kind, entries in (("install", lists.install[phase]),
                              ("uninstall", lists.uninstall[phase])):
            rows = mapped(entries, maps)
            (d / f"{phase}.{kind}").write_text("".join(f"{p}\t{e}\t{g}\n" for p, e, g in rows))
    return d


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dib.package_installs",
                                 description="Write the per-phase package lists of the "
                                             "resolved element set (package-installs)")
    ap.add_argument("--hooks", default=os.environ.get("TMP_HOOKS_PATH"),
                    help="the hooks tree (default $TMP_HOOKS_PATH)")
    ap.add_argument("--pkg-map-only", action="store_true",
                    help="only flatten the pkg-map files (the pkg-map element's step)")
    args = ap.parse_args(argv)

    def body() -> int:
        if not args.hooks:
            raise DibError("TMP_HOOKS_PATH is not set and --hooks not given")
        hooks = Path(args.hooks)
        env = dict(os.environ)
        elements = read_elements(hooks)
        maps = load_maps(elements, env)
        write_pkg_maps(hooks, maps)
        if args.pkg_map_only:
            return 0
        specs = [(name, load_file(path, name)) for name, path in elements]
        lists = collect(specs, env)
        out = write_lists(hooks, lists, maps)
        for phase in PHASES:
            for kind in ("install", "uninstall"):
                text = (out / f"{phase}.{kind}").read_text()
                pkgs = [line.split("\t")[0] for line in text.splitlines()]
                if pkgs:
                    log.info("package-installs %s %s: %s", phase, kind, " ".join(pkgs))
        return 0

    return helper_main(body)


if __name__ == "__main__":
    sys.exit(main())
