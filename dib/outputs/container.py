"""Container images made from the finished tree: a docker-archive (``-t docker``, what
``docker load`` / ``podman load`` read) and an OCI image layout (``-t oci``, a directory that
``skopeo inspect oci:DIR`` / ``podman pull oci:DIR`` read).

Both hold the same single layer: an uncompressed tar of the tree (the same archive ``-t tar``
writes: numeric owners, xattrs, sorted members, nothing of the host), so the layer's digest is
also its diff_id and the two outputs describe the same image. The writers here are pure: they
take the layer file and the settings and write JSON and tar members, so they are unit-tested
without root.

Settings (``DIB_CONTAINER_*``): ``CMD`` and ``ENTRYPOINT`` (shell words), ``ENV`` (shell words
``K=V``), ``WORKDIR``, ``USER``, ``LABELS`` (shell words ``k=v``). The name comes from
``--docker-target repo:tag`` (``DOCKER_TARGET``), else ``<image basename>:latest``.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from dib.cache import file_sha256
from dib.config import BuildConfig, ImageFormat
from dib.errors import ConfigError
from dib.outputs.base import Family, Needs, Run, restore_file, store_file
from dib.outputs.files import atomic_output

DOCKER_CONFIG_MEDIA = "application/vnd.docker.container.image.v1+json"
OCI_MANIFEST_MEDIA = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX_MEDIA = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG_MEDIA = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_MEDIA = "application/vnd.oci.image.layer.v1.tar"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Debian architecture -> the Go/OCI name (and variant)
OCI_ARCH: Dict[str, Tuple[str, str]] = {
    "amd64": ("amd64", ""), "arm64": ("arm64", "v8"), "armhf": ("arm", "v7"),
    "armel": ("arm", "v5"), "i386": ("386", ""), "ppc64el": ("ppc64le", ""),
    "s390x": ("s390x", ""), "riscv64": ("riscv64", ""),
}

# the distribution reference grammar (docker/distribution reference.go), without digests
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*" \
          r"[a-zA-Z0-9])?)*(?::[0-9]+)?)"
_TAG = r"[\w][\w.-]{0,127}"
REFERENCE = re.compile(rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
                       rf"(?::(?P<tag>{_TAG}))?$")


@dataclass(frozen=True)
class Reference:
    """``[domain/]path[:tag]``; the tag defaults to ``latest``."""

    repository: str
    tag: str = "latest"

    def __str__(self) -> str:
        return f"{self.repository}:{self.tag}"


def parse_reference(text: str, what: str = "--docker-target") -> Reference:
    """Check ``repo[:tag]`` (as docker and podman do) and split it."""
    value = text.strip()
    m = REFERENCE.match(value)
    if not m:
        raise ConfigError(f"{what}: '{text}' is not a valid image name",
                          hint="use repo:tag with a lowercase repository, e.g. "
                               "mydistro/base:1.0 (tag: letters, digits, '_', '.', '-')")
    path = m.group("path")
    domain = m.group("domain")
    # 'host/x' where host has no dot, colon or is not localhost is a path component
    if domain and not ("." in domain or ":" in domain or domain == "localhost"
                       or domain.lower() != domain):
        path, domain = f"{domain}/{path}", None
    repo = f"{domain}/{path}" if domain else path
    if len(repo) > 255:
        raise ConfigError(f"{what}: the repository name is longer than 255 characters")
    return Reference(repo, m.group("tag") or "latest")


def default_reference(image_name: str) -> Reference:
    """``<basename of -o>:latest``, made a valid repository name."""
    base = os.path.basename(image_name).lower()
    base = re.sub(r"[^a-z0-9._-]+", "-", base)
    base = re.sub(r"^[^a-z0-9]+|[^a-z0-9]+$", "", base) or "image"
    base = re.sub(r"[._-]{2,}", "-", base)
    return Reference(base)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(doc: object) -> bytes:
    """The bytes of a JSON blob (stable: sorted keys, no whitespace)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Layer:
    path: Path
    #: sha256 of the uncompressed tar (diff_id == blob digest: the layer is not compressed)
    sha256: str
    size: int

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"

    @classmethod
    def of(cls, path: Path) -> "Layer":
        return cls(path, file_sha256(path), path.stat().st_size)


