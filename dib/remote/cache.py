"""What a build does with the remote cache: pull a step's layer on a local miss, push a
layer after the step that made it.

Nothing here fails a build, except a push under ``--remote-cache-push-strict``: a missing tag
is a plain miss; a corrupt entry (a digest that does not match, a manifest or archive that is
not ours), a refused login or any other registry error is a miss with a warning; an
unreachable registry is a warning, and the remote cache is then left alone for the rest of
the build (each further step would only wait for the same timeout).

Scratch files (the tar being packed or unpacked, skopeo's ``dir:`` layouts) live in the
layer store's directory as ``tmp-<pid>-remote-*``, on the cache's filesystem rather than in
a tmpfs work directory, and are removed by the next build if this one is killed.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional

from dib import cmd
from dib import log as dlog
from dib.errors import DibError
from dib.layers import LayerStore
from dib.remote import layer as oci_layer
from dib.remote import oci
from dib.remote.client import Outcome, RegistryError, Skopeo
from dib.remote.url import RemoteURL

log = logging.getLogger("dib.remote")

TOOLS = ("skopeo", "zstd")


class Corrupt(Exception):
    """A pulled entry whose bytes are not what its manifest says."""


@dataclass
class Stats:
    hits: int = 0
    misses: int = 0
    pushed: int = 0
    push_failures: int = 0
    bytes_pulled: int = 0
    bytes_pushed: int = 0
    warnings: List[str] = field(default_factory=list)
    #: why the remote cache was left alone for the rest of the build (None: it was not)
    disabled: Optional[str] = None


class RemoteCache:
    """The remote half of the layer cache for one build."""

    def __init__(self, url: RemoteURL, client: Skopeo, store: LayerStore, *, arch: str,
                 strict: bool, timings: dlog.Timings) -> None:
        self.url = url
        self.client = client
        self.store = store
        self.arch = arch
        self.strict = strict
        self.timings = timings
        self.stats = Stats()
        self._n = 0

    # -- scratch ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _scratch(self, what: str) -> Iterator[Path]:
        self._n += 1
        path = self.store.dir / f"tmp-{os.getpid()}-remote-{what}-{self._n}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(mode=0o700)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def _warn(self, message: str) -> None:
        log.warning("remote cache %s: %s", self.url, message)
        self.stats.warnings.append(message)

    def _registry_problem(self, doing: str, error: RegistryError) -> None:
        if error.outcome is Outcome.UNREACHABLE:
            self.stats.disabled = f"unreachable while {doing}: {error}"
            self._warn(f"{self.stats.disabled}; not used for the rest of this build")
        elif error.outcome is Outcome.DENIED:
            self._warn(f"{doing}: access denied ({error}); check REGISTRY_AUTH_FILE, "
                       "~/.docker/config.json or DIB_REMOTE_CACHE_CREDENTIALS")
        else:
            self._warn(f"{doing}: {error}")

    # -- pull ------------------------------------------------------------------------------

    def fetch(self, key: str, step_id: str, inputs: Mapping[str, Any]) -> Optional[Path]:
        """The layer for ``key`` from the registry, unpacked and committed to the local
        store (with the hooks-tree files it carries); None on a miss of any kind."""
        if self.stats.disabled is not None:
            return None
        with self.timings.measure("phase", "(remote cache pull)"), \
                self._scratch("pull") as tmp:
            layout = tmp / "dir"
            try:
                self.client.pull(oci.tag(key), layout)
            except RegistryError as exc:
                self.stats.misses += 1
                if exc.outcome is Outcome.MISSING:
                    log.debug("%s: not in the remote cache (%s)", step_id, key)
                else:
                    self._registry_problem(f"pulling {step_id} ({key})", exc)
                return None
            try:
                found = self._unpack(layout, tmp, key, step_id, inputs)
            except (Corrupt, oci.BadManifest, oci_layer.BadLayer, DibError, OSError,
                    tarfile.TarError, EOFError) as exc:
                self.stats.misses += 1
                self._warn(f"the entry for {step_id} ({key}) is unusable, the step runs "
                           f"instead: {exc}")
                return None
        self.stats.hits += 1
        return found

    def _unpack(self, layout: Path, tmp: Path, key: str, step_id: str,
                inputs: Mapping[str, Any]) -> Path:
        entry = oci.parse_manifest((layout / "manifest.json").read_bytes(), key)
        blob = layout / entry.layer_digest
        got = oci_layer.file_digest(blob)
        if got != entry.layer_digest:
            raise Corrupt(f"the layer blob's sha256 is {got}, its manifest says "
                          f"{entry.layer_digest}")
        size = blob.stat().st_size
        tar = tmp / "layer.tar"
        cmd.run(["zstd", "-d", "-q", "--no-progress", blob, "-o", tar])
        blob.unlink()
        got = oci_layer.file_digest(tar)
        if got != entry.diff_id:
            raise Corrupt(f"the uncompressed layer's sha256 is {got}, its manifest says "
                          f"{entry.diff_id}")
        with self.store.new_upper(step_id) as upper:
            oci_layer.unpack(tar, upper)
            path = self.store.commit(key, upper, step_id, inputs)
        self.store.set_hooks_delta(key, entry.hooks)
        self.stats.bytes_pulled += size
        log.info("%s  (from the remote cache, %.1f MiB)", step_id, size / (1 << 20))
        return path

    # -- push ------------------------------------------------------------------------------

    def push(self, key: str, layer: Path, step_id: str) -> bool:
        """Push the committed layer ``layer`` of ``key``. A failure is a warning (a
        DibError with ``strict``); returns whether the entry is in the registry now."""
        if self.stats.disabled is not None:
            return self._push_failed(step_id, self.stats.disabled, warn=False)
        with self.timings.measure("phase", "(remote cache push)"), \
                self._scratch("push") as tmp:
            try:
                size = self._pack_and_push(key, layer, step_id, tmp)
            except oci_layer.Unsupported as exc:
                return self._push_failed(step_id, f"cannot be expressed as an OCI layer: {exc}")
            except RegistryError as exc:
                if exc.outcome is Outcome.UNREACHABLE:
                    self._registry_problem(f"pushing {step_id}", exc)
                    return self._push_failed(step_id, str(exc), warn=False)
                return self._push_failed(step_id, str(exc))
            except (DibError, OSError) as exc:
                return self._push_failed(step_id, str(exc))
        self.stats.pushed += 1
        # the compressed layer as sent (a registry that had the blob already -- the same
        # layer under another key -- receives less)
        self.stats.bytes_pushed += size
        log.debug("%s: pushed as %s (%d bytes)", step_id, oci.tag(key), size)
        return True

    def _pack_and_push(self, key: str, layer: Path, step_id: str,
                       tmp: Path) -> int:
        tar = tmp / "layer.tar"
        with open(tar, "wb") as f:
            diff_id = oci_layer.pack(layer, f)
        packed = tmp / "layer.tar.zst"
        cmd.run(["zstd", "-q", "--no-progress", "-T0", "-3", "--rm", tar, "-o", packed])
        digest = oci_layer.file_digest(packed)
        size = packed.stat().st_size
        layout = tmp / "dir"
        layout.mkdir()
        os.rename(packed, layout / digest)
        config = oci.config_blob(self.arch, diff_id, step_id)
        config_digest = hashlib.sha256(config).hexdigest()
        hooks = self.store.hooks_delta(key)
        manifest = oci.manifest(key=key, step=step_id, config_digest=config_digest,
                                config_size=len(config), layer_digest=digest,
                                layer_size=size, diff_id=diff_id, hooks=hooks)
        oci.write_dir(layout, manifest, {config_digest: config})
        self.client.push(layout, oci.tag(key))
        return size

    def _push_failed(self, step_id: str, why: str, *, warn: bool = True) -> bool:
        self.stats.push_failures += 1
        message = f"pushing the layer of {step_id} failed: {why}"
        if self.strict:
            raise DibError(f"remote cache {self.url}: {message}",
                           hint="fix the registry (or its credentials), or drop "
                                "--remote-cache-push-strict / DIB_REMOTE_CACHE_STRICT to "
                                "make this a warning")
        if warn:
            self._warn(message)
        return False

    # -- the report ------------------------------------------------------------------------

    def report(self) -> Dict[str, Any]:
        s = self.stats
        return {"url": str(self.url), "hits": s.hits, "misses": s.misses, "pushed": s.pushed,
                "push_failures": s.push_failures, "bytes_pulled": s.bytes_pulled,
                "bytes_pushed": s.bytes_pushed, "disabled": s.disabled,
                "warnings": list(s.warnings)}


def open_remote(url: RemoteURL, store: LayerStore, *, arch: str, strict: bool,
                caller_env: Mapping[str, str], credentials: Optional["tuple[str, str]"],
                timings: dlog.Timings) -> RemoteCache:
    """The remote cache of one build (the private files -- policy, auth file -- go in the
    store's scratch area and are removed with the build's other scratch directories)."""
    cmd.require_tools(*TOOLS)
    private = store.dir / f"tmp-{os.getpid()}-remote-private"
    client = Skopeo.make(url, private, caller_env, credentials)
    store.add_scratch(private)
    log.info("remote cache: %s", url)
    return RemoteCache(url, client, store, arch=arch, strict=strict, timings=timings)

