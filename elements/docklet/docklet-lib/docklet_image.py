#!/usr/bin/env python3
"""The docklet element's logic, in one stdlib-only module.

It runs in three places, always as ``python3 docklet_image.py COMMAND``:

* on the build host, from the element's root.d / extra-data.d hooks (``$DIB_PYTHON_EXEC``):
  ``check`` (the DOCKLET_* settings), ``fetch-source`` (git URL, local git work tree or plain
  directory; cached under ``$DIB_IMAGE_CACHE/docklet``; layout validation; patches),
  ``basefs`` (the containers' root filesystem);
* in the image chroot, from install.d: ``install`` (the tree, config, shims, units),
  ``pylib`` (the pinned Python packages and the compatibility shim), ``system`` (system
  settings);
* in the booted image, installed as /usr/local/lib/docklet/docklet_image.py: ``setup``
  (docklet-setup.service: network, auth key, docklet.conf, etcd), ``service`` (start/stop and
  readiness of master and worker), ``wait-master``, and ``mount-aufs`` (/sbin/mount.aufs).

Every function that touches files takes the root it works on, so the unit tests run it
against a temporary tree without root. Docklet's own files are never part of this module:
they are fetched at build time and patched in a copy.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

# -- constants ---------------------------------------------------------------------------------

#: the runtime location of this module inside the image
LIB_DIR = "/usr/local/lib/docklet"
ENV_FILE = "/etc/docklet/docklet.env"
EXTRA_CONF_FILE = "/etc/docklet/extra.conf"
AUTH_KEY_FILE = "/etc/docklet/auth_key"
SOURCE_INFO_FILE = "/etc/docklet/source-info"
PATCHES_FILE = "/etc/docklet/patches"
UNIT_DIR = "/etc/systemd/system"

#: files the hooks tree carries next to the staged source
SOURCE_META = ".docklet-source.json"
PATCH_META = ".docklet-patches.json"

MODES = ("single", "master", "worker")
BASEFS_KINDS = ("debootstrap", "tarball", "dir", "none")
#: (DISTRO_NAME, DIB_RELEASE) pairs the element is made for (docklet.md §5)
SUPPORTED_RELEASES = (("debian", "bookworm"), ("ubuntu", "jammy"), ("ubuntu", "noble"))
#: the user server's port is hard-coded in docklet (user/user.py)
USER_PORT = 9100

#: What a docklet source tree must contain (docklet.md §4.1); the build fails listing what is
#: missing.
REQUIRED_FILES = (
    "VERSION", "README.md", "prepare.sh",
    "bin/docklet-supermaster", "bin/docklet-master", "bin/docklet-worker",
    "conf/docklet.conf.template",
    "conf/container/lxc2.container.conf", "conf/container/lxc2.container.batch.conf",
    "conf/container/lxc3.container.conf", "conf/container/lxc3.container.batch.conf",
    "conf/lxc-script/lxc-ifup", "conf/lxc-script/lxc-ifdown", "conf/lxc-script/lxc-prestart",
    "conf/lxc-script/lxc-mount",
    "conf/nginx_docklet.conf",
    "src/master/httprest.py", "src/master/userinit.sh", "src/worker/worker.py",
    "src/worker/taskworker.py", "src/utils/env.py",
    "web/web.py", "web/templates/home.template", "user/user.py",
    "tools/nginx_config.sh", "tools/start_jupyter.sh",
)
#: files that must be executable (docklet starts its daemons by their shebang)
EXECUTABLE_GLOBS = ("bin/*", "conf/lxc-script/*", "tools/*.sh", "src/master/userinit.sh",
                    "src/master/httprest.py", "src/worker/worker.py", "src/worker/taskworker.py",
                    "web/web.py", "user/user.py", "meter/main.py")
BIN_SCRIPTS = ("bin/docklet-supermaster", "bin/docklet-master", "bin/docklet-worker")

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
#: packages of the basefs on top of the bootstrap's minbase (docklet.md §3.5)
BASEFS_PACKAGES = ("sysvinit-core", "openssh-server", "iproute2", "iputils-ping", "procps",
                   "ca-certificates", "python3", "less", "netbase")
JUPYTER_PACKAGES = ("python3-notebook", "jupyterhub")

CONF_BEGIN = "# >>> dib docklet element: generated, edit /etc/docklet/docklet.env instead"
CONF_END = "# <<< dib docklet element"
MARK = "dib-docklet"


class DockletError(Exception):
    """A problem the user can fix; ``hint`` says how."""

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.hint = hint


def log(msg: str) -> None:
    print(f"docklet: {msg}", file=sys.stderr, flush=True)


# -- settings ----------------------------------------------------------------------------------

_TOKEN = re.compile(r"^[A-Za-z0-9._~+/@:-]+$")
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
        if not sep or not _CONF_KEY.match(k) or not val or not _TOKEN.match(val):
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


# -- source: fetch, cache, validate -----------------------------------------------------------

@dataclass(frozen=True)
class SourceInfo:
    repo: str
    ref: str
    kind: str  # git-url | git-local | directory
    commit: str = ""
    version: str = ""

    def text(self) -> str:
        return (f"repo={self.repo}\nref={self.ref}\nkind={self.kind}\n"
                f"commit={self.commit or '-'}\nversion={self.version or '-'}\n")


def _git(args: Sequence[str], *, cwd: Optional[Path] = None, check: bool = True,
         timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/true", LC_ALL="C")
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc


def _tail(text: str, n: int = 6) -> str:
    lines = [x for x in (text or "").strip().splitlines() if x.strip()]
    return "\n    ".join(lines[-n:]) or "(no output)"


def classify_repo(repo: str) -> str:
    """'git-url', 'git-local', 'directory', or raise for a local path that is not there."""
    if not repo:
        raise DockletError("DOCKLET_REPO is empty",
                           hint="a git URL, a local git work tree or a plain directory")
    if re.match(r"^[a-z][a-z0-9+.-]*://", repo) or re.match(r"^[\w.-]+@[\w.-]+:", repo):
        return "git-url"
    path = Path(repo)
    if not path.is_absolute():
        raise DockletError(f"DOCKLET_REPO={repo}: not a URL and not an absolute path",
                           hint="use a git URL (https://..., ssh://..., git@host:path) or an "
                                "absolute path on the build host")
    if not path.exists():
        raise DockletError(f"DOCKLET_REPO={repo}: no such file or directory on the build host")
    if not path.is_dir():
        raise DockletError(f"DOCKLET_REPO={repo}: not a directory")
    if (path / ".git").exists():
        top = _git(["rev-parse", "--show-toplevel"], cwd=path, check=False)
        if top.returncode == 0 and os.path.realpath(top.stdout.strip()) == os.path.realpath(path):
            return "git-local"
        log(f"WARNING: {repo}/.git is not a usable git repository; copying the directory "
            "as it is")
    elif (path / "HEAD").is_file() and (path / "objects").is_dir():
        bare = _git(["rev-parse", "--is-bare-repository"], cwd=path, check=False)
        if bare.stdout.strip() == "true":
            return "git-local"
    return "directory"


def _cache_dir(cache_root: Path, repo: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", repo.split("://")[-1]).strip("-")[-40:]
    return cache_root / "git" / f"{slug}-{hashlib.sha256(repo.encode()).hexdigest()[:12]}.git"


@contextlib.contextmanager
def _flock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another build holding {path}")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _resolve_ref(git_dir: Path, ref: str, repo: str) -> str:
    for candidate in (f"refs/heads/{ref}", f"refs/tags/{ref}", f"refs/remotes/origin/{ref}",
                      ref):
        proc = _git(["--git-dir", str(git_dir), "rev-parse", "-q", "--verify",
                     f"{candidate}^{{commit}}"], check=False)
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.strip()
    heads = _git(["--git-dir", str(git_dir), "for-each-ref", "--format=%(refname:short)",
                  "--count=15", "refs/heads", "refs/tags"], check=False).stdout.split()
    raise DockletError(f"DOCKLET_REF={ref} does not exist in {repo}",
                       hint="branches and tags there: " + (", ".join(heads) or "(none)"))


def _export_commit(git_dir: Path, commit: str, dest: Path) -> None:
    """The tree of ``commit`` into ``dest`` (modes and symlinks kept, no .git)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(["git", "--git-dir", str(git_dir), "archive", "--format=tar",
                                commit], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    untar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout,
                           capture_output=True)
    archive.stdout.close()
    err = archive.stderr.read().decode(errors="replace")
    if archive.wait() != 0 or untar.returncode != 0:
        raise DockletError(f"cannot export {commit} from {git_dir}: {_tail(err)} "
                           f"{_tail(untar.stderr.decode(errors='replace'))}")


