"""Artifacts for every consumer, made from the finished tree or disk.

=====================  ==================================================================
output                 made by
=====================  ==================================================================
``-t docker``          :mod:`.container`: a docker-archive (``podman load``/``docker load``)
``-t oci``             :mod:`.container`: an OCI image layout directory (``oci:DIR``)
``-t vagrant``         :mod:`.vagrant`: a vagrant-libvirt box (``vagrant box add``)
``<image>.xml``        :mod:`.libvirt`: a domain definition for disk images (``virsh define``)
``<image>.d/``         :mod:`.manifest`: ``manifest.json`` and ``sbom.cdx.json`` (CycloneDX)
=====================  ==================================================================

The build engine calls in at five points (see dib.build and dib.disk):

* :func:`check` before the build starts: every ``DIB_*`` knob of these outputs is parsed, so a
  typo fails at once, not after the packages are installed;
* :func:`cache_inputs`: the settings that change the outputs, part of the finished-image key;
* :func:`write_tree_artifacts` with the final tree (nothing mounted below it): records the
  installed packages and writes the container outputs (one layer tar serves both);
* :func:`write_disk_artifacts` with the finished raw disk: the Vagrant box;
* :func:`write_sidecars` after the build: the libvirt XML, the manifest and the SBOM.

:func:`store_state` / :func:`restore_state` keep what :func:`write_tree_artifacts` learned from
the tree (the package list) beside a cached finished image, so a reused image gets the same
manifest.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from dib.cache import file_sha256
from dib.config import BuildConfig, ImageFormat

if TYPE_CHECKING:  # pragma: no cover
    from dib.cache import ArtifactCache
    from dib.context import BuildContext

log = logging.getLogger("dib.artifacts")

CONTAINER_FORMATS = (ImageFormat.DOCKER, ImageFormat.OCI)
#: what write_tree_artifacts learned, per build context (id(b)); see restore_state
_STATE: Dict[int, Dict[str, Any]] = {}


# -- configuration ----------------------------------------------------------------------------

def check(cfg: BuildConfig) -> None:
    """Check what the outputs need beyond their settings (which dib.config has parsed and
    checked already); raises ConfigError."""
    if any(f in CONTAINER_FORMATS for f in cfg.formats):
        reference(cfg)


def reference(cfg: BuildConfig):
    from dib.artifacts import container

    return (container.parse_reference(cfg.docker_target) if cfg.docker_target
            else container.default_reference(cfg.image_name))


def cache_inputs(cfg: BuildConfig) -> Dict[str, Any]:
    """The settings that change the outputs of this module (for the finished-image key)."""
    inputs: Dict[str, Any] = {}
    if any(f in CONTAINER_FORMATS for f in cfg.formats):
        inputs["container"] = {"reference": str(reference(cfg)),
                               **_container(cfg).cache_inputs(),
                               "epoch": "" if cfg.source_date_epoch is None
                               else str(cfg.source_date_epoch)}
    if ImageFormat.VAGRANT in cfg.formats:
        inputs["vagrant"] = _vagrant(cfg).cache_inputs()
    return inputs


def _created(cfg: BuildConfig) -> int:
    return cfg.source_date_epoch if cfg.source_date_epoch is not None else int(time.time())


def _container(cfg: BuildConfig):
    from dib.artifacts import container

    return cfg.container or container.ContainerSettings()


def _vagrant(cfg: BuildConfig):
    from dib.artifacts import vagrant

    return cfg.vagrant or vagrant.VagrantSettings()


def _domain(cfg: BuildConfig):
    from dib.artifacts import libvirt

    return cfg.domain or libvirt.DomainSettings(os.path.basename(cfg.image_name))


def _iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


# -- from the tree ----------------------------------------------------------------------------

def record_tree(b: "BuildContext", tree: Path) -> None:
    """Remember the tree's installed packages and os-release (for the manifest and SBOM)."""
    from dib.artifacts import manifest

    with b.timings.measure("output", "(packages)"):
        try:
            packages = manifest.dpkg_packages(tree)
        except RuntimeError as exc:
            log.warning("manifest: cannot list the installed packages: %s", exc)
            packages = None
    _STATE[id(b)] = {"packages": packages, "os_release": manifest.os_release(tree),
                     "bin_bash": (tree / "bin/bash").exists()
                     or (tree / "usr/bin/bash").exists()}


