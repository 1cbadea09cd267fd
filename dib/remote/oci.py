"""The remote cache's OCI objects: one single-layer image per cached step.

For the step whose key is ``K`` the registry holds, under the tag ``layer-K``:

* a manifest (``application/vnd.oci.image.manifest.v1+json``) with one layer and these
  annotations: ``org.dib.cache.format`` (:data:`FORMAT`), ``org.dib.cache.key`` (``K``),
  ``org.dib.cache.step`` (e.g. ``install.d/20-foo``), ``org.dib.cache.diff-id`` (sha256 of
  the uncompressed tar) and, for a host step that also wrote into the hooks tree,
  ``org.dib.cache.hooks`` (those files, as JSON);
* the layer: the overlay upper directory as a tar in OCI form, zstd-compressed
  (``application/vnd.oci.image.layer.v1.tar+zstd``);
* a minimal image config (``rootfs.diff_ids`` names the layer), with no timestamps, so the
  same layer always makes the same config and manifest and any registry, skopeo or
  ``crane`` can copy, list or garbage-collect the entries like any image.

Locally the objects live in skopeo's ``dir:`` transport layout: ``manifest.json``, each blob
in a file named by its sha256, and a ``version`` file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Mapping, Optional

FORMAT = "1"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+zstd"
DIR_VERSION = "Directory Transport Version: 1.1\n"
ANNOTATION = "org.dib.cache."

#: Debian architecture names -> OCI's (GOARCH)
OCI_ARCH = {"amd64": "amd64", "arm64": "arm64", "armel": "arm", "armhf": "arm",
            "i386": "386", "ppc64el": "ppc64le", "riscv64": "riscv64", "s390x": "s390x"}


class BadManifest(Exception):
    """A manifest that is not one of ours (or not for the key asked for)."""


def tag(key: str) -> str:
    return f"layer-{key}"


def image_tag(name: str) -> str:
    """The tag of a finished-image cache entry (``<key>-<format>`` or ``<key>-state``)."""
    return f"image-{name}"


def _json(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def config_blob(arch: str, diff_id: str, step: str) -> bytes:
    return _json({"architecture": OCI_ARCH.get(arch, arch), "os": "linux",
                  "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
                  "history": [{"created_by": f"dib step {step}"}]})


def manifest(*, key: str, step: str, config_digest: str, config_size: int,
             layer_digest: str, layer_size: int, diff_id: str,
             hooks: Optional[Mapping[str, Any]] = None,
             extra: Optional[Mapping[str, str]] = None) -> bytes:
    annotations = {ANNOTATION + "format": FORMAT, ANNOTATION + "key": key,
                   ANNOTATION + "step": step, ANNOTATION + "diff-id": f"sha256:{diff_id}",
                   **(extra or {})}
    if hooks:
        annotations[ANNOTATION + "hooks"] = json.dumps(hooks, sort_keys=True)
    return _json({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": f"sha256:{config_digest}",
                   "size": config_size},
        "layers": [{"mediaType": LAYER_TYPE, "digest": f"sha256:{layer_digest}",
                    "size": layer_size}],
        "annotations": annotations})


@dataclass(frozen=True)
class Entry:
    """What a pulled manifest says about its layer."""
    key: str
    step: str
    layer_digest: str
    layer_size: int
    diff_id: str
    hooks: Dict[str, Any]
    #: every annotation of the manifest
    annotations: Dict[str, str]


def _hex_digest(value: object, what: str) -> str:
    text = str(value)
    algo, _, hexpart = text.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or not all(c in "0123456789abcdef"
                                                          for c in hexpart):
        raise BadManifest(f"{what} is not a sha256 digest: {text[:80]!r}")
    return hexpart


def parse_manifest(raw: bytes, key: str) -> Entry:
    """The layer of the manifest ``raw`` pulled for ``key``; :class:`BadManifest` if it is
    not a manifest of this format for that key."""
    try:
        doc = json.loads(raw)
        notes = doc.get("annotations") or {}
        layers = doc["layers"]
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        raise BadManifest(f"not an OCI manifest ({exc})") from None
    if notes.get(ANNOTATION + "format") != FORMAT:
        raise BadManifest(f"format {notes.get(ANNOTATION + 'format')!r}, not {FORMAT}")
    if notes.get(ANNOTATION + "key") != key:
        raise BadManifest(f"made for key {notes.get(ANNOTATION + 'key')!r}, not {key}")
    if not isinstance(layers, list) or len(layers) != 1 or \
            layers[0].get("mediaType") != LAYER_TYPE:
        raise BadManifest(f"expected one layer of type {LAYER_TYPE}")
    try:
        hooks = json.loads(notes.get(ANNOTATION + "hooks") or "{}")
        size = int(layers[0]["size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BadManifest(f"unreadable annotation or size ({exc})") from None
    _check_hooks(hooks)
    return Entry(key, str(notes.get(ANNOTATION + "step", "")),
                 _hex_digest(layers[0].get("digest"), "the layer digest"), size,
                 _hex_digest(notes.get(ANNOTATION + "diff-id"), "the diff-id"), hooks,
                 {str(k): str(v) for k, v in notes.items()})


def _check_hooks(hooks: object) -> None:
    """The hooks annotation: relative paths inside the hooks tree -> [mode, base64 data]."""
    if not isinstance(hooks, dict):
        raise BadManifest("the hooks annotation is not a mapping")
    for rel, value in hooks.items():
        parts = PurePosixPath(rel).parts
        if rel.startswith("/") or not parts or ".." in parts:
            raise BadManifest(f"the hooks annotation names {rel!r}, outside the hooks tree")
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int)
                and isinstance(value[1], str)):
            raise BadManifest(f"the hooks annotation's {rel!r} is not [mode, data]")


def write_dir(layout: Path, manifest_bytes: bytes, blobs: Mapping[str, bytes]) -> None:
    """skopeo's ``dir:`` layout: ``manifest.json``, ``version`` and ``blobs`` (sha256 hex ->
    bytes; a layer already in place as ``layout/<hex>`` need not be passed)."""
    layout.mkdir(parents=True, exist_ok=True)
    for digest, data in blobs.items():
        (layout / digest).write_bytes(data)
    (layout / "manifest.json").write_bytes(manifest_bytes)
    (layout / "version").write_text(DIR_VERSION)
