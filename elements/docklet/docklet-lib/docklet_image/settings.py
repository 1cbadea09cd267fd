"""The DOCKLET_* settings: their defaults, validation (every problem reported at once) and the
runtime copy in /etc/docklet/docklet.env that the booted image reads back."""
from __future__ import annotations

import ipaddress
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

from .base import DockletError

MODES = ("single", "master", "worker")
BASEFS_KINDS = ("debootstrap", "tarball", "dir", "none")
#: (DISTRO_NAME, DIB_RELEASE) pairs the element is made for (docklet.md §5)
SUPPORTED_RELEASES = (("debian", "bookworm"), ("ubuntu", "jammy"), ("ubuntu", "noble"))
#: the user server's port is hard-coded in docklet (user/user.py)
USER_PORT = 9100

#: Every build setting: name -> default. environment.d/60-docklet.bash sets exactly these
#: defaults (a unit test compares the two).
DEFAULTS: Dict[str, str] = {
    "DOCKLET_REPO": "https://github.com/unias/docklet.git",
    "DOCKLET_REF": "master",
    "DOCKLET_HOME": "/home/docklet",
    "DOCKLET_FS_PREFIX": "/opt/docklet",
    "DOCKLET_MODE": "single",
    "DOCKLET_NETWORK_DEVICE": "auto",
    "DOCKLET_PUBLIC_IP": "auto",
    "DOCKLET_PORTAL_URL": "auto",
    "DOCKLET_ETCD": "",
    "DOCKLET_ETCD_LISTEN": "",
    "DOCKLET_AUTH_KEY": "",
    "DOCKLET_CLUSTER_NAME": "docklet-vc",
    "DOCKLET_CLUSTER_NET": "172.16.0.1/16",
    "DOCKLET_BATCH_NET": "10.16.0.0/16",
    "DOCKLET_NGINX_PORT": "8080",
    "DOCKLET_WEB_PORT": "8888",
    "DOCKLET_MASTER_PORT": "9000",
    "DOCKLET_WORKER_PORT": "9001",
    "DOCKLET_PROXY_PORT": "8000",
    "DOCKLET_PROXY_API_PORT": "8001",
    "DOCKLET_STORAGE": "file",
    "DOCKLET_DISK": "",
    "DOCKLET_DISKPOOL_SIZE": "10000",
    "DOCKLET_DISTRIBUTED_GATEWAY": "False",
    "DOCKLET_BATCH_ON": "True",
    "DOCKLET_EXTRA_CONF": "",
    "DOCKLET_GLOBAL_FS": "",
    "DOCKLET_BASEFS": "debootstrap",
    "DOCKLET_BASEFS_DISTRO": "",
    "DOCKLET_BASEFS_RELEASE": "",
    "DOCKLET_BASEFS_MIRROR": "",
    "DOCKLET_BASEFS_PACKAGES": "",
    "DOCKLET_BASEFS_TARBALL": "",
    "DOCKLET_BASEFS_DIR": "",
    "DOCKLET_BASEFS_DNS": "",
    "DOCKLET_BASEFS_JUPYTER": "0",
    "DOCKLET_UNIONFS": "overlay",
    "DOCKLET_CGROUP": "v1",
    "DOCKLET_PY_PINS": "itsdangerous==2.0.1 Flask-SQLAlchemy==2.5.1 Flask-WTF==0.15.1",
    "DOCKLET_PIP_WHEELHOUSE": "",
    "DOCKLET_PIP_INDEX_URL": "",
    "DOCKLET_MAIL": "none",
    "DOCKLET_PYLIB": "/usr/local/lib/docklet/pylib",
    "DOCKLET_STRICT_PATCH": "1",
    "DOCKLET_START_TIMEOUT": "480",
    "DOCKLET_ALLOW_UNSUPPORTED_RELEASE": "0",
}
#: pins added on releases whose Flask/Werkzeug are too new for docklet (docklet.md §2.2)
EXTRA_PINS = {("ubuntu", "noble"): "Flask==2.2.5 Werkzeug==2.2.3"}
#: settings that matter only while building (not written to /etc/docklet/docklet.env)
BUILD_ONLY = {"DOCKLET_REPO", "DOCKLET_REF", "DOCKLET_BASEFS_DISTRO", "DOCKLET_BASEFS_RELEASE",
              "DOCKLET_BASEFS_MIRROR", "DOCKLET_BASEFS_PACKAGES", "DOCKLET_BASEFS_TARBALL",
              "DOCKLET_BASEFS_DIR", "DOCKLET_PY_PINS", "DOCKLET_PIP_WHEELHOUSE",
              "DOCKLET_PIP_INDEX_URL", "DOCKLET_STRICT_PATCH",
              "DOCKLET_ALLOW_UNSUPPORTED_RELEASE"}
