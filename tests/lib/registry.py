"""A throwaway OCI registry on 127.0.0.1: Debian's ``docker-registry`` (the CNCF
distribution server), storage in a temporary directory, a free port, plain HTTP.

    with registry.running(tmp_path / "registry") as reg:
        reg.url                      # oci+http://127.0.0.1:PORT/dib-cache (--remote-cache)
        reg.tags()                   # the repository's tags
        reg.manifest(tag)            # a tag's manifest (dict)
        reg.blob_file(digest)        # where a blob's bytes are stored (to corrupt it)
        reg.delete(tag)              # remove a tag
        reg.stop()                   # take it away mid-test (idempotent)

The pytest fixture ``oci_registry`` (tests/conftest.py) wraps :func:`running` and skips when
the program is missing. The systemd unit the package ships is never started: the server runs
as a child of the test, in its own session, and is killed at the end.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

PROGRAM = "docker-registry"
REPO = "dib-cache"
SKIP_REASON = ("needs Debian's docker-registry (the OCI distribution server): "
               "apt-get install docker-registry, or python3 bin/dib-host-setup --test")


def available() -> bool:
    return shutil.which(PROGRAM, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin") \
        is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


@dataclass
class Registry:
    port: int
    storage: Path
    log: Path
    proc: Optional[subprocess.Popen] = None
    repo: str = REPO
    #: (user, password) the registry demands (basic auth), or None
    credentials: Optional[Tuple[str, str]] = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """What ``--remote-cache`` takes."""
        return f"oci+http://{self.address}/{self.repo}"

    def _headers(self) -> Dict[str, str]:
        headers = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
        if self.credentials is not None:
            token = base64.b64encode(":".join(self.credentials).encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        return headers

    def _get(self, path: str) -> bytes:
        req = urllib.request.Request(f"http://{self.address}{path}", headers=self._headers())
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()

    def tags(self) -> List[str]:
        try:
            doc = json.loads(self._get(f"/v2/{self.repo}/tags/list"))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        return sorted(doc.get("tags") or [])

    def manifest(self, tag: str) -> dict:
        return json.loads(self._get(f"/v2/{self.repo}/manifests/{tag}"))

    def delete(self, tag: str) -> None:
        """Remove ``tag`` (its manifest) from the repository."""
        req = urllib.request.Request(
            f"http://{self.address}/v2/{self.repo}/manifests/{tag}", method="HEAD",
            headers=self._headers())
        with urllib.request.urlopen(req, timeout=10) as r:
            digest = r.headers["Docker-Content-Digest"]
        req = urllib.request.Request(
            f"http://{self.address}/v2/{self.repo}/manifests/{digest}", method="DELETE",
            headers=self._headers())
        with urllib.request.urlopen(req, timeout=10):
            pass

    def blob_file(self, digest: str) -> Path:
        """The file holding blob ``sha256:...`` in the filesystem storage."""
        hexpart = digest.split(":", 1)[-1]
        return (self.storage / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart
                / "data")

    def answers(self) -> bool:
        try:
            self._get("/v2/")
            return True
        except urllib.error.HTTPError:
            return True  # e.g. 401: it answers, and wants credentials
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


def _bcrypt(password: str) -> str:
    """A bcrypt hash (what the registry's htpasswd takes), from the C library's crypt(3)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # deprecated, still in 3.11/3.12; libxcrypt does bcrypt

        # the lowest cost: the registry checks the hash on every request
        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))


@contextlib.contextmanager
def running(base: Path, *, timeout: float = 30,
            credentials: Optional[Tuple[str, str]] = None) -> Iterator[Registry]:
    """A registry serving from ``base/storage`` until the block ends; with ``credentials``
    (user, password) it demands them (basic auth, an htpasswd file with a bcrypt hash)."""
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    reg = Registry(port, base / "storage", base / "registry.log", credentials=credentials)
    config = base / "config.yml"
    text = CONFIG.format(storage=reg.storage, port=port)
    if credentials is not None:
        (base / "htpasswd").write_text(f"{credentials[0]}:{_bcrypt(credentials[1])}\n")
        text += f"auth:\n  htpasswd:\n    realm: dib-test\n    path: {base / 'htpasswd'}\n"
    config.write_text(text)
    with open(reg.log, "wb") as log:
        reg.proc = subprocess.Popen([PROGRAM, "serve", os.fspath(config)], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not reg.answers():
            if reg.proc.poll() is not None:
                raise RuntimeError(f"{PROGRAM} exited ({reg.proc.returncode}):\n"
                                   f"{reg.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{PROGRAM} did not answer on {reg.address} within "
                                   f"{timeout}s:\n{reg.log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield reg
    finally:
        reg.stop()
