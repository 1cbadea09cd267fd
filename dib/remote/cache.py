"""What a build does with the remote cache: pull a step's layer on a local miss, push a
layer after the step that made it (or that the local cache had and the registry lacks), and
the same for the finished-image cache's entries.

Nothing here fails a build, except a push under ``--remote-cache-push-strict``: a missing tag
is a plain miss; a corrupt entry (a digest that does not match, a manifest or archive that is
not ours), a refused login or any other registry error is a miss with a warning; an
unreachable registry (or one that refuses our credentials) is one warning, and the remote
cache is then left alone for the rest of the build (each further step would only meet the
same error).

Scratch files (the tar being packed or unpacked, skopeo's ``dir:`` layouts) live in the
layer store's directory as ``tmp-<pid>-remote-*``, on the cache's filesystem rather than in
a tmpfs work directory, and are removed by the next build if this one is killed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    IO,
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    cast,
)

from dib import cmd
from dib import log as dlog
from dib.cache import ArtifactCache
from dib.errors import CommandFailed, DibError
from dib.layers import LayerStore
from dib.remote import layer as oci_layer
from dib.remote import oci
from dib.remote.client import Outcome, RegistryError, Skopeo
from dib.remote.client import hint as client_hint
from dib.remote.url import RemoteURL

log = logging.getLogger("dib.remote")

TOOLS = ("skopeo", "zstd")


class Corrupt(Exception):
    """A pulled entry whose bytes are not what its manifest says."""


#: what makes a pulled entry unusable (a warning and a miss)
UNUSABLE = (Corrupt, oci.BadManifest, oci_layer.BadLayer, CommandFailed, OSError,
            tarfile.TarError, EOFError)


def _pack_file(path: Path, name: str, out: "IO[bytes]") -> str:
    """A tar holding only ``path`` as ``name`` (a finished image file); returns its sha256."""
    writer = oci_layer.HashingWriter(out)
    with tarfile.open(fileobj=cast("IO[bytes]", writer), mode="w|",
                      format=tarfile.PAX_FORMAT) as tar:
        info = tar.gettarinfo(path, arcname=name)
        info.uname = info.gname = ""
        info.uid = info.gid = 0
        with open(path, "rb") as f:
            tar.addfile(info, f)
    return writer.sha.hexdigest()


@dataclass
class Stats:
    hits: int = 0
    misses: int = 0
    pushed: int = 0
    push_failures: int = 0
    #: finished-image cache entries pulled and pushed
    image_hits: int = 0
    image_pushes: int = 0
    bytes_pulled: int = 0
    bytes_pushed: int = 0
    warnings: List[str] = field(default_factory=list)
    #: why the remote cache was left alone for the rest of the build (None: it was not)
    disabled: Optional[str] = None
    #: why nothing more was pushed (the registry refused a push)
    push_disabled: Optional[str] = None


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
        #: the registry's tags, listed at the first local hit (see :meth:`backfill`), and
        #: those this build pulled or pushed
        self._tags: Optional[Set[str]] = None
        self._present: Set[str] = set()

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

    def _registry_problem(self, doing: str, error: RegistryError, *,
                          pushing: bool = False) -> None:
        """Warn about ``error``; an unreachable registry, or one that refuses our
        credentials, is then left alone for the rest of the build (refused pushes: pushing
        only; the credentials will not change mid-build)."""
        if error.outcome is Outcome.UNREACHABLE:
            what_to_do = client_hint(str(error))
            self.stats.disabled = f"unreachable while {doing}: {error}" + (
                f" ({what_to_do})" if what_to_do else "")
            self._warn(f"{self.stats.disabled}; not used for the rest of this build")
        elif error.outcome is Outcome.DENIED:
            why = (f"access denied while {doing} ({error}); check REGISTRY_AUTH_FILE, "
                   "~/.docker/config.json or DIB_REMOTE_CACHE_CREDENTIALS")
            if pushing:
                self.stats.push_disabled = why
                self._warn(f"{why}; no more pushes in this build")
            else:
                self.stats.disabled = why
                self._warn(f"{why}; not used for the rest of this build")
        else:
            self._warn(f"{doing}: {error}")

    # -- the registry's side, for layers and finished images alike --------------------------

    def _pull_tar(self, tag: str, key: str, tmp: Path) -> "Tuple[oci.Entry, Path, int]":
        """Pull ``tag`` into ``tmp``; returns its manifest's entry, the decompressed tar
        (both digests checked) and the compressed size."""
        layout = tmp / "dir"
        self.client.pull(tag, layout)
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
        return entry, tar, size

    def _push_tar(self, tag: str, key: str, label: str, tar: Path, diff_id: str, tmp: Path,
                  hooks: Optional[Mapping[str, Any]] = None,
                  extra: Optional[Mapping[str, str]] = None) -> int:
        """Compress ``tar`` and push it with its manifest as ``tag``; returns the compressed
        size."""
        packed = tmp / "layer.tar.zst"
        cmd.run(["zstd", "-q", "--no-progress", "-T0", "-3", "--rm", tar, "-o", packed])
        digest = oci_layer.file_digest(packed)
        size = packed.stat().st_size
        layout = tmp / "dir"
        layout.mkdir()
        os.rename(packed, layout / digest)
        config = oci.config_blob(self.arch, diff_id, label)
        config_digest = hashlib.sha256(config).hexdigest()
        manifest = oci.manifest(key=key, step=label, config_digest=config_digest,
                                config_size=len(config), layer_digest=digest,
                                layer_size=size, diff_id=diff_id, hooks=hooks, extra=extra)
        oci.write_dir(layout, manifest, {config_digest: config})
        self.client.push(layout, tag)
        return size

    # -- layers ------------------------------------------------------------------------------

    def fetch(self, key: str, step_id: str, inputs: Mapping[str, Any]) -> Optional[Path]:
        """The layer for ``key`` from the registry, unpacked and committed to the local
        store (with the hooks-tree files it carries); None on a miss of any kind."""
        if self.stats.disabled is not None:
            return None
        with self.timings.measure("phase", "(remote cache pull)"), \
                self._scratch("pull") as tmp:
            try:
                entry, tar, size = self._pull_tar(oci.tag(key), key, tmp)
                with self.store.new_upper(step_id) as upper:
                    oci_layer.unpack(tar, upper)
                    path = self.store.commit(key, upper, step_id, inputs)
                self.store.set_hooks_delta(key, entry.hooks)
            except RegistryError as exc:
                self.stats.misses += 1
                if exc.outcome is Outcome.MISSING:
                    log.debug("%s: not in the remote cache (%s)", step_id, key)
                else:
                    self._registry_problem(f"pulling {step_id} ({key})", exc)
                return None
            # (not DibError: an interruption is one, and must go on up)
            except UNUSABLE as exc:
                self.stats.misses += 1
                self._warn(f"the entry for {step_id} ({key}) is unusable, the step runs "
                           f"instead: {exc}")
                return None
        self.stats.hits += 1
        self.stats.bytes_pulled += size
        self._present.add(oci.tag(key))
        log.info("%s  (from the remote cache, %.1f MiB)", step_id, size / (1 << 20))
        return path

    def push(self, key: str, layer: Path, step_id: str) -> bool:
        """Push the committed layer ``layer`` of ``key``. A failure is a warning (a
        DibError with ``strict``); returns whether the entry is in the registry now."""
        def pack(tmp: Path) -> int:
            tar = tmp / "layer.tar"
            with open(tar, "wb") as f:
                diff_id = oci_layer.pack(layer, f)
            return self._push_tar(oci.tag(key), key, step_id, tar, diff_id, tmp,
                                  hooks=self.store.hooks_delta(key))

        if not self._push(step_id, pack):
            return False
        self.stats.pushed += 1
        self._present.add(oci.tag(key))
        return True

    def backfill(self, key: str, layer: Path, step_id: str) -> bool:
        """A layer the local cache had: push it if the registry lacks it (a builder with a
        warm cache fills the registry). The registry's tags are listed once per build.
        Returns whether it was pushed."""
        if self.stats.disabled is not None or oci.tag(key) in self._present:
            return False
        if self._tags is None:
            try:
                self._tags = set(self.client.tags())
            except RegistryError as exc:
                self._registry_problem("listing the registry's tags", exc)
                self._tags = set()
                return False
        if oci.tag(key) in self._tags:
            return False
        return self.push(key, layer, step_id)

    def _push(self, label: str, pack: "Callable[[Path], int]") -> bool:
        off = self.stats.disabled or self.stats.push_disabled
        if off is not None:
            return self._push_failed(label, off, warn=False)
        with self.timings.measure("phase", "(remote cache push)"), \
                self._scratch("push") as tmp:
            try:
                size = pack(tmp)
            except oci_layer.Unsupported as exc:
                return self._push_failed(label, f"cannot be expressed as an OCI layer: {exc}")
            except RegistryError as exc:
                if exc.outcome in (Outcome.UNREACHABLE, Outcome.DENIED):
                    self._registry_problem(f"pushing {label}", exc, pushing=True)
                    return self._push_failed(label, str(exc), warn=False)
                return self._push_failed(label, str(exc))
            except (CommandFailed, OSError) as exc:
                return self._push_failed(label, str(exc))
        # the compressed bytes as sent (a registry that had the blob already -- the same
        # layer under another key -- receives less)
        self.stats.bytes_pushed += size
        log.debug("%s: pushed (%d bytes)", label, size)
        return True

    # -- finished images ---------------------------------------------------------------------

    def fetch_images(self, images: ArtifactCache, names: Sequence[str]) -> bool:
        """Pull the finished-image cache entries ``names`` (one per output format, and the
        tree's facts) that the local cache lacks; True when all of them are there now."""
        for name in names:
            if images.get(name) is not None:
                continue
            if self.stats.disabled is not None or not self._fetch_image(images, name):
                return False
        return True

    def _fetch_image(self, images: ArtifactCache, name: str) -> bool:
        with self.timings.measure("phase", "(remote cache pull)"), \
                self._scratch("pull") as tmp:
            try:
                entry, tar, size = self._pull_tar(oci.image_tag(name), name, tmp)
                suffix = entry.annotations.get(oci.ANNOTATION + "suffix", "")
                inputs = json.loads(entry.annotations.get(oci.ANNOTATION + "inputs", "{}"))
                with tarfile.open(tar) as t:
                    member = t.next()
                    if member is None or not member.isfile() or t.next() is not None \
                            or not isinstance(inputs, dict) or "/" in suffix:
                        raise Corrupt("not one finished-image file")
                    src = t.extractfile(member)
                    assert src is not None

                    def write(dest: Path) -> None:
                        with open(dest, "wb") as f:
                            shutil.copyfileobj(src, f, 1 << 20)

                    images.store(name, suffix, inputs, write)
            except RegistryError as exc:
                if exc.outcome is not Outcome.MISSING:
                    self._registry_problem(f"pulling the finished image {name}", exc)
                return False
            except (*UNUSABLE, ValueError) as exc:
                self._warn(f"the finished image {name} is unusable: {exc}")
                return False
        self.stats.image_hits += 1
        self.stats.bytes_pulled += size
        log.info("finished image %s from the remote cache (%.1f MiB)", name,
                 size / (1 << 20))
        return True

    def push_images(self, images: ArtifactCache, names: Sequence[str]) -> None:
        """Push the finished-image cache entries ``names`` (after the build stored them)."""
        for name in names:
            cached = images.get(name)
            if cached is None:
                continue
            path = Path(cached.path)
            suffix = path.name[len(name):]

            def pack(tmp: Path, path: Path = path, suffix: str = suffix,
                     inputs: Mapping[str, Any] = cached.inputs, name: str = name) -> int:
                tar = tmp / "layer.tar"
                with open(tar, "wb") as f:
                    diff_id = _pack_file(path, f"image{suffix}", f)
                return self._push_tar(oci.image_tag(name), name, f"image {name}", tar,
                                      diff_id, tmp, extra={
                                          oci.ANNOTATION + "suffix": suffix,
                                          oci.ANNOTATION + "inputs": json.dumps(
                                              dict(inputs), sort_keys=True, default=str)})

            if self._push(f"finished image {name}", pack):
                self.stats.image_pushes += 1

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
                "push_failures": s.push_failures, "image_hits": s.image_hits,
                "image_pushes": s.image_pushes, "bytes_pulled": s.bytes_pulled,
                "bytes_pushed": s.bytes_pushed, "disabled": s.disabled,
                "push_disabled": s.push_disabled,
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