@dataclass(frozen=True)
class ContainerSettings:
    cmd: Tuple[str, ...] = ()
    entrypoint: Tuple[str, ...] = ()
    env: Tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "ContainerSettings":
        """The DIB_CONTAINER_* variables, parsed by dib.config's settings table (the engine
        itself uses ``BuildConfig.container``, parsed once)."""
        from dib.config import group_values

        v = group_values(env, "container")
        return cls(v["cmd"] or (), v["entrypoint"] or (), v["env"] or (), v["workdir"] or "",
                   v["user"] or "", dict(v["labels"] or ()))

    def cache_inputs(self) -> Dict[str, Any]:
        return {"cmd": list(self.cmd), "entrypoint": list(self.entrypoint),
                "env": list(self.env), "workdir": self.workdir, "user": self.user,
                "labels": dict(self.labels)}


def default_cmd(tree: Optional[Path]) -> List[str]:
    """``/bin/bash`` when the tree has it, else ``/bin/sh``."""
    if tree is not None and (os.path.lexists(tree / "bin/bash")
                             or os.path.lexists(tree / "usr/bin/bash")):
        return ["/bin/bash"]
    return ["/bin/sh"]


def image_config(layer: Layer, *, arch: str, settings: ContainerSettings,
                 created: str, default_command: Sequence[str] = ("/bin/sh",),
                 labels: Optional[Mapping[str, str]] = None,
                 history: str = "dib") -> Dict[str, Any]:
    """The image configuration (the same document serves docker and OCI)."""
    goarch, variant = OCI_ARCH.get(arch, (arch, ""))
    env = [f"PATH={DEFAULT_PATH}"]
    for item in settings.env:
        name = item.split("=", 1)[0]
        env = [e for e in env if e.split("=", 1)[0] != name] + [item]
    conf: Dict[str, Any] = {"Env": env}
    if settings.entrypoint:
        conf["Entrypoint"] = list(settings.entrypoint)
    conf["Cmd"] = list(settings.cmd) if settings.cmd else (
        [] if settings.entrypoint else list(default_command))
    if not conf["Cmd"]:
        del conf["Cmd"]
    if settings.workdir:
        conf["WorkingDir"] = settings.workdir
    if settings.user:
        conf["User"] = settings.user
    all_labels = {**(labels or {}), **settings.labels}
    if all_labels:
        conf["Labels"] = dict(sorted(all_labels.items()))
    doc = {"architecture": goarch, "os": "linux", "created": created, "config": conf,
           "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
           "history": [{"created": created, "created_by": history}]}
    if variant:
        doc["variant"] = variant
    return doc


# -- docker-archive -----------------------------------------------------------------------------

def _member(name: str, size: int, mode: int = 0o644, mtime: int = 0,
            kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = mtime
    info.type = kind
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def docker_archive_members(layer: Layer, config: bytes, ref: Reference) -> Dict[str, bytes]:
    """The small JSON members of a docker-archive (``docker save`` layout), by name."""
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    layer_dir = layer.sha256
    manifest = [{"Config": config_name, "RepoTags": [str(ref)],
                 "Layers": [f"{layer_dir}/layer.tar"]}]
    legacy = {"id": layer_dir, "created": json.loads(config).get("created", ""),
              "container_config": {}, "os": "linux"}
    return {
        config_name: config,
        f"{layer_dir}/VERSION": b"1.0",
        f"{layer_dir}/json": canonical(legacy),
        "manifest.json": canonical(manifest),
        "repositories": canonical({ref.repository: {ref.tag: layer_dir}}),
    }


def write_docker_archive(dest: Path, layer: Layer, config: bytes, ref: Reference,
                         mtime: int = 0) -> None:
    """A docker-archive at ``dest``: config, layer directory, manifest.json, repositories."""
    small = docker_archive_members(layer, config, ref)
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_member(f"{layer.sha256}/", 0, 0o755, mtime, tarfile.DIRTYPE))
        for name in (f"{layer.sha256}/VERSION", f"{layer.sha256}/json"):
            tar.addfile(_member(name, len(small[name]), mtime=mtime), io.BytesIO(small[name]))
        with open(layer.path, "rb") as f:
            tar.addfile(_member(f"{layer.sha256}/layer.tar", layer.size, mtime=mtime), f)
        for name in small:
            if "/" not in name:
                tar.addfile(_member(name, len(small[name]), mtime=mtime),
                            io.BytesIO(small[name]))