def fetch_source(repo: str, ref: str, dest: Path, cache_root: Path, *,
                 offline: bool = False) -> SourceInfo:
    """Put the docklet source for ``repo`` at ``ref`` into ``dest`` (which must not exist).

    * git URL: a bare mirror in ``cache_root/git/`` (cloned once, fetched on every build
      unless ``offline``), then the commit is exported;
    * local git work tree or bare repository: the commit is exported directly;
    * plain directory: copied as it is (``ref`` is ignored).
    """
    kind = classify_repo(repo)
    if dest.exists():
        shutil.rmtree(dest)
    if kind == "directory":
        shutil.copytree(repo, dest, symlinks=True, ignore=shutil.ignore_patterns(".git"))
        info = SourceInfo(repo, ref, kind)
    elif kind == "git-local":
        path = Path(repo)
        git_dir = Path(_git(["rev-parse", "--absolute-git-dir"], cwd=path, check=False)
                       .stdout.strip() or path)
        commit = _resolve_ref(git_dir, ref, repo)
        _export_commit(git_dir, commit, dest)
        info = SourceInfo(repo, ref, kind, commit)
    else:
        mirror = _cache_dir(cache_root, repo)
        with _flock(mirror.with_suffix(".lock")):
            if not (mirror / "HEAD").is_file():
                if offline:
                    raise DockletError(f"offline build: {repo} is not in the cache ({mirror})",
                                       hint="build once without --offline (DIB_OFFLINE) to "
                                            "fill the cache, or point DOCKLET_REPO at a local "
                                            "copy")
                log(f"cloning {repo} into the cache {mirror}")
                tmp = mirror.with_name(mirror.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                proc = _git(["clone", "--mirror", "--quiet", repo, str(tmp)], check=False)
                if proc.returncode != 0:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise DockletError(f"cannot clone DOCKLET_REPO={repo}:\n    "
                                       f"{_tail(proc.stderr)}",
                                       hint="check the URL and that the build host can reach "
                                            "it (or use a local path)")
                os.replace(tmp, mirror)
            elif not offline:
                log(f"updating the cached clone {mirror}")
                proc = _git(["--git-dir", str(mirror), "fetch", "--quiet", "--prune", "--tags",
                             "origin"], check=False)
                if proc.returncode != 0:
                    raise DockletError(f"cannot fetch DOCKLET_REPO={repo}:\n    "
                                       f"{_tail(proc.stderr)}",
                                       hint="is it reachable? Offline builds (DIB_OFFLINE=1) "
                                            "use the cached clone as it is")
            else:
                log(f"offline: using the cached clone {mirror} as it is")
            commit = _resolve_ref(mirror, ref, repo)
            _export_commit(mirror, commit, dest)
        info = SourceInfo(repo, ref, kind, commit)
    version_file = dest / "VERSION"
    version = version_file.read_text(errors="replace").strip().splitlines()[0] \
        if version_file.is_file() and version_file.read_text(errors="replace").strip() else ""
    return SourceInfo(info.repo, info.ref, info.kind, info.commit, version)


def missing_files(tree: Path) -> List[str]:
    return [f for f in REQUIRED_FILES if not (tree / f).is_file()]


def check_layout(tree: Path, repo: str = "") -> None:
    missing = missing_files(tree)
    if missing:
        raise DockletError(
            f"the docklet source{f' from {repo}' if repo else ''} is missing "
            f"{len(missing)} required file(s):\n    " + "\n    ".join(missing),
            hint="is DOCKLET_REPO/DOCKLET_REF a docklet tree (unias/docklet layout)?")


def executable_files(tree: Path) -> List[Path]:
    out: List[Path] = []
    for pattern in EXECUTABLE_GLOBS:
        out.extend(p for p in sorted(tree.glob(pattern)) if p.is_file() and not p.is_symlink())
    return out


# -- patches -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Patch:
    name: str
    files: Tuple[str, ...]
    description: str
    #: the upstream text; group "keep" (if any) is kept in the replacement
    pattern: str
    replacement: str
    #: the text after patching (idempotency)
    applied: str


PATCHES: Tuple[Patch, ...] = (
    Patch(
        "lxc3-config-fallback", ("bin/docklet-worker",),
        "update_container_conf: an LXC major version other than 2 or 3 (LXC 4, 5, ...) "
        "selects the lxc3 container config, not the lxc2 syntax LXC >= 4 rejects",
        pattern=r'(\[\s*"\$LXC_VERSION"x\s*!=\s*"2"x\s*\]\s*&&\s*\[\s*"\$LXC_VERSION"x\s*!=\s*'
                r'"3"x\s*\]\s*;\s*then[ \t]*\n[ \t]*LXC_VERSION=)2\b',
        replacement=r"\g<1>3  # " + MARK + ": LXC >= 4 reads the lxc3 syntax",
        applied=r'\[\s*"\$LXC_VERSION"x\s*!=\s*"2"x\s*\]\s*&&\s*\[\s*"\$LXC_VERSION"x\s*!=\s*'
                r'"3"x\s*\]\s*;\s*then[ \t]*\n[ \t]*LXC_VERSION=3\b'),
    Patch(
        "proxy-default-target", BIN_SCRIPTS,
        "configurable-http-proxy's --default-target: 127.0.0.1 and WEB_PORT instead of "
        "localhost:8888 (Node >= 17 resolves localhost to ::1, where web does not listen)",
        pattern=r"--default-target=http://localhost:8888\b",
        replacement="--default-target=http://127.0.0.1:${WEB_PORT:-8888}",
        applied=r"--default-target=http://127\.0\.0\.1:"),
    Patch(
        "wait-for-user-server", ("bin/docklet-supermaster",),
        "start the master only once the user server answers: the master's release manager "
        "thread asks the user server at once and dies for good if it is still starting "
        "(a race any slow machine loses)",
        pattern=r'(?m)^([ \t]*)do_start_master "(new|recovery)"[ \t]*$',
        replacement=r'\1for _i in $(seq 1 300); do curl -s -o /dev/null '
                    r'http://127.0.0.1:${USER_PORT:-9100}/ && break; sleep 1; done  '
                    r'# ' + MARK + r': wait for the user server' + "\n" +
                    r'\1do_start_master "\2"',
        applied=MARK + r": wait for the user server"),
)


@dataclass(frozen=True)
class PatchResult:
    patch: str
    file: str
    status: str  # applied | already-applied | missing | no-file

    def line(self) -> str:
        return f"{self.patch} {self.file} {self.status}"


def apply_patches(tree: Path, *, strict: bool = True,
                  patches: Sequence[Patch] = PATCHES) -> List[PatchResult]:
    """Apply every patch to ``tree``: replace where the upstream pattern is found, accept the
    patched form, and otherwise fail (``strict``) or warn."""
    results: List[PatchResult] = []
    for patch in patches:
        for rel in patch.files:
            path = tree / rel
            if not path.is_file():
                results.append(PatchResult(patch.name, rel, "no-file"))
                continue
            text = path.read_text()
            if re.search(patch.applied, text):
                results.append(PatchResult(patch.name, rel, "already-applied"))
                continue
            new, count = re.subn(patch.pattern, patch.replacement, text)
            if count:
                mode = stat.S_IMODE(path.stat().st_mode)
                path.write_text(new)
                os.chmod(path, mode)
                results.append(PatchResult(patch.name, rel, "applied"))
            else:
                results.append(PatchResult(patch.name, rel, "missing"))
    bad = [r for r in results if r.status in ("missing", "no-file")]
    if bad:
        by_name = {p.name: p for p in patches}
        detail = "\n    ".join(f"{r.patch}: {r.file}: "
                               f"{'pattern not found' if r.status == 'missing' else 'no file'}"
                               f" ({by_name[r.patch].description})" for r in bad)
        if strict:
            raise DockletError(
                f"{len(bad)} docklet patch(es) found neither the upstream text nor the patched "
                f"text:\n    {detail}",
                hint="the source differs from the docklet this element knows (upstream "
                     "70c089a6a5bb); check the file, or set DOCKLET_STRICT_PATCH=0 to build "
                     "without the patch")
        for r in bad:
            log(f"WARNING: patch {r.patch} not applied to {r.file} (DOCKLET_STRICT_PATCH=0)")
    return results


# -- docklet.conf ------------------------------------------------------------------------------

def conf_values(s: Settings, *, device: str, ip: str, auth_key: str) -> List[Tuple[str, str]]:
    """The KEY=value pairs the element writes into docklet.conf, in order."""
    portal = s["DOCKLET_PORTAL_URL"]
    if portal == "auto":
        portal = f"http://{ip}:{s.port('NGINX')}"
    pairs = [
        ("FS_PREFIX", s.fs_prefix),
        ("CLUSTER_NAME", s["DOCKLET_CLUSTER_NAME"]),
        ("CLUSTER_NET", s["DOCKLET_CLUSTER_NET"]),
        ("BATCH_NET", s["DOCKLET_BATCH_NET"]),
        ("ETCD", s.etcd),
        ("NETWORK_DEVICE", device),
        ("PUBLIC_IP", ip),
        ("PORTAL_URL", portal),
        ("MASTER_PORT", str(s.port("MASTER"))),
        ("WORKER_PORT", str(s.port("WORKER"))),
        ("NGINX_PORT", str(s.port("NGINX"))),
        ("PROXY_PORT", str(s.port("PROXY"))),
        ("PROXY_API_PORT", str(s.port("PROXY_API"))),
        ("WEB_PORT", str(s.port("WEB"))),
        ("STORAGE", s["DOCKLET_STORAGE"]),
    ]
    if s["DOCKLET_STORAGE"] == "disk":
        pairs.append(("DISK", s["DOCKLET_DISK"]))
    pairs += [
        ("DISKPOOL_SIZE", s["DOCKLET_DISKPOOL_SIZE"]),
        ("DISTRIBUTED_GATEWAY", s["DOCKLET_DISTRIBUTED_GATEWAY"]),
        ("BATCH_ON", s["DOCKLET_BATCH_ON"]),
        ("AUTH_KEY", auth_key),
    ]
    pairs += s.extra_conf()
    pairs.append(("PYTHONPATH", s.pylib))
    for key, value in pairs:
        if not value or not _TOKEN.match(value):
            raise DockletError(f"docklet.conf: {key}={value!r} cannot be written safely "
                               "(empty, or spaces/quotes/'=')")
    return pairs


def render_conf(template: str, pairs: Sequence[Tuple[str, str]], *, note: str = "") -> str:
    """docklet.conf: the upstream template (comments) without any earlier generated block,
    then one generated block of unquoted KEY=value lines."""
    kept, skipping = [], False
    for line in template.splitlines():
        if line.strip() == CONF_BEGIN:
            skipping = True
            continue
        if skipping:
            if line.strip() == CONF_END:
                skipping = False
            continue
        kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    block = [CONF_BEGIN]
    if note:
        block += [f"# {x}" for x in note.splitlines()]
    block += [f"{k}={v}" for k, v in pairs]
    block += ["export PYTHONPATH", CONF_END]
    return "\n".join(kept + [""] + block) + "\n"


def loadenv(text: str) -> Dict[str, str]:
    """What docklet's utils/tools.loadenv makes of a config file (split on '=', keep the
    second field, strip spaces); the lines bin/* copies into docklet-running.conf."""
    out = {}
    for line in text.splitlines():
        if not re.match(r"^[\s]*[a-zA-Z]", line):
            continue
        line = line.strip()
        parts = line.split("=")
        if len(parts) < 2:
            continue
        out[parts[0].strip()] = parts[1].strip()
    return out


# -- etcd, units, system files ----------------------------------------------------------------

def render_etcd_default(s: Settings, ip: str) -> str:
    listen = s.etcd_listen
    client_port = s.etcd.rsplit(":", 1)[1] if s.mode != "worker" else "2379"
    advertise = ip if listen == "0.0.0.0" else listen
    return "\n".join([
        "# Written by docklet-setup (dib docklet element) at every boot; edit",
        "# /etc/docklet/docklet.env (DOCKLET_ETCD_LISTEN) instead.",
        "# Docklet speaks etcd's v2 API, which etcd >= 3.4 serves only when enabled.",
        "ETCD_NAME=docklet",
        "ETCD_DATA_DIR=/var/lib/etcd/default",
        f"ETCD_LISTEN_CLIENT_URLS=http://{listen}:{client_port}",
        f"ETCD_ADVERTISE_CLIENT_URLS=http://{advertise}:{client_port}",
        "ETCD_LISTEN_PEER_URLS=http://127.0.0.1:2380",
        "ETCD_INITIAL_ADVERTISE_PEER_URLS=http://127.0.0.1:2380",
        "ETCD_INITIAL_CLUSTER=docklet=http://127.0.0.1:2380",
        "ETCD_ENABLE_V2=true",
        "",
    ])


def systemd_escape_path(path: str) -> str:
    """systemd-escape --path (for mount unit names)."""
    path = path.strip("/")
    out = []
    for i, ch in enumerate(path):
        if ch == "/":
            out.append("-")
        elif ch.isalnum() or ch in ":_" or (ch == "." and i > 0):
            out.append(ch)
        else:
            out.append("".join(f"\\x{b:02x}" for b in ch.encode()))
    return "".join(out) or "-"


def global_mount_unit(s: Settings) -> Optional[Tuple[str, str]]:
    gfs = s.global_fs
    if gfs is None:
        return None
    kind, source = gfs
    where = f"{s.fs_prefix}/global"
    name = systemd_escape_path(where) + ".mount"
    options = "_netdev,defaults" if kind == "nfs" else "_netdev,defaults,acl"
    text = f"""[Unit]
Description=Docklet shared directory {where} ({kind} {source})
Wants=network-online.target
After=network-online.target
Before=docklet-master.service docklet-worker.service

[Mount]
What={source}
Where={where}
Type={kind}
Options={options}

[Install]
WantedBy=remote-fs.target
"""
    return name, text


def render_units(s: Settings) -> Dict[str, str]:
    """unit file name (or drop-in path below /etc/systemd/system) -> text."""
    fs = s.fs_prefix
    mount = global_mount_unit(s)
    needs_mount = f"RequiresMountsFor={fs}/global\n" if mount else ""
    units: Dict[str, str] = {}
    before = ["docklet-master.service", "docklet-worker.service"]
    if s.has_master:
        before = ["etcd.service", "nginx.service"] + before
    units["docklet-setup.service"] = f"""[Unit]
Description=Docklet: configuration for this machine (network, auth key, docklet.conf, etcd)
Wants=network-online.target
After=network-online.target local-fs.target
Before={' '.join(before)}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/docklet-setup
TimeoutStartSec=300

[Install]
WantedBy=multi-user.target
"""
    if s.has_master:
        units["etcd.service.d/50-docklet.conf"] = """# dib docklet element: docklet-setup writes
# /etc/default/etcd (v2 API, listen address) before etcd starts
[Unit]
Wants=docklet-setup.service
After=docklet-setup.service
"""
        units["docklet-master.service"] = f"""[Unit]
Description=Docklet master (master, user server, web portal, proxy; portal through nginx)
Requires=docklet-setup.service etcd.service openvswitch-switch.service
Wants=nginx.service
After=docklet-setup.service etcd.service openvswitch-switch.service nginx.service
After=lxc.service lxcfs.service network-online.target
{needs_mount}
[Service]
Type=forking
PIDFile={fs}/local/run/docklet-master.pid
Environment=PYTHONPATH={s.pylib}
# the first start runs "docklet-supermaster init" (new cluster), every later one "start"
ExecStart=/usr/local/sbin/docklet-service master start
ExecStop=/usr/local/sbin/docklet-service master stop
TimeoutStartSec={int(s['DOCKLET_START_TIMEOUT']) + 120}
TimeoutStopSec=120
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
"""
    if s.has_worker:
        units["docklet-worker.service"] = f"""[Unit]
Description=Docklet worker (LXC containers, LVM volume pool, Open vSwitch networks)
Requires=docklet-setup.service openvswitch-switch.service
After=docklet-setup.service openvswitch-switch.service docklet-master.service
After=lxc.service lxcfs.service network-online.target
# without a basefs (DOCKLET_BASEFS=none) the worker cannot run: put one there, then start it
ConditionPathIsDirectory={fs}/local/basefs
{needs_mount}
[Service]
Type=forking
PIDFile={fs}/local/run/docklet-worker.pid
Environment=PYTHONPATH={s.pylib}
# waits (up to DOCKLET_START_TIMEOUT) for the master: etcd key, global/token, master port
ExecStartPre=/usr/local/sbin/docklet-service wait-master
ExecStart=/usr/local/sbin/docklet-service worker start
ExecStop=/usr/local/sbin/docklet-service worker stop
# containers outlive a worker restart; the worker recovers them
KillMode=process
TimeoutStartSec={2 * int(s['DOCKLET_START_TIMEOUT']) + 120}
TimeoutStopSec=120
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
"""
    if mount:
        units[mount[0]] = mount[1]
    return units


def enabled_units(s: Settings) -> List[Tuple[str, str]]:
    """(unit, target) pairs to enable for the mode (docklet.md §3.7 mode matrix)."""
    out = [("docklet-setup.service", "multi-user.target")]
    if s.has_master:
        out += [("etcd.service", "multi-user.target"),
                ("docklet-master.service", "multi-user.target")]
    if s.has_worker:
        out.append(("docklet-worker.service", "multi-user.target"))
    mount = global_mount_unit(s)
    if mount:
        out.append((mount[0], "remote-fs.target"))
    return out


def _unit_path(root: Path, unit: str) -> Optional[Path]:
    for d in ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"):
        p = root / d / unit
        if p.is_file():
            return p
    return None


def install_units(root: Path, s: Settings) -> List[str]:
    """Write the units and enable them (WantedBy symlinks, as systemctl enable would)."""
    written = []
    for name, text in render_units(s).items():
        path = root / UNIT_DIR.lstrip("/") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, 0o644)
        written.append(name)
    for unit, target in enabled_units(s):
        src = _unit_path(root, unit)
        if src is None:
            raise DockletError(f"cannot enable {unit}: no unit file in the image",
                               hint="was its package installed (package-installs.yaml)?")
        wants = root / UNIT_DIR.lstrip("/") / f"{target}.wants"
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/" + os.fspath(src.relative_to(root)))
    if not s.has_master:
        # worker mode: nothing of the master side may start
        for unit in ("etcd.service", "nginx.service"):
            link = root / UNIT_DIR.lstrip("/") / "multi-user.target.wants" / unit
            if link.is_symlink():
                link.unlink()
    return written


