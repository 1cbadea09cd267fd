"""docklet element: what runs in the booted image -- docklet-setup (network, auth key,
docklet.conf, etcd), docklet-service (init on the first start, start afterwards, readiness,
the worker's wait for the master) -- against a temporary root and the synthetic tree's stub
daemons. No root needed."""
from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.lib import docklet_tree

di = docklet_tree.element_module()
BOOKWORM = {"DISTRO_NAME": "debian", "DIB_RELEASE": "bookworm"}


# -- network detection -----------------------------------------------------------------------

LO = {"ifname": "lo", "flags": ["LOOPBACK", "UP"],
      "addr_info": [{"family": "inet", "local": "127.0.0.1"}]}
ENS3 = {"ifname": "ens3", "flags": ["BROADCAST", "UP"], "operstate": "UP",
        "addr_info": [{"family": "inet", "local": "10.0.2.15"}]}
ENS4 = {"ifname": "ens4", "flags": ["BROADCAST", "UP"],
        "addr_info": [{"family": "inet", "local": "192.0.2.7"}]}


def test_default_route_interface_wins():
    routes = [{"dst": "default", "gateway": "192.0.2.1", "dev": "ens4"}]
    assert di.pick_network(routes, [LO, ENS3, ENS4]) == ("ens4", "192.0.2.7", "default route")


def test_no_default_route_takes_the_first_interface_up():
    assert di.pick_network([], [LO, ENS3, ENS4]) == ("ens3", "10.0.2.15",
                                                     "first interface up")


def test_no_network_falls_back_to_loopback():
    assert di.pick_network([], [LO]) == ("lo", "127.0.0.1", "no network: loopback")


def test_configured_device_and_address():
    assert di.pick_network([], [LO, ENS3], "ens3") == ("ens3", "10.0.2.15", "configured")
    assert di.pick_network([], [LO, ENS3], "auto", "203.0.113.5") == \
        ("ens3", "203.0.113.5", "first interface up")


# -- docklet-setup ---------------------------------------------------------------------------

def make_root(tmp_path: Path, **settings) -> Path:
    """An image root as the element leaves it (the tree installed, /etc/docklet written)."""
    root = tmp_path / "root"
    stage = docklet_tree.write_tree(tmp_path / "stage")
    di.apply_patches(stage)
    s = di.settings_from_env({**BOOKWORM, **settings})
    di.install_tree(root, stage, s, package_dir=docklet_tree.PACKAGE)
    (root / "opt/docklet/local/basefs/etc").mkdir(parents=True)
    return root


def test_setup_single_mode(tmp_path):
    root = make_root(tmp_path)
    (root / "run/systemd/resolve").mkdir(parents=True)
    (root / "run/systemd/resolve/resolv.conf").write_text(
        "nameserver 127.0.0.53\nnameserver 192.0.2.53\n")
    modprobed = []
    values = di.setup(root, network=("ens3", "10.0.2.15", "default route"),
                      run=lambda argv: modprobed.append(argv[1]) or 0)
    conf = di.loadenv((root / "home/docklet/conf/docklet.conf").read_text())
    assert conf["NETWORK_DEVICE"] == "ens3" and conf["PUBLIC_IP"] == "10.0.2.15"
    assert conf["PORTAL_URL"] == "http://10.0.2.15:8080" == values["PORTAL_URL"]
    key = (root / "etc/docklet/auth_key").read_text().strip()
    assert conf["AUTH_KEY"] == key and len(key) == 48
    assert oct((root / "etc/docklet/auth_key").stat().st_mode & 0o777) == "0o600"
    assert "ETCD_ENABLE_V2=true" in (root / "etc/default/etcd").read_text()
    assert {"loop", "overlay", "openvswitch"} <= set(modprobed)
    assert (root / "opt/docklet/local/basefs/etc/resolv.conf").read_text().endswith(
        "nameserver 192.0.2.53\n")
    assert "http://10.0.2.15:8080/" in (root / "etc/issue.d/docklet.issue").read_text()
    for d in ("local/run", "local/log", "global"):
        assert (root / "opt/docklet" / d).is_dir()