# -- OCI image layout ---------------------------------------------------------------------------

def oci_documents(layer: Layer, config: bytes, ref: Reference,
                  annotations: Optional[Mapping[str, str]] = None
                  ) -> Tuple[bytes, bytes, Dict[str, Any]]:
    """(manifest blob, index.json bytes, the manifest descriptor) for one image."""
    conf = json.loads(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST_MEDIA,
        "config": {"mediaType": OCI_CONFIG_MEDIA, "digest": digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_MEDIA, "digest": layer.digest,
                    "size": layer.size}],
    }
    if annotations:
        manifest["annotations"] = dict(sorted(annotations.items()))
    blob = canonical(manifest)
    platform = {"architecture": conf["architecture"], "os": conf["os"]}
    if conf.get("variant"):
        platform["variant"] = conf["variant"]
    descriptor = {"mediaType": OCI_MANIFEST_MEDIA, "digest": digest(blob), "size": len(blob),
                  "platform": platform,
                  "annotations": {"org.opencontainers.image.ref.name": ref.tag,
                                  "io.containerd.image.name": str(ref)}}
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX_MEDIA, "manifests": [descriptor]}
    return blob, canonical(index), descriptor


def write_oci_layout(dest: Path, layer: Layer, config: bytes, ref: Reference, *,
                     annotations: Optional[Mapping[str, str]] = None,
                     move_layer: bool = False) -> Dict[str, Any]:
    """An OCI image layout in the (new, empty or absent) directory ``dest``; returns the
    manifest descriptor. ``move_layer`` renames the layer file into the layout instead of
    copying it (same filesystem)."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    manifest, index, descriptor = oci_documents(layer, config, ref, annotations)
    (dest / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
    for data in (config, manifest):
        (blobs / digest(data).split(":", 1)[1]).write_bytes(data)
    target = blobs / layer.sha256
    if move_layer:
        try:
            os.replace(layer.path, target)
        except OSError:
            shutil.copyfile(layer.path, target)
    else:
        shutil.copyfile(layer.path, target)
    (dest / "index.json").write_bytes(index)
    for p in [dest, dest / "blobs", blobs]:
        os.chmod(p, 0o755)
    for p in blobs.iterdir():
        os.chmod(p, 0o644)
    return descriptor


@contextlib.contextmanager
def atomic_directory(dest: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a new temporary directory beside ``dest``; on success it becomes ``dest``. An
    existing ``dest`` is renamed aside with a timestamp (or removed with ``overwrite``), as
    :func:`dib.outputs.files.atomic_output` does for files."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dest.exists() or dest.is_symlink():
        if overwrite:
            old = dest.with_name(f".{dest.name}.old.{os.getpid()}")
            os.replace(dest, old)
        else:
            stamp = time.strftime("%Y.%m.%d-%H.%M.%S")
            os.replace(dest, dest.with_name(f"{dest.stem}-{stamp}{dest.suffix}"))
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


def pack_directory(src: Path, dest: Path) -> None:
    """A plain tar of ``src`` (how the finished-image cache keeps an OCI layout)."""
    with tarfile.open(dest, "w") as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=os.fspath(path.relative_to(src)), recursive=False)


def unpack_directory(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            if not (m.isfile() or m.isdir()) or m.name.startswith(("/", "..")) \
                    or "/../" in f"/{m.name}/":
                raise ValueError(f"unexpected member {m.name!r} in {archive}")
        tar.extractall(dest)


def verify_oci_layout(layout: Path) -> List[str]:
    """Problems with a layout: every blob must match its digest and every descriptor its
    blob's size (what ``skopeo inspect`` does not check)."""
    problems = []
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())

    def check(desc: Dict[str, Any]) -> Optional[bytes]:
        algo, _, hexd = desc["digest"].partition(":")
        path = blobs / hexd
        if algo != "sha256" or not path.is_file():
            problems.append(f"missing blob {desc['digest']}")
            return None
        if path.stat().st_size != desc["size"]:
            problems.append(f"size of {desc['digest']}: {path.stat().st_size} != {desc['size']}")
        if file_sha256(path) != hexd:
            problems.append(f"blob {desc['digest']} does not match its digest")
        return path.read_bytes() if desc["size"] < (16 << 20) else None

    for desc in index.get("manifests", []):
        raw = check(desc)
        if raw is None:
            continue
        manifest = json.loads(raw)
        check(manifest["config"])
        for layer in manifest["layers"]:
            check(layer)
    return problems


