"""The build manifest (``<image>.d/manifest.json``) and the software bill of materials
(``<image>.d/sbom.cdx.json``, CycloneDX 1.5 JSON).

The manifest records what made the image: dib's version, the command line, the resolved
elements with their paths and content hashes, the ``DIB_*`` settings (values of names that
look secret -- PASSWORD, SECRET, TOKEN, KEY -- and credentials in URLs are redacted), the
installed packages, the outputs with their sizes and sha256, the timings and what came from
the cache.

Packages are read from the final tree's dpkg database on the host (``dpkg-query
--admindir=<tree>/var/lib/dpkg -W``): nothing runs inside the image.

``python -m dib.outputs.manifest in-image TREE`` is what the ``manifests`` element runs to
put the same information (less what is only known after the image is written) into
``/etc/dib-manifests`` inside the image, as diskimage-builder's manifests element does.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import quote

if TYPE_CHECKING:  # pragma: no cover
    from dib.cache import ArtifactCache
    from dib.outputs.base import Run

log = logging.getLogger("dib.outputs")

#: variable names whose values never appear in a manifest
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY", re.IGNORECASE)
REDACTED = "<redacted>"
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")

#: variables dib itself sets for hooks; not settings of the caller
INTERNAL_VARS = {"DIB_ARGS", "DIB_ENV", "DIB_PYTHON_EXEC", "DIB_ENGINE_PYTHON",
                 "DIB_IMAGE_CACHE", "DIB_LOCKFILES", "DIB_CHROOT_CACHE",
                 "DIB_BLOCK_DEVICE_PARAMS_YAML"}

DPKG_FORMAT = ("${Package}\\t${Version}\\t${Architecture}\\t${db:Status-Abbrev}\\t"
               "${source:Package}\\t${source:Version}\\t${Installed-Size}\\n")
MANIFEST_VERSION = 1


def redact_value(value: str) -> str:
    """``scheme://user:pass@host`` -> ``scheme://<redacted>@host``."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", value)


def redact_env(env: Mapping[str, str], prefix: str = "DIB_") -> Dict[str, str]:
    """The ``DIB_*`` settings, sorted, with secret-looking names' values redacted."""
    out = {}
    for name in sorted(env):
        if not name.startswith(prefix) or name in INTERNAL_VARS:
            continue
        value = env[name]
        out[name] = REDACTED if SECRET_NAME.search(name) and value else redact_value(value)
    return out


def redact_argv(argv: Sequence[str]) -> List[str]:
    return [redact_value(a) for a in argv]


# -- packages ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str
    source: str = ""
    source_version: str = ""
    installed_kib: int = 0


def parse_dpkg_query(text: str) -> List[Package]:
    """Installed packages (status ``ii`` or ``hi``) from :data:`DPKG_FORMAT` output."""
    pkgs = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 4:
            continue
        name, version, arch, status = parts[:4]
        if not status.startswith(("ii", "hi")):
            continue
        source = parts[4] if len(parts) > 4 else ""
        source_version = parts[5] if len(parts) > 5 else ""
        size = parts[6].strip() if len(parts) > 6 else ""
        pkgs.append(Package(name, version, arch, source if source != name else "",
                            source_version if source_version != version else "",
                            int(size) if size.isdigit() else 0))
    return sorted(pkgs, key=lambda p: (p.name, p.arch))


def dpkg_packages(tree: Path) -> Optional[List[Package]]:
    """The tree's installed packages, or None when it has no dpkg database."""
    admindir = tree / "var/lib/dpkg"
    if not (admindir / "status").is_file() or not shutil.which("dpkg-query"):
        return None
    proc = subprocess.run(["dpkg-query", f"--admindir={admindir}", "-W", "-f", DPKG_FORMAT],
                          capture_output=True, text=True)
    if proc.returncode not in (0, 1):  # 1: no packages match
        raise RuntimeError(f"dpkg-query failed ({proc.returncode}): {proc.stderr.strip()}")
    return parse_dpkg_query(proc.stdout)