LAUNCHER = """#!/usr/bin/python3 -I
# dib docklet element: {what}
import sys
sys.path.insert(0, {lib!r})
import docklet_image
sys.exit(docklet_image.main({args!r} + sys.argv[1:]))
"""


def install_tree(root: Path, stage: Path, s: Settings, *, module_file: Path) -> None:
    """install.d: the staged (validated, patched) source to DOCKLET_HOME, its generated files,
    /etc/docklet, the runtime module and its launchers, the mount.aufs shim."""
    home = root / s.home.lstrip("/")
    if home.exists():
        shutil.rmtree(home)
    home.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(stage, home, symlinks=True,
                    ignore=shutil.ignore_patterns(SOURCE_META, PATCH_META, ".git"))
    check_layout(home)
    for p in executable_files(home):
        os.chmod(p, stat.S_IMODE(p.stat().st_mode) | 0o755)
    # what prepare.sh and a worker start would create (the master's /settings/ page reads
    # conf/container.conf, which a master-only host never gets otherwise)
    shutil.copyfile(home / "web/templates/home.template", home / "web/templates/home.html")
    shutil.copyfile(home / "conf/container/lxc3.container.conf", home / "conf/container.conf")
    shutil.copyfile(home / "conf/container/lxc3.container.batch.conf",
                    home / "conf/container.batch.conf")
    conf = home / "conf/docklet.conf"
    template = (home / "conf/docklet.conf.template").read_text()
    pairs = [(k, v) for k, v in conf_values(s, device="eth0", ip="127.0.0.1",
                                             auth_key=s["DOCKLET_AUTH_KEY"] or "unset-until-boot")
             if k not in ("NETWORK_DEVICE", "PUBLIC_IP", "PORTAL_URL", "AUTH_KEY")]
    conf.write_text(render_conf(template, pairs, note="NETWORK_DEVICE, PUBLIC_IP, PORTAL_URL "
                                "and AUTH_KEY are added by docklet-setup at boot"))
    os.chmod(conf, 0o640)

    etc = root / "etc/docklet"
    etc.mkdir(parents=True, exist_ok=True)
    os.chmod(etc, 0o755)
    env_file = root / ENV_FILE.lstrip("/")
    env_file.write_text(s.runtime_env())
    os.chmod(env_file, 0o600)
    meta = stage / SOURCE_META
    info = json.loads(meta.read_text()) if meta.is_file() else {}
    (root / SOURCE_INFO_FILE.lstrip("/")).write_text(
        "".join(f"{k}={info.get(k) or '-'}\n" for k in ("repo", "ref", "kind", "commit",
                                                         "version")))
    patches = json.loads((stage / PATCH_META).read_text()) if (stage / PATCH_META).is_file() \
        else []
    (root / PATCHES_FILE.lstrip("/")).write_text(
        "# patch file status (applied here, or already in the source)\n" +
        "".join(f"{p['patch']} {p['file']} {p['status']}\n" for p in patches))

    lib = root / LIB_DIR.lstrip("/")
    lib.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(module_file, lib / "docklet_image.py")
    sbin = root / "usr/local/sbin"
    sbin.mkdir(parents=True, exist_ok=True)
    for name, args, what in (("docklet-setup", ["setup"], "configure Docklet for this machine"),
                             ("docklet-service", ["service"],
                              "start/stop Docklet's master and worker for systemd")):
        (sbin / name).write_text(LAUNCHER.format(what=what, lib=LIB_DIR, args=args))
        os.chmod(sbin / name, 0o755)
    shim = root / "sbin/mount.aufs"
    if s["DOCKLET_UNIONFS"] == "overlay":
        shim.parent.mkdir(parents=True, exist_ok=True)
        shim.write_text(LAUNCHER.format(
            what="aufs -> overlayfs: docklet mounts container roots with -t aufs, which "
                 "current kernels lack", lib=LIB_DIR, args=["mount-aufs"]))
        os.chmod(shim, 0o755)
    for sub in ("local", "global"):
        (root / s.fs_prefix.lstrip("/") / sub).mkdir(parents=True, exist_ok=True)