def test_setup_is_idempotent_and_keeps_the_auth_key(tmp_path):
    root = make_root(tmp_path)
    di.setup(root, network=("ens3", "10.0.2.15", "default route"), run=lambda a: 0)
    key = (root / "etc/docklet/auth_key").read_text()
    di.setup(root, network=("ens3", "10.0.2.99", "default route"), run=lambda a: 0)
    text = (root / "home/docklet/conf/docklet.conf").read_text()
    assert (root / "etc/docklet/auth_key").read_text() == key
    assert text.count(di.CONF_BEGIN) == 1 and "PUBLIC_IP=10.0.2.99" in text
    assert "10.0.2.15" not in text


def test_setup_master_mode_etcd_and_given_key(tmp_path):
    root = make_root(tmp_path, DOCKLET_MODE="master", DOCKLET_AUTH_KEY="shared-secret-123")
    di.setup(root, network=("ens3", "192.0.2.10", "default route"), run=lambda a: 0)
    etcd = (root / "etc/default/etcd").read_text()
    assert "ETCD_ADVERTISE_CLIENT_URLS=http://192.0.2.10:2379" in etcd
    assert "ETCD_LISTEN_CLIENT_URLS=http://0.0.0.0:2379" in etcd
    conf = di.loadenv((root / "home/docklet/conf/docklet.conf").read_text())
    assert conf["AUTH_KEY"] == "shared-secret-123"
    assert not (root / "etc/docklet/auth_key").exists()


def test_setup_worker_mode_has_no_etcd_or_portal(tmp_path):
    root = make_root(tmp_path, DOCKLET_MODE="worker", DOCKLET_ETCD="192.0.2.10:2379",
                     DOCKLET_AUTH_KEY="shared-secret-123", DOCKLET_BASEFS_DNS="192.0.2.53")
    di.setup(root, network=("ens3", "192.0.2.11", "default route"), run=lambda a: 0)
    conf = di.loadenv((root / "home/docklet/conf/docklet.conf").read_text())
    assert conf["ETCD"] == "192.0.2.10:2379"
    assert not (root / "etc/default/etcd").exists()
    assert not (root / "etc/issue.d/docklet.issue").exists()
    assert "nameserver 192.0.2.53" in \
        (root / "opt/docklet/local/basefs/etc/resolv.conf").read_text()


def test_setup_without_the_env_file(tmp_path):
    with pytest.raises(di.DockletError, match="docklet.env is missing"):
        di.setup(tmp_path, network=("lo", "127.0.0.1", "x"))