def os_release(tree: Path) -> Dict[str, str]:
    for rel in ("etc/os-release", "usr/lib/os-release"):
        path = tree / rel
        # an absolute symlink points at the host: resolve it inside the tree
        if path.is_symlink():
            target = os.readlink(path)
            path = tree / target.lstrip("/") if target.startswith("/") else path.parent / target
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        out = {}
        for line in text.splitlines():
            k, sep, v = line.partition("=")
            if sep and k.strip() and not k.startswith("#"):
                try:
                    out[k.strip()] = " ".join(shlex.split(v)) if v.strip() else ""
                except ValueError:
                    out[k.strip()] = v.strip().strip('"')
        return out
    return {}


def purl(pkg: Package, distro: Mapping[str, str]) -> str:
    namespace = (distro.get("ID") or "debian").lower()
    qualifiers = [f"arch={quote(pkg.arch)}"]
    if distro.get("ID") and distro.get("VERSION_ID"):
        qualifiers.append(f"distro={quote(distro['ID'] + '-' + distro['VERSION_ID'])}")
    if pkg.source:
        upstream = pkg.source + (f"@{pkg.source_version}" if pkg.source_version else "")
        qualifiers.append(f"upstream={quote(upstream, safe='.-_~+')}")
    return (f"pkg:deb/{quote(namespace)}/{quote(pkg.name, safe='.-_~+')}"
            f"@{quote(pkg.version, safe='.-_~+')}?{'&'.join(qualifiers)}")


def cyclonedx(packages: Sequence[Package], *, image: str, distro: Mapping[str, str],
              tool_version: str, timestamp: Optional[str] = None,
              serial: Optional[str] = None) -> Dict[str, Any]:
    """A CycloneDX 1.5 BOM: the image as the described component, one ``library``
    component per installed package (with its purl), the image depending on all of them."""
    components = []
    for p in packages:
        ref = purl(p, distro)
        props = [{"name": "dib:package:arch", "value": p.arch}]
        if p.source:
            props.append({"name": "dib:package:source", "value": p.source})
        if p.source_version:
            props.append({"name": "dib:package:source-version", "value": p.source_version})
        if p.installed_kib:
            props.append({"name": "dib:package:installed-size-kib",
                          "value": str(p.installed_kib)})
        components.append({"type": "library", "bom-ref": ref, "name": p.name,
                           "version": p.version, "purl": ref, "properties": props})
    image_ref = f"dib-image:{image}"
    subject: Dict[str, Any] = {"type": "operating-system", "bom-ref": image_ref, "name": image}
    if distro.get("VERSION_ID"):
        subject["version"] = distro["VERSION_ID"]
    if distro.get("PRETTY_NAME"):
        subject["description"] = distro["PRETTY_NAME"]
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": serial or f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": timestamp or now_iso(),
            "tools": {"components": [{"type": "application", "name": "dib",
                                      "version": tool_version}]},
            "component": subject,
        },
        "components": components,
        "dependencies": [{"ref": image_ref, "dependsOn": [c["bom-ref"] for c in components]}],
    }


def packages_from_sbom(bom: Mapping[str, Any]) -> List[Package]:
    """The packages a :func:`cyclonedx` BOM lists (for a reused, cached image)."""
    out = []
    for c in bom.get("components", []):
        props = {p["name"]: p["value"] for p in c.get("properties", [])}
        out.append(Package(c["name"], c["version"], props.get("dib:package:arch", ""),
                           props.get("dib:package:source", ""),
                           props.get("dib:package:source-version", ""),
                           int(props.get("dib:package:installed-size-kib", "0") or 0)))
    return out


# -- elements ---------------------------------------------------------------------------------

def element_entries(order: Iterable[str], paths: Mapping[str, Path],
                    digest: Any = None) -> List[Dict[str, str]]:
    """name, path and content hash (every file of the element directory) per element."""
    if digest is None:
        from dib.layers import tree_digest as digest
    return [{"name": n, "path": os.fspath(paths[n]), "sha256": digest(Path(paths[n]))}
            for n in order]


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat() \
        .replace("+00:00", "Z")


def write_json(path: Path, doc: Any, mode: Optional[int] = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)


def package_summary(packages: Optional[Sequence[Package]]) -> Dict[str, Any]:
    if packages is None:
        return {"source": None, "count": 0, "list": [],
                "note": "the image has no dpkg database"}
    return {"source": "dpkg", "count": len(packages),
            "list": [{"name": p.name, "version": p.version, "arch": p.arch}
                     for p in packages]}


