"""``oci://HOST[:PORT]/REPO`` (HTTPS) and ``oci+http://HOST[:PORT]/REPO`` (plain HTTP).

The repository name follows the OCI distribution spec's grammar (lowercase path components
separated by ``.``, ``_``, ``__`` or dashes); the host is a DNS name, an IPv4 address or a
bracketed IPv6 address. Credentials never go into the URL (they would end up in logs and
reports): the registry's credentials come from an auth file or the environment
(:mod:`dib.remote.client`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

SCHEMES = {"oci": True, "oci+http": False}

#: the distribution spec's repository name: path components joined by "/"
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPO_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\]")
#: a tag: what the cache's tags (``layer-<key>``) must match
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


class BadURL(ValueError):
    """Why the value is not a remote cache URL (a phrase)."""


@dataclass(frozen=True)
class RemoteURL:
    host: str
    port: int
    repo: str
    #: HTTPS with certificate verification (oci://); False: plain HTTP (oci+http://)
    tls: bool

    @property
    def registry(self) -> str:
        """``host[:port]`` as registries and auth files name it."""
        return f"{self.host}:{self.port}" if self.port else self.host

    def reference(self, tag: str) -> str:
        """``host[:port]/repo:tag`` (skopeo's ``docker://`` reference without the prefix)."""
        if not TAG_RE.fullmatch(tag):
            raise ValueError(f"not a valid tag: {tag!r}")
        return f"{self.registry}/{self.repo}:{tag}"

    def __str__(self) -> str:
        return f"{'oci' if self.tls else 'oci+http'}://{self.registry}/{self.repo}"


def parse(text: str) -> RemoteURL:
    """``text`` as a :class:`RemoteURL`; :class:`BadURL` says what is wrong (never echoing
    anything that looks like a password)."""
    scheme, sep, rest = text.strip().partition("://")
    if not sep or scheme not in SCHEMES:
        raise BadURL("must be oci://HOST[:PORT]/REPO (HTTPS) or oci+http://HOST[:PORT]/REPO "
                     "(plain HTTP)")
    hostport, slash, repo = rest.partition("/")
    if "@" in hostport:
        raise BadURL("must not carry credentials (user:password@): use REGISTRY_AUTH_FILE, "
                     "~/.docker/config.json or DIB_REMOTE_CACHE_CREDENTIALS")
    if any(c in rest for c in "?#"):
        raise BadURL(f"'{text}' has a query or fragment; it takes none")
    host, port_text = hostport, ""
    if hostport.startswith("["):
        close = hostport.find("]")
        host, port_text = hostport[: close + 1], hostport[close + 1:].removeprefix(":")
        if close < 0 or (hostport[close + 1:] and not hostport[close + 1:].startswith(":")):
            raise BadURL(f"'{hostport}' is not a host name or address")
    elif ":" in hostport:
        host, _, port_text = hostport.partition(":")
    if not HOST_RE.fullmatch(host):
        raise BadURL(f"'{host}' is not a host name or address")
    port = 0
    if port_text or hostport.endswith(":"):
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise BadURL(f"port '{port_text}' must be a number from 1 to 65535")
        port = int(port_text)
    repo = repo.rstrip("/")
    if not slash or not repo:
        raise BadURL(f"'{text}' names no repository (oci://{hostport}/REPO)")
    if not REPO_RE.fullmatch(repo) or len(f"{hostport}/{repo}") > 255:
        raise BadURL(f"'{repo}' is not a repository name: lowercase letters and digits, "
                     "separated by '.', '_', '__', '-' or '/'")
    return RemoteURL(host.lower(), port, repo, tls=SCHEMES[scheme])