def test_host_nameservers_skips_stub_resolvers(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/resolv.conf").write_text("nameserver 127.0.0.53\noptions edns0\n")
    assert di.host_nameservers(tmp_path) == []
    (tmp_path / "etc/resolv.conf").write_text("nameserver ::1\nnameserver 2001:db8::53\n")
    assert di.host_nameservers(tmp_path) == ["2001:db8::53"]


# -- docklet-service with the stub daemons ---------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeEtcd:
    """Just enough of etcd's v2 keys API: GET /v2/keys/<cluster>/<key>."""

    def __init__(self, cluster: str):
        self.values = {}
        prefix = f"/v2/keys/{cluster}/"
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                key = self.path[len(prefix):] if self.path.startswith(prefix) else None
                if key not in outer.values:
                    self.send_response(404)
                    self.end_headers()
                    return
                body = json.dumps({"action": "get", "node": {
                    "key": f"/{cluster}/{key}", "value": outer.values[key]}}).encode()
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_root(tmp_path):
    """An image root whose docklet.conf points FS_PREFIX at the temporary root (the stub
    scripts use it) and uses free ports; a fake etcd."""
    etcd = FakeEtcd("docklet-vc")
    ports = {"WEB": free_port(), "MASTER": free_port(), "WORKER": free_port(),
             "NGINX": free_port(), "PROXY": free_port(), "PROXY_API": free_port()}
    root = make_root(tmp_path, DOCKLET_ETCD=f"127.0.0.1:{etcd.port}",
                     DOCKLET_START_TIMEOUT="30", DOCKLET_EXTRA_CONF=f"USER_PORT={free_port()}",
                     **{f"DOCKLET_{k}_PORT": str(v) for k, v in ports.items()})
    di.setup(root, network=("lo", "127.0.0.1", "test"), run=lambda a: 0)
    conf = root / "home/docklet/conf/docklet.conf"
    conf.write_text(conf.read_text().replace("FS_PREFIX=/opt/docklet",
                                             f"FS_PREFIX={root}/opt/docklet"))
    try:
        yield root, etcd, ports
    finally:
        for name in ("web", "master", "worker", "user"):
            pid = root / f"opt/docklet/local/run/docklet-{name}.pid"
            if pid.is_file():
                try:
                    os.kill(int(pid.read_text()), 15)
                except (OSError, ValueError):
                    pass
        etcd.close()


def test_master_init_once_then_start(stub_root):
    root, _, ports = stub_root
    fs = root / "opt/docklet"
    di.service(root, "master", "start")
    assert (fs / "local/.docklet-initialized").is_file()
    # the user server listens 2 s after it starts: the patched supermaster waits for it
    assert (fs / "local/synthetic-master-starts").read_text().splitlines() == ["new user-up"]
    assert di.runtime._port_open("127.0.0.1", ports["MASTER"])
    proxy = (fs / "local/log/docklet-proxy.log").read_text()
    assert f"--default-target=http://127.0.0.1:{ports['WEB']}" in proxy, \
        "the patched proxy target follows WEB_PORT"
    di.service(root, "master", "stop")
    for _ in range(50):
        if not di.runtime._port_open("127.0.0.1", ports["MASTER"], 0.2):
            break
        time.sleep(0.1)
    di.service(root, "master", "start")
    assert (fs / "local/synthetic-master-starts").read_text().splitlines() == \
        ["new user-up", "recovery user-up"]
    di.service(root, "master", "stop")


def test_master_that_does_not_come_up_fails_with_its_log(stub_root):
    root, _, _ = stub_root
    stubd = root / "home/docklet/src/utils/stubd.py"
    stubd.write_text("import sys\nif sys.argv[sys.argv.index('--name') + 1] == 'master':\n"
                     "    print('Traceback: synthetic import error')\n    sys.exit(1)\n" +
                     docklet_tree.STUBD)
    with pytest.raises(di.DockletError) as exc:
        di.service(root, "master", "start", timeout=3)
    text = str(exc.value)
    assert "did not come up in 3 s" in text and "synthetic import error" in text
    assert not (root / "opt/docklet/local/.docklet-initialized").exists(), \
        "a failed init is retried as init"


def test_worker_waits_for_the_master_then_starts(stub_root):
    root, etcd, ports = stub_root
    fs = root / "opt/docklet"
    with pytest.raises(di.DockletError, match="no docklet-vc/service/master in etcd"):
        di.wait_master(root, timeout=1, interval=0.2)
    di.service(root, "master", "start")
    etcd.values["service/master"] = "127.0.0.1"
    etcd.values["token"] = "stale"
    with pytest.raises(di.DockletError, match="does not match etcd's token"):
        di.wait_master(root, timeout=1, interval=0.2)
    etcd.values["token"] = (fs / "global/token").read_text().strip()
    assert di.wait_master(root, timeout=5, interval=0.2) == "127.0.0.1"
    di.service(root, "worker", "start")
    assert di.runtime._port_open("127.0.0.1", ports["WORKER"])
    home = root / "home/docklet"
    assert (home / "conf/container.conf").read_text() == \
        (home / "conf/container/lxc3.container.conf").read_text(), \
        "the patched fallback picks the lxc3 config"
    di.service(root, "worker", "stop")
    di.service(root, "master", "stop")


def test_worker_start_failure_shows_the_log(stub_root):
    root, _, _ = stub_root
    # no global/token: the synthetic worker refuses, like docklet's
    with pytest.raises(di.DockletError, match="docklet-worker start exited with 1"):
        di.service(root, "worker", "start", timeout=2)


def test_wait_master_reports_a_dead_master_port(stub_root):
    root, etcd, ports = stub_root
    fs = root / "opt/docklet"
    (fs / "global/token").write_text("t-1\n")
    etcd.values.update({"service/master": "127.0.0.1", "token": "t-1"})
    with pytest.raises(di.DockletError, match=f"127.0.0.1:{ports['MASTER']} does not answer"):
        di.wait_master(root, timeout=1, interval=0.2)