# -- the output family: facts from the tree, the manifest and SBOM after the build ----------

@dataclass
class TreeFacts:
    """What the final tree told the manifest and SBOM. Kept beside a cached finished image
    (:func:`store_facts`), so a reused image gets the same manifest."""
    packages: Optional[List[Package]] = None  #: None: the tree has no dpkg database
    os_release: Dict[str, str] = field(default_factory=dict)
    #: {apt list file name: sha256} of the (In)Release files the packages were chosen from
    releases: Dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildSummary:
    """What the build engine tells the manifest about the build itself."""
    elements: Mapping[str, Path]  #: resolved element name -> directory, in order
    steps: Sequence[Tuple[str, bool, float]]  #: (label, from the cache, seconds)
    cache_enabled: bool
    tree_key: Optional[str]
    seconds: float


def record_tree(run: "Run", tree: Path) -> TreeFacts:
    """The installed packages and os-release of ``tree`` (the tree outputs' source)."""
    with run.timings.measure("output", "(packages)"):
        try:
            packages = dpkg_packages(tree)
        except RuntimeError as exc:
            log.warning("manifest: cannot list the installed packages: %s", exc)
            packages = None
    return TreeFacts(packages, os_release(tree))


def store_facts(images: "ArtifactCache", key: str, facts: TreeFacts) -> None:
    doc = {"packages": None if facts.packages is None
           else [asdict(p) for p in facts.packages], "os_release": facts.os_release,
           "releases": facts.releases}
    data = json.dumps(doc)

    def write(tmp: Path) -> None:
        tmp.write_text(data)

    images.store(f"{key}-state", ".json", {"state": True}, write)


def restore_facts(images: "ArtifactCache", key: str) -> Optional[TreeFacts]:
    """What :func:`store_facts` kept; None (so the image is rebuilt) if it is gone."""
    entry = images.get(f"{key}-state")
    if entry is None:
        return None
    try:
        doc = json.loads(Path(entry.path).read_text())
    except (OSError, ValueError):
        return None
    pkgs = doc.get("packages")
    images.touch(entry.key)
    return TreeFacts(None if pkgs is None else [Package(**p) for p in pkgs],
                     doc.get("os_release", {}), doc.get("releases", {}))


def _artifact_entries(run: "Run") -> List[Dict[str, Any]]:
    from dib.cache import file_sha256
    from dib.outputs.checksums import recorded_sha256

    entries = []
    formats = {os.fspath(run.cfg.output_path(f)): f.value for f in run.cfg.formats}
    for p in run.written:
        key = os.fspath(p)
        if key.endswith((".md5", ".sha256")) and key.rsplit(".", 1)[0] in formats:
            continue
        entry: Dict[str, Any] = {"path": key, "format": formats.get(
            key, "libvirt-xml" if key.endswith(".xml") else "")}
        if p.is_dir():
            index = json.loads((p / "index.json").read_text())
            entry["manifest_digest"] = index["manifests"][0]["digest"]
            entry["bytes"] = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        elif p.exists():
            entry["bytes"] = p.stat().st_size
            entry["sha256"] = recorded_sha256(p) or file_sha256(p)
        entries.append(entry)
    return entries


