"""Which package mirror a Debian-family build uses, and the apt sources that follow from it.

Never a hard-coded host name. The order, for the distribution mirror:

1. ``DIB_DISTRIBUTION_MIRROR`` (or dib's ``DIB_DEBIAN_DISTRIBUTION_MIRROR`` for Debian);
2. the host's own apt sources, when the host runs the same distribution as the image
   (``ID`` in /etc/os-release) -- a build machine usually sits next to a mirror it can reach;
3. nothing: the bootstrap tool's own default is used, and the sources it writes into the
   tree are read back afterwards (:func:`read_sources`).

For Debian's security archive, which lives apart from the main archive:
``DIB_DEBIAN_SECURITY_MIRROR``, else the host's entry whose suite (or URI) carries
``-security``. If none is known, security is left out with a warning instead of failing
late on an unreachable default (dib's weak point). Ubuntu keeps security on the main mirror.

Everything here is pure: callers pass the environment, the host's os-release and the host's
apt source entries in. :func:`host_entries` and :func:`host_os_id` read the real files.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple

#: the Debian family's distributions dib builds
DEBIAN, UBUNTU = "debian", "ubuntu"
#: releases that have no -updates or -security suites
ROLLING = ("testing", "unstable", "sid", "experimental")


@dataclass(frozen=True)
class SourceEntry:
    """One apt source: a URI with its suites and components (both formats parse to this)."""

    uri: str
    suites: Tuple[str, ...]
    components: Tuple[str, ...] = ()
    types: Tuple[str, ...] = ("deb",)

    @property
    def is_security(self) -> bool:
        return any(s.endswith("-security") or "-security/" in s for s in self.suites) or \
            "-security" in self.uri


@dataclass(frozen=True)
class MirrorChoice:
    #: the main archive; "" = the bootstrap tool's default
    mirror: str
    #: the security archive (Debian); "" = none known (left out)
    security: str
    #: where each came from, for the log: "DIB_DISTRIBUTION_MIRROR", "host apt sources", ...
    mirror_origin: str
    security_origin: str
    warnings: Tuple[str, ...] = field(default=())


# -- reading the host ------------------------------------------------------------------------

def parse_os_release(text: str) -> Mapping[str, str]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Z_][A-Z0-9_]*)=(.*)$", line.strip())
        if m:
            value = m.group(2).strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            out[m.group(1)] = value
    return out


def host_os_id(path: Path = Path("/etc/os-release")) -> str:
    try:
        return parse_os_release(path.read_text()).get("ID", "")
    except OSError:
        return ""


def parse_deb822(text: str) -> List[SourceEntry]:
    """Entries of a ``.sources`` file (deb822 stanzas; ``Enabled: no`` ones are skipped)."""
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
                continue
            if ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if not fields.get("uris") or fields.get("enabled", "yes").lower() == "no":
            continue
        types = tuple(fields.get("types", "deb").split())
        for uri in fields["uris"].split():
            entries.append(SourceEntry(uri, tuple(fields.get("suites", "").split()),
                                       tuple(fields.get("components", "").split()), types))
    return entries


def parse_one_line(text: str) -> List[SourceEntry]:
    """Entries of a classic ``sources.list`` (``deb [opts] uri suite comp...``)."""
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        line = re.sub(r"\[[^]]*\]", " ", line)
        words = line.split()
        if len(words) < 3 or words[0] not in ("deb", "deb-src"):
            continue
        entries.append(SourceEntry(words[1], (words[2],), tuple(words[3:]), (words[0],)))
    return entries


def read_sources(etc_apt: Path) -> List[SourceEntry]:
    """Every apt source under ``etc_apt`` (sources.list, sources.list.d/*.list|*.sources)."""
    entries: List[SourceEntry] = []
    main = etc_apt / "sources.list"
    if main.is_file():
        entries += parse_one_line(main.read_text(errors="replace"))
    d = etc_apt / "sources.list.d"
    if d.is_dir():
        for f in sorted(d.iterdir()):
            if f.suffix == ".list":
                entries += parse_one_line(f.read_text(errors="replace"))
            elif f.suffix == ".sources":
                entries += parse_deb822(f.read_text(errors="replace"))
    return entries


def host_entries() -> List[SourceEntry]:
    return read_sources(Path("/etc/apt"))


# -- choosing --------------------------------------------------------------------------------

def _first(entries: Iterable[SourceEntry], security: bool) -> str:
    for e in entries:
        if "deb" in e.types and e.is_security == security and e.uri.startswith(
                ("http://", "https://", "file:", "ftp://")):
            return e.uri
    return ""


def select_mirrors(distro: str, env: Mapping[str, str], host_id: str,
                   host: Sequence[SourceEntry]) -> MirrorChoice:
    """Choose the distribution and security mirrors (see the module docstring)."""
    warnings: List[str] = []
    same_distro = bool(host_id) and host_id == distro

    mirror = env.get("DIB_DISTRIBUTION_MIRROR", "").strip()
    mirror_origin = "DIB_DISTRIBUTION_MIRROR"
    if not mirror and distro == DEBIAN and env.get("DIB_DEBIAN_DISTRIBUTION_MIRROR", "").strip():
        mirror = env["DIB_DEBIAN_DISTRIBUTION_MIRROR"].strip()
        mirror_origin = "DIB_DEBIAN_DISTRIBUTION_MIRROR"
    if not mirror and same_distro:
        mirror = _first(host, security=False)
        mirror_origin = "the host's apt sources"
    if not mirror:
        mirror_origin = "the bootstrap tool's default"

    security, security_origin = "", ""
    if distro == DEBIAN:
        security = env.get("DIB_DEBIAN_SECURITY_MIRROR", "").strip()
        security_origin = "DIB_DEBIAN_SECURITY_MIRROR"
        if not security and same_distro:
            security = _first(host, security=True)
            security_origin = "the host's apt sources"
        if not security:
            security_origin = "none"
            warnings.append(
                "no Debian security mirror is known: the image's apt sources leave the "
                "security suite out. Set DIB_DEBIAN_SECURITY_MIRROR to include it.")
    return MirrorChoice(mirror.rstrip("/") if mirror else "",
                        security.rstrip("/") if security else "",
                        mirror_origin, security_origin, tuple(warnings))


def components(env: Mapping[str, str], default: str = "main") -> Tuple[str, ...]:
    raw = env.get("DIB_DEBIAN_COMPONENTS", "") or default
    return tuple(c for c in re.split(r"[,\s]+", raw) if c)


def sources_conf(distro: str, release: str, comps: Sequence[str], choice: MirrorChoice,
                 ubuntu_dists: Sequence[str] = ("updates", "security", "backports"),
                 security_subpath: str = "") -> List[Tuple[str, str]]:
    """dib's ``DIB_APT_SOURCES_CONF`` default as ``(name, sources.list line)`` pairs.

    Needs a mirror: when none was chosen, call this with the one the bootstrap tool used.
    """
    if not choice.mirror:
        raise ValueError("sources_conf needs a mirror")
    comp = " ".join(comps)
    lines = [("default", f"deb {choice.mirror} {release} {comp}")]
    if distro == UBUNTU:
        for dist in ubuntu_dists:
            lines.append((dist, f"deb {choice.mirror} {release}-{dist} {comp}"))
        return lines
    if release in ROLLING:
        return lines
    lines.append(("updates", f"deb {choice.mirror} {release}-updates {comp}"))
    if choice.security:
        lines.append(("security",
                      f"deb {choice.security} {release}-security{security_subpath} {comp}"))
    return lines


def parse_sources_conf(text: str) -> List[Tuple[str, str]]:
    """``DIB_APT_SOURCES_CONF`` as dib reads it: ``name:line`` per line."""
    out = []
    for raw in text.splitlines():
        raw = raw.strip()
        if not raw:
            continue
        name, sep, line = raw.partition(":")
        if not sep or not line.strip() or not re.match(r"^[A-Za-z0-9_.-]+$", name.strip()):
            raise ValueError(f"DIB_APT_SOURCES_CONF: malformed line {raw!r} "
                             "(expected name:deb <uri> <suite> <components>)")
        out.append((name.strip(), line.strip()))
    return out


def mirror_of(entries: Sequence[SourceEntry], security: bool = False) -> Optional[str]:
    uri = _first(entries, security)
    return uri.rstrip("/") if uri else None