# -- the output family: -t docker, -t oci from the final tree --------------------------------

log = logging.getLogger("dib.outputs")


def reference(cfg: BuildConfig) -> Reference:
    """The image name: ``--docker-target``, else ``<image basename>:latest``."""
    return (parse_reference(cfg.docker_target) if cfg.docker_target
            else default_reference(cfg.image_name))


def _settings(cfg: BuildConfig) -> ContainerSettings:
    return cfg.container or ContainerSettings()


def created(cfg: BuildConfig) -> int:
    """The image's creation time: SOURCE_DATE_EPOCH, else now."""
    return cfg.source_date_epoch if cfg.source_date_epoch is not None else int(time.time())


def iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def check(cfg: BuildConfig) -> None:
    reference(cfg)  # a bad --docker-target fails before the build


def cache_inputs(cfg: BuildConfig) -> Dict[str, Any]:
    return {"reference": str(reference(cfg)), **_settings(cfg).cache_inputs(),
            "epoch": "" if cfg.source_date_epoch is None else str(cfg.source_date_epoch)}


def write(run: Run, tree: Path, formats: Sequence[ImageFormat]) -> None:
    """-t docker and -t oci from ``tree``: one layer tar serves both."""
    from dib.outputs.tar import write_tar

    cfg = run.cfg
    ref = reference(cfg)
    when = created(cfg)
    first = cfg.output_path(formats[0])
    first.parent.mkdir(parents=True, exist_ok=True)
    layer_path = first.with_name(f".{first.name}.layer.partial")
    try:
        log.info("writing the container layer (a tar of the tree)")
        with run.timings.measure("output", "(container layer)"):
            write_tar(tree, layer_path, epoch=cfg.source_date_epoch)
            layer = Layer.of(layer_path)
        labels = {"org.opencontainers.image.title": os.path.basename(cfg.image_name),
                  "org.opencontainers.image.created": iso(when),
                  "org.opencontainers.image.description":
                      f"built by dib from: {' '.join(cfg.elements)}"}
        config = canonical(image_config(
            layer, arch=cfg.arch, settings=_settings(cfg), created=iso(when),
            default_command=default_cmd(tree), labels=labels,
            history=f"dib: {' '.join(cfg.elements)}"))
        for fmt in formats:
            dest = cfg.output_path(fmt)
            log.info("writing %s (%s)", dest, ref)
            with run.timings.measure("output", fmt.value):
                if fmt is ImageFormat.DOCKER:
                    with atomic_output(dest, cfg.overwrite) as tmp:
                        write_docker_archive(tmp, layer, config, ref, mtime=when)
                    run.add(dest)
                else:
                    with atomic_directory(dest, cfg.overwrite) as tmp:
                        write_oci_layout(
                            tmp, layer, config, ref, move_layer=fmt is formats[-1],
                            annotations={"org.opencontainers.image.created": iso(when),
                                         "org.opencontainers.image.ref.name": ref.tag})
                    run.add_directory(dest)
    finally:
        layer_path.unlink(missing_ok=True)


def _cache_suffix(fmt: ImageFormat) -> str:
    return ".tar" if fmt.is_directory else f".{fmt.value}"


def _store(src: Path, tmp: Path) -> None:
    if src.is_dir():  # an OCI layout: cached as a tar of it
        pack_directory(src, tmp)
    else:
        store_file(src, tmp)


def _restore(run: Run, fmt: ImageFormat, cached: Path, dest: Path) -> None:
    if not fmt.is_directory:
        restore_file(run, fmt, cached, dest)
        return
    with run.timings.measure("output", f"{fmt.value} (cached)"), \
            atomic_directory(dest, run.cfg.overwrite) as tmp:
        unpack_directory(cached, tmp)
    run.add_directory(dest)


FAMILY = Family("container", (ImageFormat.DOCKER, ImageFormat.OCI), Needs.TREE, write,
                cache_inputs=cache_inputs, check=check, cache_suffix=_cache_suffix,
                store=_store, restore=_restore)
