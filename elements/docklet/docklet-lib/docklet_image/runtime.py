"""Booted image: docklet-setup (network, auth key, docklet.conf, etcd at every boot) and
docklet-service (start, stop and readiness of the master and the worker for systemd)."""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .base import AUTH_KEY_FILE, ENV_FILE, DockletError, log
from .render import conf_values, loadenv, render_conf, render_etcd_default
from .settings import Settings, parse_env_file, settings_from_env


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