def write_sidecars(run: "Run", summary: BuildSummary) -> None:
    """``<image>.d/manifest.json`` and ``sbom.cdx.json`` (no SBOM without a package list)."""
    from dib import __version__

    cfg = run.cfg
    packages = run.facts.packages
    name = os.path.basename(cfg.image_name)
    report_dir = cfg.report_dir
    report_dir.mkdir(parents=True, exist_ok=True)
    sbom_path = report_dir / "sbom.cdx.json"
    if packages is not None:
        write_json(sbom_path, cyclonedx(packages, image=name, distro=run.facts.os_release,
                                        tool_version=__version__))
    elif sbom_path.exists():
        sbom_path.unlink()
    outputs = run.timings.of("output")
    reused = any(n.endswith("(cached)") for n, _, _ in outputs)
    doc = {
        "manifest_version": MANIFEST_VERSION,
        "dib_version": __version__,
        "image": name,
        "arch": cfg.arch,
        "created": now_iso(),
        "argv": redact_argv(cfg.argv),
        "command": "disk-image-create " + shlex.join(redact_argv(cfg.argv)),
        "requested_elements": list(cfg.elements),
        "elements": element_entries(list(summary.elements), summary.elements),
        "environment": redact_env(cfg.env),
        "formats": [f.value for f in cfg.formats],
        "artifacts": _artifact_entries(run),
        "os_release": run.facts.os_release,
        "packages": package_summary(packages),
        "sbom": sbom_path.name if packages is not None else None,
        "uefi": run.has_esp,
        "reproducible": {
            "source_date_epoch": cfg.source_date_epoch,
            "source_date_epoch_from": cfg.source_date_epoch_origin or None,
            "apt_release_files": run.facts.releases,
        },
        "timings": {
            "seconds": round(summary.seconds, 3),
            "phases": [{"phase": n, "seconds": round(s, 3)}
                       for n, s in run.timings.totals("phase")],
            "outputs": [{"output": n, "seconds": round(s, 3)} for n, s, _ in outputs],
        },
        "cache": {"enabled": summary.cache_enabled, "steps": len(summary.steps),
                  "steps_cached": sum(1 for _, hit, _ in summary.steps if hit),
                  "image_reused": reused, "tree_key": summary.tree_key},
        "steps": [{"step": label, "cached": hit, "seconds": seconds}
                  for label, hit, seconds in summary.steps],
    }
    write_json(report_dir / "manifest.json", doc)
    log.info("manifest: %s (%s packages)", report_dir / "manifest.json",
             "no" if packages is None else len(packages))


# -- inside the image (the manifests element) -------------------------------------------------

def in_image(tree: Path, env: Mapping[str, str], dest: str = "etc/dib-manifests",
             copy_to: Optional[Path] = None) -> Path:
    """Write manifest.json, sbom.cdx.json, dib_arguments and dib_environment into
    ``tree/dest`` (mode 0600, as diskimage-builder does), and copy them to ``copy_to``."""
    import yaml  # type: ignore[import-untyped,unused-ignore]

    from dib import __version__

    out = tree / dest
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    paths = yaml.safe_load(env.get("IMAGE_ELEMENT_YAML") or "{}") or {}
    order = (env.get("IMAGE_ELEMENT") or " ".join(paths)).split()
    image = os.path.basename(env.get("IMAGE_NAME", "image"))
    try:
        argv = shlex.split(env.get("DIB_ARGS", ""))
    except ValueError:
        argv = [env.get("DIB_ARGS", "")]
    packages = dpkg_packages(tree)
    distro = os_release(tree)
    settings = redact_env(env)
    doc = {
        "manifest_version": MANIFEST_VERSION,
        "dib_version": __version__,
        "image": image,
        "arch": env.get("ARCH", ""),
        "created": now_iso(),
        "argv": redact_argv(argv),
        "elements": element_entries([n for n in order if n in paths],
                                    {k: Path(v) for k, v in paths.items()}),
        "environment": settings,
        "os_release": distro,
        "packages": package_summary(packages),
    }
    write_json(out / "manifest.json", doc, 0o600)
    if packages is not None:
        write_json(out / "sbom.cdx.json", cyclonedx(packages, image=image, distro=distro,
                                                    tool_version=__version__), 0o600)
    # diskimage-builder's file names, for tools that read them
    (out / "dib_arguments").write_text(shlex.join(redact_argv(argv)) + "\n")
    (out / "dib_environment").write_text(
        "".join(f"export {k}={shlex.quote(v)}\n" for k, v in settings.items()))
    for f in out.iterdir():
        os.chmod(f, 0o600)
    if copy_to is not None:
        copy_to.mkdir(parents=True, exist_ok=True)
        for f in out.iterdir():
            shutil.copyfile(f, copy_to / f.name)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "in-image":
        sys.stderr.write("usage: python -m dib.outputs.manifest in-image TREE [COPY_TO]\n")
        return 2
    copy_to = Path(args[2]) if len(args) > 2 and args[2] else None
    out = in_image(Path(args[1]), os.environ, copy_to=copy_to)
    print(f"manifests: wrote {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
