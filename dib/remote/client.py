"""The registry client: skopeo, through the command gateway.

Why skopeo (docs/caching.md says it for users): it is a maintained client of the containers
project, packaged by Debian (security updates come with the distribution, no Python
dependency to pin), it speaks every registry the distribution API covers -- token and basic
auth, Docker Hub, GHCR, Harbor, Zot, ECR through credential helpers --, reads credentials
from the usual places (``REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
``~/.docker/config.json``) and verifies the digest of every blob it fetches. It copies
between a registry and a plain directory (its ``dir:`` transport), which is all the cache
needs: push a directory holding a manifest and its blobs under a tag, fetch a tag's manifest
and blobs into a directory.

Secrets never reach argv (which the gateway logs): credentials given as
``DIB_REMOTE_CACHE_CREDENTIALS`` (``USER:PASSWORD``) are written to a private auth file (mode 0600)
whose *path* is passed; skopeo prints no credentials in its messages.
"""
from __future__ import annotations

import base64
import enum
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from dib import cmd
from dib.remote.url import RemoteURL

#: the caller's variables skopeo reads to find credentials and its own configuration
AUTH_ENV = ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME",
            "HOME", "CONTAINERS_REGISTRIES_CONF")
#: a registry that accepts connections but never answers must not hang the build: one
#: operation (a whole layer's transfer) gets this long, then counts as unreachable
TIMEOUT = "900s"
#: our own objects carry no signatures: the trust is the registry and the digests
POLICY = {"default": [{"type": "insecureAcceptAnything"}]}


class Outcome(enum.Enum):
    MISSING = "missing"          # the registry answered: no such tag (a plain miss)
    UNREACHABLE = "unreachable"  # no answer at all (connection refused, DNS, timeout)
    DENIED = "denied"            # credentials refused or missing
    FAILED = "failed"            # anything else, a digest mismatch included


class RegistryError(Exception):
    """A registry operation that did not work; ``outcome`` says how."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


_SIGNS: Tuple[Tuple[Outcome, Tuple[str, ...]], ...] = (
    (Outcome.MISSING, ("manifest unknown", "name unknown", "not found", "404")),
    (Outcome.DENIED, ("unauthorized", "authentication required", "denied", "401", "403")),
    (Outcome.UNREACHABLE, ("connection refused", "no such host", "i/o timeout",
                           "network is unreachable", "no route to host", "connection reset",
                           "timeout awaiting", "tls handshake timeout", "server misbehaving",
                           "context deadline exceeded")),
)


def classify(output: str) -> Outcome:
    """What skopeo's error output says happened (checked in the order of :data:`_SIGNS`:
    a digest mismatch is FAILED even when a 404 appears elsewhere)."""
    text = output.lower()
    if "digest did not match" in text or "digest mismatch" in text:
        return Outcome.FAILED
    if "pinging container registry" in text:  # its /v2/ endpoint did not work at all
        return Outcome.UNREACHABLE
    for outcome, signs in _SIGNS:
        if any(s in text for s in signs):
            return outcome
    return Outcome.FAILED


def hint(message: str) -> str:
    """What to do about a registry error, when the message says (else "")."""
    text = message.lower()
    if "server gave http response to https client" in text:
        return "the registry speaks plain HTTP: use oci+http://HOST[:PORT]/REPO"
    if "x509:" in text or "certificate" in text:
        return ("the registry's TLS certificate is not trusted: install its CA on this host "
                "(or, for a registry on a trusted network, use oci+http://)")
    return ""


def auth_file(path: Path, registry: str, user: str, password: str) -> Path:
    """Write a containers auth file for ``registry`` (mode 0600, made so before the secret
    goes in)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"auths": {registry: {"auth": token}}}, f)
    return path


def redact(text: str, secrets: List[str]) -> str:
    """``text`` with every secret (and its base64 forms) replaced, for messages that quote
    the client's output."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


@dataclass(frozen=True)
class Skopeo:
    url: RemoteURL
    #: scratch directory of this build (policy file, auth file)
    private: Path
    env: Mapping[str, str]
    authfile: Optional[Path] = None
    secrets: Tuple[str, ...] = ()

    @classmethod
    def make(cls, url: RemoteURL, private: Path, caller_env: Mapping[str, str],
             credentials: Optional[Tuple[str, str]]) -> "Skopeo":
        private.mkdir(mode=0o700, parents=True, exist_ok=True)
        (private / "policy.json").write_text(json.dumps(POLICY))
        env: Dict[str, str] = cmd.base_env(
            {k: caller_env[k] for k in AUTH_ENV if caller_env.get(k)})
        authfile = secrets = None
        if credentials is not None:
            user, password = credentials
            authfile = auth_file(private / "auth.json", url.registry, user, password)
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            secrets = (password, token)
        return cls(url, private, env, authfile, secrets or ())

    def _argv(self, verb: str, *args: str) -> List[str]:
        return ["skopeo", "--policy", os.fspath(self.private / "policy.json"),
                "--command-timeout", TIMEOUT, verb, *args]

    def _auth(self, side: str) -> List[str]:
        out = [f"--{side}tls-verify={'true' if self.url.tls else 'false'}"]
        if self.authfile is not None:
            out.append(f"--{side}authfile={self.authfile}")
        return out

    def _run(self, argv: List[str]) -> str:
        result = cmd.run(argv, env=self.env, capture=True, check=False, tail=15)
        if result.returncode != 0:
            tail = redact(result.tail.strip(), list(self.secrets))
            raise RegistryError(classify(tail), tail.splitlines()[-1] if tail else
                                f"skopeo exited with {result.returncode}")
        return result.stdout

    def pull(self, tag: str, dest: Path) -> None:
        """The manifest and blobs of ``tag`` into the (new or empty) directory ``dest``."""
        self._run(self._argv("copy", *self._auth("src-"), "--retry-times", "0",
                             f"docker://{self.url.reference(tag)}", f"dir:{dest}"))

    def tags(self) -> List[str]:
        """Every tag of the repository (none when it does not exist yet)."""
        tls = f"--tls-verify={'true' if self.url.tls else 'false'}"
        auth = [f"--authfile={self.authfile}"] if self.authfile is not None else []
        try:
            out = self._run(self._argv("list-tags", tls, *auth,
                                       f"docker://{self.url.registry}/{self.url.repo}"))
        except RegistryError as exc:
            if exc.outcome is Outcome.MISSING:
                return []
            raise
        try:
            tags = json.loads(out).get("Tags") or []
        except (ValueError, AttributeError):
            raise RegistryError(Outcome.FAILED, "skopeo list-tags printed no tag list") \
                from None
        return [str(t) for t in tags]

    def push(self, src: Path, tag: str) -> None:
        """The ``dir:`` layout ``src`` to ``tag`` (blobs the registry has are not sent)."""
        self._run(self._argv("copy", *self._auth("dest-"), "--preserve-digests",
                                    f"dir:{src}", f"docker://{self.url.reference(tag)}"))