def install_system(root: Path, s: Settings) -> None:
    """install.d: system settings (sysctl, modules, cgroup v1, nginx, lxc-net, etcd), units."""
    def write(rel: str, text: str, mode: int = 0o644) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        os.chmod(p, mode)

    write("etc/sysctl.d/60-docklet.conf",
          "# dib docklet element: containers reach the outside through the host (NAT)\n"
          "net.ipv4.ip_forward=1\n")
    write("etc/modules-load.d/docklet.conf",
          "# dib docklet element: loop (volume pool), overlay (container roots), Open vSwitch,\n"
          "# device-mapper (LVM), fuse (lxcfs)\nloop\noverlay\nopenvswitch\ndm_mod\nfuse\n")
    grub = root / "etc/default/grub.d/60-docklet.cfg"
    if s["DOCKLET_CGROUP"] == "v1":
        write("etc/default/grub.d/60-docklet.cfg",
              "# dib docklet element: docklet's container limits and monitoring use cgroup v1\n"
              'GRUB_CMDLINE_LINUX="${GRUB_CMDLINE_LINUX:-} systemd.unified_cgroup_hierarchy=0"\n')
    elif grub.exists():
        grub.unlink()
    # docklet's daemons run as root and still call "sudo lxc-ls" every few seconds: no
    # syslog line and no PAM session (journal noise) for root's own sudo
    write("etc/sudoers.d/docklet",
          "# dib docklet element: docklet's root daemons run sudo every few seconds\n"
          "Defaults:root !syslog, !pam_session\n", 0o440)
    lxc_net = root / "etc/default/lxc-net"
    text = lxc_net.read_text() if lxc_net.is_file() else ""
    text, n = re.subn(r'(?m)^USE_LXC_BRIDGE=.*$', 'USE_LXC_BRIDGE="false"', text)
    if not n:
        text += 'USE_LXC_BRIDGE="false"\n'
    write("etc/default/lxc-net", text)
    if s.has_master:
        default_site = root / "etc/nginx/sites-enabled/default"
        if default_site.is_symlink() or default_site.exists():
            default_site.unlink()
        # single-mode defaults until docklet-setup knows the machine's address
        write("etc/default/etcd", render_etcd_default(s, "127.0.0.1"))
    install_units(root, s)


# -- pinned Python packages and the compatibility shim ----------------------------------------

SITECUSTOMIZE = "sitecustomize.py"