#: docklet.conf keys the element manages; DOCKLET_EXTRA_CONF may not set them
MANAGED_KEYS = {"FS_PREFIX", "CLUSTER_NAME", "CLUSTER_NET", "BATCH_NET", "ETCD",
                "NETWORK_DEVICE", "PUBLIC_IP", "PORTAL_URL", "MASTER_PORT", "WORKER_PORT",
                "NGINX_PORT", "PROXY_PORT", "PROXY_API_PORT", "WEB_PORT", "STORAGE", "DISK",
                "DISKPOOL_SIZE", "DISTRIBUTED_GATEWAY", "BATCH_ON", "AUTH_KEY", "PYTHONPATH"}


#: a value docklet.conf can hold unquoted (read by sh and by a KEY=value splitter)
CONF_TOKEN = re.compile(r"^[A-Za-z0-9._~+/@:-]+$")
_IFACE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
_PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?(==|>=|<=|~=|!=|<|>)"
                  r"[A-Za-z0-9.*+!_-]+$")
_CONF_KEY = re.compile(r"^[A-Z][A-Z0-9_]*$")
_BOOL = {"true": "True", "1": "True", "yes": "True", "false": "False", "0": "False",
         "no": "False"}


@dataclass
class Settings:
    """The validated DOCKLET_* settings (plus the distribution they are for)."""

    values: Dict[str, str]
    distro: str = ""
    release: str = ""
    warnings: List[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> str:
        return self.values[name]

    @property
    def mode(self) -> str:
        return self.values["DOCKLET_MODE"]

    @property
    def home(self) -> str:
        return self.values["DOCKLET_HOME"]

    @property
    def fs_prefix(self) -> str:
        return self.values["DOCKLET_FS_PREFIX"]

    @property
    def pylib(self) -> str:
        return self.values["DOCKLET_PYLIB"]

    @property
    def has_master(self) -> bool:
        return self.mode in ("single", "master")

    @property
    def has_worker(self) -> bool:
        return self.mode in ("single", "worker")

    @property
    def etcd(self) -> str:
        """The etcd client address docklet uses (ETCD=host:port)."""
        return self.values["DOCKLET_ETCD"] or "127.0.0.1:2379"

    @property
    def etcd_listen(self) -> str:
        """The address the local etcd listens on (single: loopback, master: everything)."""
        if self.values["DOCKLET_ETCD_LISTEN"]:
            return self.values["DOCKLET_ETCD_LISTEN"]
        return "0.0.0.0" if self.mode == "master" else "127.0.0.1"

    def port(self, name: str) -> int:
        return int(self.values[f"DOCKLET_{name}_PORT"])

    @property
    def pins(self) -> List[str]:
        return self.values["DOCKLET_PY_PINS"].split()

    @property
    def global_fs(self) -> Optional[Tuple[str, str]]:
        """(type, source) of DOCKLET_GLOBAL_FS, e.g. ('nfs', 'server:/export')."""
        value = self.values["DOCKLET_GLOBAL_FS"]
        if not value:
            return None
        kind, _, source = value.partition(":")
        return kind, source

    def extra_conf(self) -> List[Tuple[str, str]]:
        out = []
        for item in self.values["DOCKLET_EXTRA_CONF"].split():
            key, _, value = item.partition("=")
            out.append((key, value))
        return out

    def runtime_env(self) -> str:
        """/etc/docklet/docklet.env: the settings the booted image needs (shell syntax)."""
        lines = ["# Docklet settings of this image (dib docklet element).",
                 "# docklet-setup.service renders conf/docklet.conf and /etc/default/etcd from",
                 "# them at every boot; after editing run:",
                 "#   systemctl restart docklet-setup && systemctl restart docklet-master "
                 "docklet-worker"]
        for name in sorted(self.values):
            if name in BUILD_ONLY:
                continue
            lines.append(f"{name}={shlex.quote(self.values[name])}")
        return "\n".join(lines) + "\n"


def parse_env_file(text: str) -> Dict[str, str]:
    """Read a ``KEY=value`` file written by :meth:`Settings.runtime_env` (shell quoting)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        words = shlex.split(value) if value else [""]
        out[key.strip()] = words[0] if words else ""
    return out


def settings_from_env(env: Mapping[str, str], *, host_checks: bool = False) -> Settings:
    """Validate the DOCKLET_* variables in ``env`` (defaults for unset ones).

    All problems are collected and raised together. ``host_checks`` also checks paths that
    only exist on the build host (DOCKLET_BASEFS_TARBALL/_DIR, DOCKLET_PIP_WHEELHOUSE).
    """
    distro = env.get("DISTRO_NAME", "")
    release = env.get("DIB_RELEASE", "")
    v = {k: env.get(k, d) for k, d in DEFAULTS.items()}
    if "DOCKLET_PY_PINS" not in env:
        extra = EXTRA_PINS.get((distro, release))
        if extra:
            v["DOCKLET_PY_PINS"] = f"{DEFAULTS['DOCKLET_PY_PINS']} {extra}"
    v = {k: x.strip() if k != "DOCKLET_EXTRA_CONF" else x for k, x in v.items()}
    errors: List[str] = []
    warnings: List[str] = []

    mode = v["DOCKLET_MODE"]
    if mode not in MODES:
        errors.append(f"DOCKLET_MODE={mode!r}: use one of {', '.join(MODES)}")

    for name in ("DOCKLET_HOME", "DOCKLET_FS_PREFIX", "DOCKLET_PYLIB"):
        p = v[name]
        if not p.startswith("/") or not re.match(r"^/[A-Za-z0-9._/-]*$", p) or p.rstrip("/") in (
                "", "/usr", "/etc", "/var", "/opt", "/home", "/tmp"):
            errors.append(f"{name}={p!r}: must be an absolute path (letters, digits, . _ - /) "
                          "of its own")
        v[name] = p.rstrip("/") or p

    ports = {}
    for name in ("NGINX", "WEB", "MASTER", "WORKER", "PROXY", "PROXY_API"):
        key = f"DOCKLET_{name}_PORT"
        value = v[key]
        if not value.isdigit() or not 0 < int(value) < 65536:
            errors.append(f"{key}={value!r}: must be a TCP port number (1-65535)")
            continue
        ports.setdefault(int(value), []).append(key)
    ports.setdefault(USER_PORT, []).append("the user server (fixed)")
    for port, names in ports.items():
        if len(names) > 1:
            errors.append(f"port {port} is used twice: {' and '.join(names)}")

    dev = v["DOCKLET_NETWORK_DEVICE"]
    if dev != "auto" and not _IFACE.match(dev):
        errors.append(f"DOCKLET_NETWORK_DEVICE={dev!r}: 'auto' or an interface name")
    ip = v["DOCKLET_PUBLIC_IP"]
    if ip != "auto":
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            errors.append(f"DOCKLET_PUBLIC_IP={ip!r}: 'auto' or an IPv4 address")
    url = v["DOCKLET_PORTAL_URL"]
    if url != "auto" and not re.match(r"^https?://[A-Za-z0-9.:\[\]_-]+(/[^\s\"'=]*)?$", url):
        errors.append(f"DOCKLET_PORTAL_URL={url!r}: 'auto' or http(s)://host[:port][/path] "
                      "(no '=', quotes or spaces)")

    etcd = v["DOCKLET_ETCD"]
    if etcd and not re.match(r"^[A-Za-z0-9.-]+:\d{1,5}$", etcd):
        errors.append(f"DOCKLET_ETCD={etcd!r}: host:port of the etcd server "
                      "(e.g. 192.0.2.10:2379)")
    if mode == "worker" and not etcd:
        errors.append("DOCKLET_MODE=worker needs DOCKLET_ETCD: the master's etcd, "
                      "as <master-ip>:2379")
    listen = v["DOCKLET_ETCD_LISTEN"]
    if listen:
        try:
            ipaddress.IPv4Address(listen)
        except ValueError:
            errors.append(f"DOCKLET_ETCD_LISTEN={listen!r}: an IPv4 address")

    key = v["DOCKLET_AUTH_KEY"]
    if key:
        if key == "docklet":
            errors.append("DOCKLET_AUTH_KEY=docklet is upstream's public default; "
                          "choose a secret one")
        elif not re.match(r"^[A-Za-z0-9._~+/-]{8,}$", key):
            errors.append("DOCKLET_AUTH_KEY: at least 8 characters of letters, digits and "
                          "._~+/- (no '=', quotes or spaces: docklet.conf is read by sh and "
                          "by a KEY=value splitter)")
    elif mode in ("master", "worker"):
        errors.append(f"DOCKLET_MODE={mode} needs DOCKLET_AUTH_KEY: the same secret on the "
                      "master and every worker (e.g. openssl rand -hex 24)")

    if v["DOCKLET_CLUSTER_NAME"] and not re.match(r"^[A-Za-z0-9_-]+$", v["DOCKLET_CLUSTER_NAME"]):
        errors.append(f"DOCKLET_CLUSTER_NAME={v['DOCKLET_CLUSTER_NAME']!r}: letters, digits, "
                      "_ and -")
    for name in ("DOCKLET_CLUSTER_NET", "DOCKLET_BATCH_NET"):
        try:
            ipaddress.IPv4Interface(v[name])
            if "/" not in v[name]:
                raise ValueError
        except ValueError:
            errors.append(f"{name}={v[name]!r}: an IPv4 network in CIDR form (a.b.c.d/nn)")

    if v["DOCKLET_STORAGE"] not in ("file", "disk"):
        errors.append(f"DOCKLET_STORAGE={v['DOCKLET_STORAGE']!r}: 'file' (a sparse file on "
                      "/dev/loop0) or 'disk' (DOCKLET_DISK)")
    elif v["DOCKLET_STORAGE"] == "disk" and not re.match(r"^/dev/[A-Za-z0-9/_.-]+$",
                                                         v["DOCKLET_DISK"]):
        errors.append("DOCKLET_STORAGE=disk needs DOCKLET_DISK=/dev/<device> for the volume "
                      "group")
    if not v["DOCKLET_DISKPOOL_SIZE"].isdigit() or int(v["DOCKLET_DISKPOOL_SIZE"]) < 100:
        errors.append(f"DOCKLET_DISKPOOL_SIZE={v['DOCKLET_DISKPOOL_SIZE']!r}: size of the "
                      "volume pool in MB (at least 100)")

    for name in ("DOCKLET_DISTRIBUTED_GATEWAY", "DOCKLET_BATCH_ON"):
        norm = _BOOL.get(v[name].lower())
        if norm is None:
            errors.append(f"{name}={v[name]!r}: True or False")
        else:
            v[name] = norm

    extra_items = v["DOCKLET_EXTRA_CONF"].split()
    for item in extra_items:
        k, sep, val = item.partition("=")
        if not sep or not _CONF_KEY.match(k) or not val or not CONF_TOKEN.match(val):
            errors.append(f"DOCKLET_EXTRA_CONF: {item!r} is not KEY=value (KEY in capitals; "
                          "value without spaces, quotes or '=')")
        elif k in MANAGED_KEYS:
            errors.append(f"DOCKLET_EXTRA_CONF: {k} is managed by the element; set the "
                          "matching DOCKLET_* variable instead")
    v["DOCKLET_EXTRA_CONF"] = " ".join(extra_items)

    gfs = v["DOCKLET_GLOBAL_FS"]
    if gfs:
        kind, _, source = gfs.partition(":")
        if kind not in ("nfs", "glusterfs") or not re.match(r"^[A-Za-z0-9.-]+:/?[A-Za-z0-9._/-]+$",
                                                            source):
            errors.append(f"DOCKLET_GLOBAL_FS={gfs!r}: nfs:<server>:/<export> or "
                          "glusterfs:<server>:<volume>")
    elif mode in ("master", "worker"):
        warnings.append(f"DOCKLET_MODE={mode} without DOCKLET_GLOBAL_FS: "
                        f"{v['DOCKLET_FS_PREFIX']}/global must be one shared filesystem on "
                        "the master and every worker; mount it yourself before docklet starts")

    kind = v["DOCKLET_BASEFS"]
    if kind not in BASEFS_KINDS:
        errors.append(f"DOCKLET_BASEFS={kind!r}: use one of {', '.join(BASEFS_KINDS)}")
    elif kind == "tarball":
        tb = v["DOCKLET_BASEFS_TARBALL"]
        if not tb:
            errors.append("DOCKLET_BASEFS=tarball needs DOCKLET_BASEFS_TARBALL (a path or "
                          "http(s) URL of a tarball with a top-level basefs/ directory)")
        elif host_checks and not re.match(r"^https?://", tb) and not os.path.isfile(tb):
            errors.append(f"DOCKLET_BASEFS_TARBALL={tb}: no such file on the build host")
    elif kind == "dir":
        d = v["DOCKLET_BASEFS_DIR"]
        if not d:
            errors.append("DOCKLET_BASEFS=dir needs DOCKLET_BASEFS_DIR (a root filesystem "
                          "directory on the build host)")
        elif host_checks and not os.path.isdir(d):
            errors.append(f"DOCKLET_BASEFS_DIR={d}: no such directory on the build host")
    if kind == "none" and v["DOCKLET_MODE"] != "master":
        warnings.append("DOCKLET_BASEFS=none: docklet-worker stays inactive until a root "
                        f"filesystem exists at {v['DOCKLET_FS_PREFIX']}/local/basefs")
    if not v["DOCKLET_BASEFS_DISTRO"]:
        v["DOCKLET_BASEFS_DISTRO"] = distro
    if not v["DOCKLET_BASEFS_RELEASE"]:
        v["DOCKLET_BASEFS_RELEASE"] = release
    for pkg in v["DOCKLET_BASEFS_PACKAGES"].replace(",", " ").split():
        if not re.match(r"^[a-z0-9][a-z0-9.+-]+$", pkg):
            errors.append(f"DOCKLET_BASEFS_PACKAGES: {pkg!r} is not a package name")
    dns = v["DOCKLET_BASEFS_DNS"].replace(",", " ").split()
    for server in dns:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            errors.append(f"DOCKLET_BASEFS_DNS: {server!r} is not an IP address")
    v["DOCKLET_BASEFS_DNS"] = " ".join(dns)

    for name, allowed in (("DOCKLET_BASEFS_JUPYTER", ("0", "1")),
                          ("DOCKLET_UNIONFS", ("overlay", "aufs")),
                          ("DOCKLET_CGROUP", ("v1", "unified")),
                          ("DOCKLET_MAIL", ("none", "local")),
                          ("DOCKLET_STRICT_PATCH", ("0", "1")),
                          ("DOCKLET_ALLOW_UNSUPPORTED_RELEASE", ("0", "1"))):
        if v[name] not in allowed:
            errors.append(f"{name}={v[name]!r}: use one of {', '.join(allowed)}")

    for pin in v["DOCKLET_PY_PINS"].split():
        if not _PIN.match(pin):
            errors.append(f"DOCKLET_PY_PINS: {pin!r} is not a requirement like name==version")
    wh = v["DOCKLET_PIP_WHEELHOUSE"]
    if wh and host_checks and not os.path.isdir(wh):
        errors.append(f"DOCKLET_PIP_WHEELHOUSE={wh}: no such directory on the build host")
    idx = v["DOCKLET_PIP_INDEX_URL"]
    if idx and not re.match(r"^(https?|file)://\S+$", idx):
        errors.append(f"DOCKLET_PIP_INDEX_URL={idx!r}: an http(s):// or file:// URL")
    if not v["DOCKLET_START_TIMEOUT"].isdigit() or int(v["DOCKLET_START_TIMEOUT"]) < 10:
        errors.append(f"DOCKLET_START_TIMEOUT={v['DOCKLET_START_TIMEOUT']!r}: seconds (>= 10)")

    if distro and (distro, release) not in SUPPORTED_RELEASES and \
            v["DOCKLET_ALLOW_UNSUPPORTED_RELEASE"] != "1":
        errors.append(
            f"docklet is not supported on {distro} {release or '(no release)'}: it needs "
            "Python < 3.13, cgroup v1 (systemd < 256) and etcd's v2 API; supported: " +
            ", ".join(f"{d} {r}" for d, r in SUPPORTED_RELEASES) +
            " (DOCKLET_ALLOW_UNSUPPORTED_RELEASE=1 builds anyway)")

    if errors:
        raise DockletError("invalid docklet settings:\n  - " + "\n  - ".join(errors),
                           hint="see elements/docklet/README.rst for every DOCKLET_* variable")
    return Settings(v, distro, release, warnings)