def write_tree_artifacts(b: "BuildContext", tree: Path) -> None:
    """Record the packages; write -t docker and -t oci from ``tree`` (one layer for both)."""
    from dib import outputs
    from dib.artifacts import container

    record_tree(b, tree)
    wanted = [f for f in b.cfg.formats if f in CONTAINER_FORMATS]
    if not wanted:
        return
    cfg = b.cfg
    ref = reference(cfg)
    created = _created(cfg)
    settings = _container(cfg)
    first = cfg.output_path(wanted[0])
    first.parent.mkdir(parents=True, exist_ok=True)
    layer_path = first.with_name(f".{first.name}.layer.partial")
    try:
        log.info("writing the container layer (a tar of the tree)")
        with b.timings.measure("output", "(container layer)"):
            outputs.write_tar(tree, layer_path)
            layer = container.Layer.of(layer_path)
        title = os.path.basename(cfg.image_name)
        labels = {"org.opencontainers.image.title": title,
                  "org.opencontainers.image.created": _iso(created),
                  "org.opencontainers.image.description":
                      f"built by dib from: {' '.join(cfg.elements)}"}
        config = container.canonical(container.image_config(
            layer, arch=cfg.arch, settings=settings, created=_iso(created),
            default_command=container.default_cmd(tree), labels=labels,
            history=f"dib: {' '.join(cfg.elements)}"))
        for fmt in wanted:
            dest = cfg.output_path(fmt)
            log.info("writing %s (%s)", dest, ref)
            with b.timings.measure("output", fmt.value):
                if fmt is ImageFormat.DOCKER:
                    with outputs.atomic_output(dest, cfg.overwrite) as tmp:
                        container.write_docker_archive(tmp, layer, config, ref, mtime=created)
                    b.add_output(dest)
                else:
                    last = fmt is wanted[-1]
                    with container.atomic_directory(dest, cfg.overwrite) as tmp:
                        container.write_oci_layout(
                            tmp, layer, config, ref, move_layer=last,
                            annotations={"org.opencontainers.image.created": _iso(created),
                                         "org.opencontainers.image.ref.name": ref.tag})
                    _add_directory_output(b, dest)
    finally:
        layer_path.unlink(missing_ok=True)


def _add_directory_output(b: "BuildContext", dest: Path) -> None:
    b.outputs.append(dest)
    if b.cfg.checksums:
        log.info("%s is a directory: no checksum files (its blobs are named by their sha256)",
                 dest.name)


def restore_directory(b: "BuildContext", fmt: ImageFormat, cached: str, dest: Path) -> None:
    """A cached directory output (kept in the cache as a tar) back in place."""
    from dib.artifacts import container

    with b.timings.measure("output", f"{fmt.value} (cached)"), \
            container.atomic_directory(dest, b.cfg.overwrite) as tmp:
        container.unpack_directory(Path(cached), tmp)
    _add_directory_output(b, dest)


def pack_directory(src: Path, tmp: Path) -> None:
    from dib.artifacts import container

    container.pack_directory(src, tmp)


# -- from the disk ----------------------------------------------------------------------------

def write_disk_artifacts(b: "BuildContext", raw: Path) -> None:
    """-t vagrant from the finished raw disk (reusing the -t qcow2 output if there is one)."""
    if ImageFormat.VAGRANT not in b.cfg.formats:
        return
    from dib import cmd, outputs
    from dib.artifacts import vagrant

    cfg = b.cfg
    settings = _vagrant(cfg)
    has_user = "vagrant" in b.res.order
    if not has_user:
        log.warning("-t vagrant without the vagrant element: the box has no '%s' user with "
                    "Vagrant's insecure key (add the vagrant element, or set "
                    "config.ssh.username in your Vagrantfile)", settings.user)
    dest = cfg.output_path(ImageFormat.VAGRANT)
    qcow2 = cfg.output_path(ImageFormat.QCOW2)
    log.info("writing %s", dest)
    with b.timings.measure("output", "vagrant"), \
            outputs.atomic_output(dest, cfg.overwrite) as tmp:
        reuse = ImageFormat.QCOW2 in cfg.formats and qcow2.is_file()
        image = qcow2 if reuse else tmp.with_name(tmp.name + ".img")
        try:
            if not reuse:
                cmd.run(outputs.qemu_img_convert_argv(
                    raw, "qcow2", image, compress=cfg.compress, options=cfg.qemu_img_options,
                    compression_type=cfg.qcow2_compression_type))
            vagrant.write_box(tmp, image, vagrant.metadata(raw.stat().st_size),
                              vagrant.vagrantfile(settings, has_vagrant_user=has_user),
                              mtime=_created(cfg))
        finally:
            if not reuse:
                image.unlink(missing_ok=True)
    b.add_output(dest)


# -- finished-image cache ---------------------------------------------------------------------

def store_state(b: "BuildContext", images: "ArtifactCache", key: str) -> None:
    """Keep the package list beside the cached image (for the manifest of a reuse)."""
    state = _STATE.get(id(b))
    if state is None:
        return
    doc = {"packages": None if state["packages"] is None
           else [dataclasses.asdict(p) for p in state["packages"]],
           "os_release": state["os_release"], "bin_bash": state["bin_bash"]}
    data = json.dumps(doc)
    images.store(f"{key}-state", ".json", {"state": True}, lambda tmp: tmp.write_text(data))