def _pin_names(pins: Sequence[str]) -> List[Tuple[str, str]]:
    out = []
    for pin in pins:
        m = re.match(r"^([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==([A-Za-z0-9.*+!_-]+)$", pin)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def install_pylib(pylib: Path, pins: Sequence[str], *, shim: Path, wheel_cache: Path,
                  wheelhouse: str = "", index_url: str = "", offline: bool = False,
                  cert: str = "", python: str = "python3") -> None:
    """pip --target the pins into ``pylib`` from local wheels (``wheelhouse``, then the wheel
    cache); download into the cache only what is missing (never when ``offline``)."""
    if pylib.exists():
        shutil.rmtree(pylib)
    pylib.mkdir(parents=True)
    shutil.copyfile(shim, pylib / SITECUSTOMIZE)
    if sys.version_info >= (3, 13):
        # httprest.py imports cgi (unused), which Python 3.13 removed
        (pylib / "cgi.py").write_text("# dib docklet element: placeholder for the removed cgi "
                                      "module (docklet imports it, never uses it)\n")
    if not pins:
        log("DOCKLET_PY_PINS is empty: no pinned packages (the distribution's versions are "
            "used, which docklet may not work with)")
        return
    wheel_cache.mkdir(parents=True, exist_ok=True)
    links = [d for d in (wheelhouse, os.fspath(wheel_cache)) if d]
    # the build host's pip settings pass into the chroot, where their paths do not exist
    env = {k: v for k, v in os.environ.items()
           if k not in ("PIP_CERT", "PIP_FIND_LINKS", "PIP_CONFIG_FILE", "PIP_TARGET",
                        "PIP_PREFIX", "PIP_USER", "PYTHONPATH", "REQUESTS_CA_BUNDLE",
                        "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")}
    if cert:
        # pip's requests prefers REQUESTS_CA_BUNDLE over --cert/PIP_CERT: set both
        env.update(PIP_CERT=cert, REQUESTS_CA_BUNDLE=cert, SSL_CERT_FILE=cert)
        log(f"pip trusts the build host's CA bundle ({cert})")
    pip = [python, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    local = [*pip, "install", "--no-deps", "--no-index", "--no-cache-dir", "--no-compile",
             "--target", os.fspath(pylib)]
    for d in links:
        local += ["--find-links", d]
    proc = subprocess.run([*local, *pins], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        if offline:
            raise DockletError("offline build: the pinned Python packages are not all in "
                               f"{' or '.join(links)}:\n    {_tail(proc.stderr)}",
                               hint="build once online (the wheels are cached), or give "
                                    "DOCKLET_PIP_WHEELHOUSE")
        log(f"downloading {' '.join(pins)} into the wheel cache {wheel_cache}")
        dl = [*pip, "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
              "--dest", os.fspath(wheel_cache)]
        if index_url:
            dl += ["--index-url", index_url]
        got = subprocess.run([*dl, *pins], capture_output=True, text=True, env=env)
        if got.returncode != 0:
            raise DockletError(f"cannot download {' '.join(pins)}:\n    {_tail(got.stderr)}",
                               hint="the build's chroot needs the Python package index (or "
                                    "DOCKLET_PIP_INDEX_URL, DOCKLET_PIP_WHEELHOUSE)")
        shutil.rmtree(pylib)
        pylib.mkdir(parents=True)
        shutil.copyfile(shim, pylib / SITECUSTOMIZE)
        proc = subprocess.run([*local, *pins], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise DockletError(f"pip install --target {pylib} failed:\n    "
                               f"{_tail(proc.stderr)}")
    shutil.rmtree(pylib / "bin", ignore_errors=True)
    for name, want in _pin_names(pins):
        found = _installed_version(pylib, name)
        if found != want:
            raise DockletError(f"{name} in {pylib} is {found or 'missing'}, not {want}")
    log(f"pinned into {pylib}: {' '.join(pins)}")


def _installed_version(pylib: Path, name: str) -> str:
    norm = re.sub(r"[-_.]+", "_", name).lower()
    for meta in pylib.glob("*.dist-info/METADATA"):
        stem = meta.parent.name[:-len(".dist-info")]
        dist = re.sub(r"[-_.]+", "_", stem.rsplit("-", 1)[0]).lower()
        if dist == norm:
            for line in meta.read_text(errors="replace").splitlines():
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
    return ""


# -- basefs ------------------------------------------------------------------------------------

SSH_DEFAULT = """
# dib docklet element: the basefs ships no ssh host keys (every container would share them);
# each container makes its own the first time ssh starts.
if ! ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1; then
    ssh-keygen -A >/dev/null 2>&1 || true
fi
"""

JUPYTER_STUB = '''#!/usr/bin/python3
# dib docklet element: placeholder for jupyterhub-singleuser. This basefs was built with
# DOCKLET_BASEFS_JUPYTER=0, so the Docklet "workspace" shows this page instead of Jupyter.
import http.server
import sys

port, ip = 10000, "0.0.0.0"
for arg in sys.argv[1:]:
    if arg.startswith("--port="):
        port = int(arg.split("=", 1)[1])
    elif arg.startswith("--ip="):
        ip = arg.split("=", 1)[1] or ip
PAGE = (b"<html><head><title>Docklet workspace</title></head><body><h1>No Jupyter here</h1>"
        b"<p>This Docklet basefs has no Jupyter (DOCKLET_BASEFS_JUPYTER=0). Use the node "
        b"over ssh, or rebuild the image with DOCKLET_BASEFS_JUPYTER=1.</p></body></html>")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer((ip, port), Handler).serve_forever()
'''


def basefs_packages(s: Settings) -> List[str]:
    pkgs = list(BASEFS_PACKAGES)
    if s["DOCKLET_BASEFS_JUPYTER"] == "1":
        pkgs += JUPYTER_PACKAGES
    pkgs += s["DOCKLET_BASEFS_PACKAGES"].replace(",", " ").split()
    return list(dict.fromkeys(pkgs))


def finish_basefs(basefs: Path, source: Path, s: Settings) -> List[str]:
    """Make a root filesystem fit for docklet's containers (any origin; idempotent):
    no ssh host keys (regenerated per container), start_jupyter.sh, a jupyterhub-singleuser
    (or a placeholder), no gettys on ttys a container lacks, DNS if DOCKLET_BASEFS_DNS.
    Returns what it did, for the log."""
    done = []
    if not basefs.is_dir():
        raise DockletError(f"no basefs at {basefs}")
    for key in sorted((basefs / "etc/ssh").glob("ssh_host_*")):
        key.unlink()
        done.append(f"removed {key.relative_to(basefs)}")
    default_ssh = basefs / "etc/default/ssh"
    current = default_ssh.read_text() if default_ssh.is_file() else ""
    if MARK not in current and "dib docklet element" not in current:
        default_ssh.parent.mkdir(parents=True, exist_ok=True)
        default_ssh.write_text(current + SSH_DEFAULT)
        done.append("etc/default/ssh generates host keys on first ssh start")
    jdir = basefs / "home/jupyter"
    jdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "tools/start_jupyter.sh", jdir / "start_jupyter.sh")
    os.chmod(jdir / "start_jupyter.sh", 0o755)
    done.append("home/jupyter/start_jupyter.sh")
    has_jupyter = any((basefs / d / "jupyterhub-singleuser").exists()
                      for d in ("usr/bin", "usr/local/bin", "bin"))
    stub = basefs / "usr/local/bin/jupyterhub-singleuser"
    if not has_jupyter or (stub.is_file() and "dib docklet element" in stub.read_text()):
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text(JUPYTER_STUB)
        os.chmod(stub, 0o755)
        done.append("usr/local/bin/jupyterhub-singleuser placeholder (no Jupyter)")
    inittab = basefs / "etc/inittab"
    if inittab.is_file():
        text = inittab.read_text()
        new = re.sub(r"(?m)^([1-6]:\d+:respawn:\S*getty\b.*)$",
                     r"#\1  # " + MARK + ": containers have no ttys", text)
        if new != text:
            inittab.write_text(new)
            done.append("etc/inittab: no gettys")
    dns = s["DOCKLET_BASEFS_DNS"].split()
    if dns:
        resolv = basefs / "etc/resolv.conf"
        if resolv.is_symlink():
            resolv.unlink()
        resolv.write_text("".join(f"nameserver {x}\n" for x in dns))
        done.append("etc/resolv.conf from DOCKLET_BASEFS_DNS")
    for rel in ("var/lib/dib-build",):
        shutil.rmtree(basefs / rel, ignore_errors=True)
    lists = basefs / "var/lib/apt/lists"
    if lists.is_dir():
        for p in lists.iterdir():
            if p.is_file() and p.name != "lock":
                p.unlink()
    for p in (basefs / "var/cache/apt").glob("*.bin"):
        p.unlink()
    # no timestamp: the same inputs give the same tree (dib's layer cache keys on content)
    (basefs / "etc/docklet-basefs").write_text(
        f"made fit for docklet by the dib docklet element (DOCKLET_BASEFS="
        f"{s['DOCKLET_BASEFS']})\n")
    return done


def _download(url: str, cache_root: Path, offline: bool) -> Path:
    dest = cache_root / "basefs-tarballs" / (hashlib.sha256(url.encode()).hexdigest()[:16] +
                                             "-" + re.sub(r"[^A-Za-z0-9._-]", "_",
                                                          url.rsplit("/", 1)[-1])[-60:])
    if dest.is_file():
        return dest
    if offline:
        raise DockletError(f"offline build: {url} is not in the cache ({dest})")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".tmp.{os.getpid()}")
    log(f"downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
        os.replace(tmp, dest)
    except (OSError, urllib.error.URLError) as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise DockletError(f"cannot download DOCKLET_BASEFS_TARBALL={url}: {exc}") from None
    return dest


def place_basefs(tree: Path, s: Settings, env: Mapping[str, str], *, source: Path,
                 cache_root: Path, offline: bool,
                 bootstrap: Optional[Callable[[Path, Dict[str, str]], None]] = None) -> str:
    """Host side: put the basefs at <tree>/<FS_PREFIX>/local/basefs and finish it."""
    kind = s["DOCKLET_BASEFS"]
    local = tree / s.fs_prefix.lstrip("/") / "local"
    basefs = local / "basefs"
    if kind == "none":
        log("DOCKLET_BASEFS=none: no basefs in the image")
        return "none"
    if basefs.exists():
        shutil.rmtree(basefs)
    local.mkdir(parents=True, exist_ok=True)
    if kind == "tarball":
        tb = s["DOCKLET_BASEFS_TARBALL"]
        path = _download(tb, cache_root, offline) if re.match(r"^https?://", tb) else Path(tb)
        proc = subprocess.run(["tar", "--numeric-owner", "-xpf", os.fspath(path), "-C",
                               os.fspath(local), "basefs"], capture_output=True, text=True)
        if proc.returncode != 0 or not basefs.is_dir():
            raise DockletError(f"DOCKLET_BASEFS_TARBALL={tb}: cannot extract a top-level "
                               f"basefs/ directory:\n    {_tail(proc.stderr)}",
                               hint="the tarball must hold basefs/ (like upstream's "
                                    "basefs-0.11.tar.bz2)")
    elif kind == "dir":
        basefs.mkdir()
        proc = subprocess.run(["cp", "-a", "--", s["DOCKLET_BASEFS_DIR"].rstrip("/") + "/.",
                               os.fspath(basefs) + "/"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise DockletError(f"cannot copy DOCKLET_BASEFS_DIR: {_tail(proc.stderr)}")
    else:
        basefs.mkdir()
        (bootstrap or run_bootstrap)(basefs, bootstrap_env(s, env, cache_root))
    if not any(basefs.iterdir()):
        raise DockletError(f"the basefs ({kind}) is empty")
    for line in finish_basefs(basefs, source, s):
        log(f"basefs: {line}")
    return kind


def bootstrap_env(s: Settings, env: Mapping[str, str], cache_root: Path) -> Dict[str, str]:
    """The environment for dib's bootstrap (python -m dib.bootstrap) making the basefs: the
    basefs distribution and packages, its own cache (so it never evicts the image's)."""
    out = dict(env)
    distro, release = s["DOCKLET_BASEFS_DISTRO"], s["DOCKLET_BASEFS_RELEASE"]
    for k in ("TMP_HOOKS_PATH", "DIB_DEBOOTSTRAP_EXTRA_ARGS", "DIB_MMDEBSTRAP_EXTRA_ARGS",
              "DIB_DEBIAN_DEBOOTSTRAP_SCRIPT", "TARGET_ROOT"):
        out.pop(k, None)
    if distro != env.get("DISTRO_NAME"):
        for k in ("DIB_DISTRIBUTION_MIRROR", "DIB_DEBIAN_DISTRIBUTION_MIRROR",
                  "DIB_DEBIAN_SECURITY_MIRROR", "DIB_APT_SOURCES_CONF", "DIB_APT_KEYRING",
                  "DIB_DEBIAN_KEYRING"):
            out.pop(k, None)
    if s["DOCKLET_BASEFS_MIRROR"]:
        out["DIB_DISTRIBUTION_MIRROR"] = s["DOCKLET_BASEFS_MIRROR"]
        out.pop("DIB_APT_SOURCES_CONF", None)
    out.update({
        "DISTRO_NAME": distro, "DIB_RELEASE": release,
        "DIB_DEBOOTSTRAP_INCLUDE": ",".join(basefs_packages(s)),
        "DIB_IMAGE_CACHE": os.fspath(cache_root / "basefs"),
        "DIB_LOCKFILES": os.fspath(cache_root / "basefs" / "lockfiles"),
    })
    return out


def run_bootstrap(target: Path, env: Dict[str, str]) -> None:
    env = dict(env, TARGET_ROOT=os.fspath(target))
    python = env.get("DIB_PYTHON_EXEC") or sys.executable
    if subprocess.run([python, "-c", "import dib.bootstrap"], env=env,
                      capture_output=True).returncode != 0:
        repo = Path(__file__).resolve()
        for d in os.environ.get("IMAGE_ELEMENT_YAML", "").splitlines():
            if d.startswith("docklet:"):
                repo = Path(d.split(":", 1)[1].strip())
        env["PYTHONPATH"] = os.fspath(repo.parent.parent)
    log(f"building the basefs ({env['DISTRO_NAME']} {env['DIB_RELEASE']}, "
        f"{env['DIB_DEBOOTSTRAP_INCLUDE']}) in {target}")
    proc = subprocess.run([python, "-m", "dib.bootstrap"], env=env)
    if proc.returncode != 0:
        raise DockletError("building the basefs failed (see the bootstrap output above)",
                           hint="DOCKLET_BASEFS=tarball|dir|none avoid the bootstrap")


# -- boot time: docklet-setup ------------------------------------------------------------------

def _ip_json(args: Sequence[str]) -> list:
    proc = subprocess.run(["ip", "-j", *args], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    return json.loads(proc.stdout)


def pick_network(routes: list, addrs: list, want_device: str = "auto",
                 want_ip: str = "auto") -> Tuple[str, str, str]:
    """(device, IPv4, how) from ``ip -j route show default`` and ``ip -j -4 addr`` output.

    auto: the default route's interface; else the first interface that is up with a global
    IPv4 address; else the loopback interface (single-host use only)."""
    by_dev: Dict[str, List[str]] = {}
    up: Dict[str, bool] = {}
    for link in addrs:
        name = link.get("ifname", "")
        up[name] = "UP" in link.get("flags", []) or link.get("operstate") == "UP"
        for a in link.get("addr_info", []):
            if a.get("family") == "inet" and a.get("local"):
                by_dev.setdefault(name, []).append(a["local"])
    if want_device != "auto":
        ips = by_dev.get(want_device, [])
        ip = want_ip if want_ip != "auto" else (ips[0] if ips else "")
        return want_device, ip, "configured"
    for r in routes:
        dev = r.get("dev")
        if r.get("dst", "default") == "default" and dev and by_dev.get(dev):
            return dev, want_ip if want_ip != "auto" else by_dev[dev][0], "default route"
    for link in addrs:
        name = link.get("ifname", "")
        if name != "lo" and up.get(name) and by_dev.get(name):
            return name, want_ip if want_ip != "auto" else by_dev[name][0], "first interface up"
    return "lo", want_ip if want_ip != "auto" else "127.0.0.1", "no network: loopback"


def detect_network(s: Settings, wait: float = 30.0) -> Tuple[str, str, str]:
    deadline = time.monotonic() + wait
    while True:
        dev, ip, how = pick_network(_ip_json(["route", "show", "default"]),
                                    _ip_json(["-4", "addr", "show"]),
                                    s["DOCKLET_NETWORK_DEVICE"], s["DOCKLET_PUBLIC_IP"])
        if ip and (how != "no network: loopback" or time.monotonic() > deadline):
            return dev, ip, how
        if s["DOCKLET_NETWORK_DEVICE"] != "auto" and time.monotonic() > deadline:
            raise DockletError(f"DOCKLET_NETWORK_DEVICE={dev} has no IPv4 address")
        time.sleep(2)


def auth_key(root: Path, s: Settings) -> str:
    if s["DOCKLET_AUTH_KEY"]:
        return s["DOCKLET_AUTH_KEY"]
    path = root / AUTH_KEY_FILE.lstrip("/")
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    key = secrets.token_hex(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    log(f"generated a new auth key in {AUTH_KEY_FILE}")
    return key


def host_nameservers(root: Path) -> List[str]:
    """The machine's real upstream DNS servers (not a local stub resolver)."""
    for rel in ("run/systemd/resolve/resolv.conf", "etc/resolv.conf"):
        p = root / rel
        if not p.is_file():
            continue
        servers = []
        for line in p.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                try:
                    if not ipaddress.ip_address(parts[1]).is_loopback:
                        servers.append(parts[1])
                except ValueError:
                    continue
        if servers:
            return servers
    return []


def setup(root: Path, *, network: Optional[Tuple[str, str, str]] = None,
          run: Callable[[Sequence[str]], int] = lambda argv: subprocess.run(argv).returncode
          ) -> Dict[str, str]:
    """docklet-setup.service: render this machine's configuration (idempotent)."""
    env_path = root / ENV_FILE.lstrip("/")
    if not env_path.is_file():
        raise DockletError(f"{ENV_FILE} is missing; the image was not built by the docklet "
                           "element?")
    s = settings_from_env(parse_env_file(env_path.read_text()))
    dev, ip, how = network or detect_network(s)
    log(f"network: {dev} {ip} ({how})")
    if how.startswith("no network"):
        log("WARNING: no network interface with an IPv4 address; docklet runs on the "
            "loopback interface (this machine only)")
    key = auth_key(root, s)
    pairs = conf_values(s, device=dev, ip=ip, auth_key=key)
    home = root / s.home.lstrip("/")
    conf = home / "conf/docklet.conf"
    template = conf.read_text() if conf.is_file() else \
        (home / "conf/docklet.conf.template").read_text()
    conf.write_text(render_conf(template, pairs, note=f"rendered by docklet-setup at boot: "
                                f"{dev} {ip} ({how})"))
    os.chmod(conf, 0o640)
    if s.has_master:
        (root / "etc/default").mkdir(parents=True, exist_ok=True)
        (root / "etc/default/etcd").write_text(render_etcd_default(s, ip))
    fs = root / s.fs_prefix.lstrip("/")
    for sub in ("local/run", "local/log", "local/temp", "local/volume", "global"):
        (fs / sub).mkdir(parents=True, exist_ok=True)
    if s.has_worker:
        basefs = fs / "local/basefs"
        servers = s["DOCKLET_BASEFS_DNS"].split() or host_nameservers(root)
        if basefs.is_dir() and servers:
            resolv = basefs / "etc/resolv.conf"
            if resolv.is_symlink():
                resolv.unlink()
            resolv.parent.mkdir(parents=True, exist_ok=True)
            resolv.write_text("# written by docklet-setup\n" +
                              "".join(f"nameserver {x}\n" for x in servers))
        for module in ("loop", "overlay", "openvswitch", "dm_mod"):
            if run(["modprobe", module]) != 0:
                log(f"WARNING: modprobe {module} failed")
        if s["DOCKLET_STORAGE"] == "file":
            check_loop0(root, fs)
    portal = dict(pairs)["PORTAL_URL"]
    issue = root / "etc/issue.d/docklet.issue"
    if s.has_master:
        issue.parent.mkdir(parents=True, exist_ok=True)
        issue.write_text(f"Docklet portal: {portal}/  (user root; password in "
                         f"{s.fs_prefix}/local/generated_password.txt)\n\n")
        log(f"portal: {portal}/")
    return dict(pairs)


def check_loop0(root: Path, fs: Path) -> None:
    """docklet's volume pool is hard-wired to /dev/loop0: it must be free or ours."""
    if root != Path("/"):
        return
    if not os.path.exists("/dev/loop0"):
        subprocess.run(["losetup", "-f"], capture_output=True)
    proc = subprocess.run(["losetup", "-n", "-O", "BACK-FILE", "/dev/loop0"],
                          capture_output=True, text=True)
    backing = proc.stdout.strip()
    if proc.returncode == 0 and backing and \
            os.path.realpath(backing) != os.path.realpath(fs / "local/docklet-storage"):
        raise DockletError(f"/dev/loop0 is in use ({backing}); docklet's volume pool needs it",
                           hint="free /dev/loop0 (snaps?) or use DOCKLET_STORAGE=disk")


# -- boot time: master / worker for systemd ----------------------------------------------------

def _port_open(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _etcd_get(etcd: str, cluster: str, key: str) -> Optional[str]:
    try:
        with urllib.request.urlopen(f"http://{etcd}/v2/keys/{cluster}/{key}", timeout=5) as r:
            return json.loads(r.read().decode())["node"].get("value")
    except (OSError, ValueError, KeyError, urllib.error.URLError):
        return None


def _log_tail(fs: Path, names: Sequence[str], n: int = 25) -> str:
    out = []
    for name in names:
        p = fs / "local/log" / name
        if p.is_file():
            lines = p.read_text(errors="replace").splitlines()[-n:]
            out.append(f"--- last lines of {p}:\n" + "\n".join(lines))
    return "\n".join(out)


def _load_runtime(root: Path) -> Settings:
    return settings_from_env(parse_env_file((root / ENV_FILE.lstrip("/")).read_text()))


def _conf(root: Path, s: Settings) -> Dict[str, str]:
    conf = root / s.home.lstrip("/") / "conf/docklet.conf"
    return loadenv(conf.read_text()) if conf.is_file() else {}


def wait_master(root: Path, timeout: Optional[float] = None, interval: float = 3.0) -> str:
    """Until etcd knows the master, global/token matches etcd's token and the master port
    answers (the worker reads the token once and exits on a mismatch)."""
    s = _load_runtime(root)
    timeout = float(s["DOCKLET_START_TIMEOUT"]) if timeout is None else timeout
    fs = root / s.fs_prefix.lstrip("/")
    cluster, etcd = s["DOCKLET_CLUSTER_NAME"], s.etcd
    deadline = time.monotonic() + timeout
    state = "etcd does not answer"
    while time.monotonic() < deadline:
        master = _etcd_get(etcd, cluster, "service/master")
        token = _etcd_get(etcd, cluster, "token")
        tokfile = fs / "global/token"
        local = tokfile.read_text().strip() if tokfile.is_file() else None
        if master is None:
            state = f"no {cluster}/service/master in etcd at {etcd}"
        elif local is None:
            state = f"{tokfile} does not exist (is {s.fs_prefix}/global shared?)"
        elif token != local:
            state = f"{tokfile} does not match etcd's token yet"
        elif not _port_open(master, s.port("MASTER")):
            state = f"the master {master}:{s.port('MASTER')} does not answer"
        else:
            log(f"master {master} is up")
            return master
        time.sleep(interval)
    raise DockletError(f"gave up waiting for the docklet master after {timeout:.0f} s: {state}")


def service(root: Path, role: str, action: str, *, timeout: Optional[float] = None) -> None:
    """ExecStart/ExecStop of docklet-master and docklet-worker."""
    s = _load_runtime(root)
    home = root / s.home.lstrip("/")
    fs = root / s.fs_prefix.lstrip("/")
    timeout = float(s["DOCKLET_START_TIMEOUT"]) if timeout is None else timeout
    script = home / ("bin/docklet-supermaster" if role == "master" else "bin/docklet-worker")
    env = dict(os.environ, PYTHONPATH=s.pylib if root == Path("/") else
               os.environ.get("PYTHONPATH", ""))
    if action == "stop":
        subprocess.run([os.fspath(script), "stop"], env=env)
        return
    if action != "start":
        raise DockletError(f"unknown action {action}")
    conf = _conf(root, s)
    if role == "master":
        marker = fs / "local/.docklet-initialized"
        sub = "start" if marker.exists() else "init"
        log(f"docklet-supermaster {sub}" + (" (first start: a new cluster)" if sub == "init"
                                            else " (recovery)"))
        rc = subprocess.run([os.fspath(script), sub], env=env).returncode
        if rc != 0:
            raise DockletError(f"docklet-supermaster {sub} exited with {rc}\n" +
                               _log_tail(fs, ["docklet-user.log", "docklet-web.log",
                                              "docklet-master.log"]))
        checks = [("127.0.0.1", int(conf.get("WEB_PORT", s.port("WEB"))), "web"),
                  ("127.0.0.1", int(conf.get("MASTER_PORT", s.port("MASTER"))), "master")]
        ok = _wait_ports(checks, timeout, lambda: (fs / "global/token").is_file())
        if not ok:
            raise DockletError(f"the docklet master did not come up in {timeout:.0f} s\n" +
                               _log_tail(fs, ["docklet-user.log", "docklet-web.log",
                                              "docklet-master.log"]))
        if sub == "init":
            marker.write_text(f"initialized {datetime.datetime.now():%Y-%m-%d %H:%M:%S}\n")
        pw = fs / "local/generated_password.txt"
        log(f"docklet master is up; portal {conf.get('PORTAL_URL', '?')}/ (user root, "
            f"password in {pw if pw.is_file() else 'the user database'})")
    else:
        rc = subprocess.run([os.fspath(script), "start"], env=env).returncode
        if rc != 0:
            raise DockletError(f"docklet-worker start exited with {rc}\n" +
                               _log_tail(fs, ["docklet-worker.log"]))
        ip = conf.get("PUBLIC_IP", "127.0.0.1")
        checks = [(ip, int(conf.get("WORKER_PORT", s.port("WORKER"))), "worker")]
        if not _wait_ports(checks, timeout, lambda: True):
            raise DockletError(f"the docklet worker did not come up in {timeout:.0f} s\n" +
                               _log_tail(fs, ["docklet-worker.log"]))
        log("docklet worker is up")


def _wait_ports(checks: Sequence[Tuple[str, int, str]], timeout: float,
                extra: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_port_open(h, p, 1.0) for h, p, _ in checks) and extra():
            return True
        time.sleep(1)
    return False


# -- /sbin/mount.aufs -------------------------------------------------------------------------

@dataclass(frozen=True)
class AufsMount:
    target: str
    upper: str
    lowers: Tuple[str, ...]
    readonly: bool = False

    def overlay_argv(self) -> List[str]:
        opts = [f"lowerdir={':'.join(self.lowers)}", f"upperdir={self.upper}/.ovl-upper",
                f"workdir={self.upper}/.ovl-work"]
        if self.readonly:
            opts.insert(0, "ro")
        return ["mount", "-i", "-t", "overlay", "overlay", "-o", ",".join(opts), self.target]


def parse_aufs_args(argv: Sequence[str]) -> AufsMount:
    """mount(8) calls ``mount.aufs SOURCE TARGET [-sfnv] [-o OPTIONS] [-t TYPE]``; docklet's
    options are ``br=<layer>=rw:<packagefs>=ro+wh:<basefs>=ro+wh,udba=reval``."""
    positional, options = [], []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-o", "-t", "-N"):
            if i + 1 >= len(argv):
                raise DockletError(f"mount.aufs: {a} needs a value")
            if a == "-o":
                options.append(argv[i + 1])
            i += 2
            continue
        if a.startswith("-o") and len(a) > 2:
            options.append(a[2:])
        elif a.startswith("-"):
            pass  # -s -f -n -v: nothing to do for overlay
        else:
            positional.append(a)
        i += 1
    if len(positional) != 2:
        raise DockletError(f"mount.aufs: expected SOURCE TARGET, got {positional}")
    target = positional[1].rstrip("/") or "/"
    branches: Optional[str] = None
    readonly = False
    for opt in ",".join(options).split(","):
        if opt.startswith(("br=", "br:", "dirs=")):
            branches = opt.split("=", 1)[1] if opt.startswith(("br=", "dirs=")) else opt[3:]
        elif opt == "ro":
            readonly = True
    if not branches:
        raise DockletError("mount.aufs: no br= option (the aufs branch list)")
    upper, lowers = None, []
    for i, br in enumerate(branches.split(":")):
        if not br:
            continue
        path, _, perm = br.partition("=")
        perm = perm or ("rw" if i == 0 else "ro")
        path = path.rstrip("/") or "/"
        if "," in path or ":" in path:
            raise DockletError(f"mount.aufs: branch path {path!r} cannot go to overlayfs")
        if perm.split("+")[0] == "rw":
            if upper is not None:
                raise DockletError("mount.aufs: overlayfs has one writable branch, "
                                   f"got {upper} and {path}")
            upper = path
        else:
            lowers.append(path)
    if upper is None:
        if not lowers:
            raise DockletError("mount.aufs: empty branch list")
        return AufsMount(target, "", tuple(lowers), True)
    if not lowers:
        raise DockletError("mount.aufs: overlayfs needs at least one read-only branch")
    return AufsMount(target, upper, tuple(lowers), readonly)


def mount_aufs(argv: Sequence[str]) -> int:
    spec = parse_aufs_args(argv)
    if not spec.upper:
        args = ["mount", "-i", "-t", "overlay", "overlay", "-o",
                f"ro,lowerdir={':'.join(spec.lowers)}", spec.target]
    else:
        for d in (".ovl-upper", ".ovl-work"):
            os.makedirs(os.path.join(spec.upper, d), exist_ok=True)
        args = spec.overlay_argv()
    proc = subprocess.run(args)
    return proc.returncode


# -- command line ------------------------------------------------------------------------------

def _env_settings(host_checks: bool = False) -> Settings:
    s = settings_from_env(os.environ, host_checks=host_checks)
    for w in s.warnings:
        log(f"WARNING: {w}")
    return s


def _offline() -> bool:
    return os.environ.get("DIB_OFFLINE", "").strip() not in ("", "0")


def _cache_root() -> Path:
    base = os.environ.get("DIB_IMAGE_CACHE") or os.path.expanduser("~/.cache/image-create")
    return Path(base) / "docklet"


def cmd_fetch_source(args) -> None:
    s = _env_settings(host_checks=True)
    dest = Path(args.dest)
    repo, ref = s["DOCKLET_REPO"], s["DOCKLET_REF"]
    log(f"source: {repo} at {ref}")
    info = fetch_source(repo, ref, dest, _cache_root(), offline=_offline())
    check_layout(dest, repo)
    results = apply_patches(dest, strict=s["DOCKLET_STRICT_PATCH"] == "1")
    for r in results:
        log(f"patch {r.line()}")
    (dest / SOURCE_META).write_text(json.dumps(info.__dict__, indent=2) + "\n")
    (dest / PATCH_META).write_text(json.dumps([r.__dict__ for r in results], indent=2) + "\n")
    log(f"source ready: {info.kind} {info.commit or ''} version {info.version or '?'}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["mount-aufs"]:
        try:
            return mount_aufs(argv[1:])
        except DockletError as exc:
            print(f"mount.aufs: {exc}", file=sys.stderr)
            return 32
    ap = argparse.ArgumentParser(prog="docklet_image.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check", help="validate the DOCKLET_* settings")
    p = sub.add_parser("fetch-source", help="fetch, validate and patch the source")
    p.add_argument("dest")
    p = sub.add_parser("basefs", help="place the basefs into the tree (host)")
    p.add_argument("tree")
    p.add_argument("source")
    p = sub.add_parser("install", help="install the staged source and config (chroot)")
    p.add_argument("stage")
    p.add_argument("--root", default="/")
    p = sub.add_parser("pylib", help="pinned Python packages and shim (chroot)")
    p.add_argument("--shim", required=True)
    p.add_argument("--wheel-cache", required=True)
    p.add_argument("--wheelhouse", default="")
    p.add_argument("--cert", default="", help="CA bundle for pip (the build host's)")
    p.add_argument("--root", default="/")
    p = sub.add_parser("system", help="system settings and units (chroot)")
    p.add_argument("--root", default="/")
    p = sub.add_parser("setup", help="configure for this machine (boot)")
    p.add_argument("--root", default="/")
    p = sub.add_parser("service", help="start/stop master or worker (systemd)")
    p.add_argument("role", choices=("master", "worker", "wait-master"))
    p.add_argument("action", nargs="?", default="start", choices=("start", "stop"))
    p.add_argument("--root", default="/")
    p = sub.add_parser("wait-master", help="wait until the master is up")
    p.add_argument("--root", default="/")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "check":
            s = _env_settings(host_checks=True)
            log(f"settings OK: mode {s.mode}, basefs {s['DOCKLET_BASEFS']}, "
                f"source {s['DOCKLET_REPO']} ({s['DOCKLET_REF']})")
        elif args.cmd == "fetch-source":
            cmd_fetch_source(args)
        elif args.cmd == "basefs":
            s = _env_settings(host_checks=True)
            place_basefs(Path(args.tree), s, os.environ, source=Path(args.source),
                         cache_root=_cache_root(), offline=_offline())
        elif args.cmd == "install":
            s = _env_settings()
            install_tree(Path(args.root), Path(args.stage), s,
                         module_file=Path(__file__).resolve())
        elif args.cmd == "pylib":
            s = _env_settings()
            root = Path(args.root)
            install_pylib(root / s.pylib.lstrip("/"), s.pins, shim=Path(args.shim),
                          wheel_cache=Path(args.wheel_cache), wheelhouse=args.wheelhouse,
                          index_url=s["DOCKLET_PIP_INDEX_URL"], offline=_offline(),
                          cert=args.cert)
        elif args.cmd == "system":
            install_system(Path(args.root), _env_settings())
        elif args.cmd == "setup":
            setup(Path(args.root))
        elif args.cmd == "service":
            if args.role == "wait-master":
                wait_master(Path(args.root))
            else:
                service(Path(args.root), args.role, args.action)
        elif args.cmd == "wait-master":
            wait_master(Path(args.root))
    except DockletError as exc:
        print(f"ERROR: docklet: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