def restore_state(b: "BuildContext", images: "ArtifactCache", key: str) -> bool:
    """Load what :func:`store_state` kept; False (so the image is rebuilt) if it is gone."""
    from dib.artifacts import manifest

    entry = images.get(f"{key}-state")
    if entry is None:
        return False
    try:
        doc = json.loads(Path(entry.path).read_text())
    except (OSError, ValueError):
        return False
    pkgs = doc.get("packages")
    _STATE[id(b)] = {"packages": None if pkgs is None
                     else [manifest.Package(**p) for p in pkgs],
                     "os_release": doc.get("os_release", {}),
                     "bin_bash": doc.get("bin_bash", False)}
    images.touch(entry.key)
    return True


# -- after the build --------------------------------------------------------------------------

def libvirt_disk(cfg: BuildConfig) -> Optional[ImageFormat]:
    from dib.artifacts import libvirt

    disks = {f.value: f for f in cfg.formats if f.is_qemu_disk}
    return next((disks[n] for n in libvirt.PREFERRED if n in disks), None)


def write_libvirt_xml(b: "BuildContext") -> Optional[Path]:
    from dib import outputs
    from dib.artifacts import libvirt

    cfg = b.cfg
    fmt = libvirt_disk(cfg)
    if fmt is None:
        return None
    settings = _domain(cfg)
    if not settings.enabled:
        return None
    image = cfg.output_path(fmt)
    xml = libvirt.domain_xml(settings, disk_path=image.absolute(), disk_format=fmt.value,
                             has_esp=b.has_esp, arch=cfg.arch,
                             description=f"built by dib from: {' '.join(cfg.elements)}")
    dest = Path(f"{cfg.image_name}.xml")
    with outputs.atomic_output(dest, cfg.overwrite) as tmp:
        tmp.write_text(xml)
    log.info("libvirt domain %s (%s, %s): %s", settings.name,
             "UEFI" if settings.uefi(b.has_esp) else "BIOS", fmt.value, dest)
    b.outputs.append(dest)
    return dest


def _sha256_of(path: Path) -> Optional[str]:
    """From the --checksum file beside it when there is one, else computed."""
    sums = Path(f"{path}.sha256")
    if sums.is_file():
        word = sums.read_text().split()
        if word and len(word[0]) == 64:
            return word[0]
    return file_sha256(path) if path.is_file() else None


def _artifact_entries(b: "BuildContext") -> List[Dict[str, Any]]:
    entries = []
    formats = {os.fspath(b.cfg.output_path(f)): f.value for f in b.cfg.formats}
    for p in b.outputs:
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
            entry["sha256"] = _sha256_of(p)
        entries.append(entry)
    return entries


def write_sidecars(b: "BuildContext", seconds: float) -> None:
    """The libvirt XML (disk builds), ``<image>.d/manifest.json`` and ``sbom.cdx.json``."""
    from dib import __version__, layers
    from dib.artifacts import manifest

    cfg = b.cfg
    write_libvirt_xml(b)
    state = _STATE.pop(id(b), None) or {"packages": None, "os_release": {}}
    packages = state["packages"]
    name = os.path.basename(cfg.image_name)
    report_dir = cfg.report_dir
    report_dir.mkdir(parents=True, exist_ok=True)
    sbom_path = report_dir / "sbom.cdx.json"
    if packages is not None:
        manifest.write_json(sbom_path, manifest.cyclonedx(
            packages, image=name, distro=state["os_release"], tool_version=__version__))
    elif sbom_path.exists():
        sbom_path.unlink()
    reused = any(n.endswith("(cached)") for n, _, _ in b.timings.of("output"))
    hits = sum(1 for s in b.steps if s.hit)
    doc = {
        "manifest_version": manifest.MANIFEST_VERSION,
        "dib_version": __version__,
        "image": name,
        "arch": cfg.arch,
        "created": manifest.now_iso(),
        "argv": manifest.redact_argv(cfg.argv),
        "command": "disk-image-create " + shlex.join(manifest.redact_argv(cfg.argv)),
        "requested_elements": list(cfg.elements),
        "elements": manifest.element_entries(
            b.res.order, {n: b.res.elements[n].path for n in b.res.order},
            digest=layers.tree_digest),
        "environment": manifest.redact_env(cfg.env),
        "formats": [f.value for f in cfg.formats],
        "artifacts": _artifact_entries(b),
        "os_release": state["os_release"],
        "packages": manifest.package_summary(packages),
        "sbom": sbom_path.name if packages is not None else None,
        "uefi": b.has_esp,
        "timings": {
            "seconds": round(seconds, 3),
            "phases": [{"phase": n, "seconds": round(s, 3)}
                       for n, s in b.timings.totals("phase")],
            "outputs": [{"output": n, "seconds": round(s, 3)}
                        for n, s, _ in b.timings.of("output")],
        },
        "cache": {"enabled": b.store.enabled, "steps": len(b.steps), "steps_cached": hits,
                  "image_reused": reused,
                  "tree_key": b.tree_key},
        "steps": [{"step": s.label, "cached": s.hit, "seconds": s.seconds}
                  for s in b.steps],
    }
    manifest.write_json(report_dir / "manifest.json", doc)
    log.info("manifest: %s (%s packages)", report_dir / "manifest.json",
             "no" if packages is None else len(packages))
