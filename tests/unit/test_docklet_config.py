"""docklet element: what it writes into the image (docklet.conf, etcd, units per mode, system
files, the basefs, the pinned packages), run against temporary trees without root."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.lib import docklet_tree

di = docklet_tree.element_module()
BOOKWORM = {"DISTRO_NAME": "debian", "DIB_RELEASE": "bookworm"}


def settings(**kw):
    return di.settings_from_env({**BOOKWORM, **kw})


WORKER = dict(DOCKLET_MODE="worker", DOCKLET_ETCD="192.0.2.10:2379",
              DOCKLET_AUTH_KEY="shared-secret-123")
MASTER = dict(DOCKLET_MODE="master", DOCKLET_AUTH_KEY="shared-secret-123")


# -- docklet.conf ----------------------------------------------------------------------------

def sh_values(path: Path, keys):
    script = f'. "{path}"; ' + "; ".join(f'printf "%s\\0" "${k}"' for k in keys)
    out = subprocess.run(["sh", "-c", script], capture_output=True, check=True).stdout
    return dict(zip(keys, out.decode().split("\0")[:-1]))


def test_conf_parses_identically_for_sh_and_docklet(tmp_path):
    s = settings(DOCKLET_EXTRA_CONF="LOG_LEVEL=INFO CONTAINER_MEMORY=2000")
    pairs = di.conf_values(s, device="ens3", ip="10.0.2.15", auth_key="k" * 48)
    template = docklet_tree.tree_files()["conf/docklet.conf.template"]
    conf = tmp_path / "docklet.conf"
    conf.write_text(di.render_conf(template, pairs))
    py = di.loadenv(conf.read_text())
    keys = [k for k, _ in pairs]
    assert sh_values(conf, keys) == {k: py[k] for k in keys} == dict(pairs)
    assert py["PORTAL_URL"] == "http://10.0.2.15:8080"
    assert py["NETWORK_DEVICE"] == "ens3" and py["ETCD"] == "127.0.0.1:2379"
    assert py["LOG_LEVEL"] == "INFO" and py["PYTHONPATH"] == "/usr/local/lib/docklet/pylib"
    assert "export PYTHONPATH" in conf.read_text()
    assert not any('"' in v or "'" in v for v in py.values())


def test_conf_rerender_replaces_the_block(tmp_path):
    s = settings()
    template = docklet_tree.tree_files()["conf/docklet.conf.template"]
    first = di.render_conf(template, di.conf_values(s, device="eth0", ip="192.0.2.1",
                                                    auth_key="a" * 20))
    second = di.render_conf(first, di.conf_values(s, device="ens4", ip="192.0.2.2",
                                                  auth_key="a" * 20))
    assert second.count(di.CONF_BEGIN) == 1 and second.count(di.CONF_END) == 1
    assert "192.0.2.1" not in second and "PUBLIC_IP=192.0.2.2" in second
    assert second.startswith(template.rstrip("\n"))


def test_conf_values_explicit_portal_and_disk():
    s = settings(DOCKLET_PORTAL_URL="https://docklet.example.org", DOCKLET_STORAGE="disk",
                 DOCKLET_DISK="/dev/vdb")
    d = dict(di.conf_values(s, device="eth0", ip="192.0.2.1", auth_key="a" * 20))
    assert d["PORTAL_URL"] == "https://docklet.example.org"
    assert (d["STORAGE"], d["DISK"]) == ("disk", "/dev/vdb")


# -- etcd ------------------------------------------------------------------------------------

def test_etcd_single_mode_is_loopback_with_v2():
    text = di.render_etcd_default(settings(), "10.0.2.15")
    assert "ETCD_ENABLE_V2=true" in text
    assert "ETCD_LISTEN_CLIENT_URLS=http://127.0.0.1:2379" in text
    assert "ETCD_ADVERTISE_CLIENT_URLS=http://127.0.0.1:2379" in text
    assert "ETCD_NAME=docklet" in text


def test_etcd_master_mode_listens_everywhere_and_advertises_its_address():
    text = di.render_etcd_default(settings(**MASTER), "192.0.2.10")
    assert "ETCD_LISTEN_CLIENT_URLS=http://0.0.0.0:2379" in text
    assert "ETCD_ADVERTISE_CLIENT_URLS=http://192.0.2.10:2379" in text
    assert "ETCD_INITIAL_CLUSTER=docklet=http://127.0.0.1:2380" in text


# -- units -----------------------------------------------------------------------------------

MATRIX = {
    "single": {"docklet-setup.service", "etcd.service", "docklet-master.service",
               "docklet-worker.service"},
    "master": {"docklet-setup.service", "etcd.service", "docklet-master.service"},
    "worker": {"docklet-setup.service", "docklet-worker.service"},
}


@pytest.mark.parametrize("mode", list(MATRIX))
def test_units_per_mode(mode):
    s = settings(**{"single": {}, "master": MASTER, "worker": WORKER}[mode])
    assert {u for u, _ in di.enabled_units(s)} == MATRIX[mode]
    units = di.render_units(s)
    assert ("docklet-master.service" in units) == (mode != "worker")
    assert ("docklet-worker.service" in units) == (mode != "master")
    assert ("etcd.service.d/50-docklet.conf" in units) == (mode != "worker")
    setup = units["docklet-setup.service"]
    assert "Type=oneshot" in setup and "RemainAfterExit=yes" in setup
    assert "After=network-online.target" in setup
    assert ("etcd.service" in setup) == (mode != "worker")


def test_master_and_worker_unit_ordering():
    units = di.render_units(settings())
    master, worker = units["docklet-master.service"], units["docklet-worker.service"]
    assert "Requires=docklet-setup.service etcd.service openvswitch-switch.service" in master
    assert "Type=forking" in master
    assert "PIDFile=/opt/docklet/local/run/docklet-master.pid" in master
    assert "Environment=PYTHONPATH=/usr/local/lib/docklet/pylib" in master
    assert "ExecStart=/usr/local/sbin/docklet-service master start" in master
    assert "After=docklet-setup.service openvswitch-switch.service docklet-master.service" in worker
    assert "Requires=docklet-setup.service openvswitch-switch.service" in worker
    assert "ExecStartPre=/usr/local/sbin/docklet-service wait-master" in worker
    assert "PIDFile=/opt/docklet/local/run/docklet-worker.pid" in worker
    assert "ConditionPathIsDirectory=/opt/docklet/local/basefs" in worker
    assert "KillMode=process" in worker
    # the start timeout covers the wait for the master plus the worker's own start
    assert "TimeoutStartSec=1080" in worker


def test_global_fs_mount_unit():
    s = settings(**WORKER, DOCKLET_GLOBAL_FS="nfs:192.0.2.10:/srv/docklet-global",
                 DOCKLET_FS_PREFIX="/opt/dock-let")
    name, text = di.global_mount_unit(s)
    assert name == "opt-dock\\x2dlet-global.mount"
    assert "What=192.0.2.10:/srv/docklet-global" in text and "Type=nfs" in text
    assert "Where=/opt/dock-let/global" in text
    assert "RequiresMountsFor=/opt/dock-let/global" in di.render_units(s)["docklet-worker.service"]
    assert (name, "remote-fs.target") in di.enabled_units(s)


def test_systemd_escape_matches_systemd():
    assert di.systemd_escape_path("/opt/docklet/global") == "opt-docklet-global"
    assert di.systemd_escape_path("/a-b/c.d/.e") == "a\\x2db-c.d-.e"
    assert di.systemd_escape_path("/.x") == "\\x2ex"


def fake_system_root(root: Path, with_etcd: bool = True) -> Path:
    """The unit files and configs the distribution packages would have installed."""
    lib = root / "lib/systemd/system"
    lib.mkdir(parents=True)
    for unit in ("nginx.service", "openvswitch-switch.service", "lxc.service") + \
            (("etcd.service",) if with_etcd else ()):
        (lib / unit).write_text("[Unit]\n")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "nginx.service").symlink_to("/lib/systemd/system/nginx.service")
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/default/lxc-net").write_text('USE_LXC_BRIDGE="true"\nLXC_ADDR="10.0.3.1"\n')
    (root / "etc/nginx/sites-enabled").mkdir(parents=True)
    (root / "etc/nginx/sites-enabled/default").symlink_to("/etc/nginx/sites-available/default")
    return root


def wanted(root: Path):
    return {p.name for p in (root / "etc/systemd/system/multi-user.target.wants").iterdir()}


def test_install_system_single(tmp_path):
    root = fake_system_root(tmp_path / "root")
    di.install_system(root, settings())
    assert wanted(root) == MATRIX["single"] | {"nginx.service"}
    link = root / "etc/systemd/system/multi-user.target.wants/etcd.service"
    assert os.readlink(link) == "/lib/systemd/system/etcd.service"
    assert os.readlink(root / "etc/systemd/system/multi-user.target.wants/docklet-master.service") \
        == "/etc/systemd/system/docklet-master.service"
    assert "ETCD_ENABLE_V2=true" in (root / "etc/default/etcd").read_text()
    assert not (root / "etc/nginx/sites-enabled/default").is_symlink()
    lxc_net = (root / "etc/default/lxc-net").read_text()
    assert 'USE_LXC_BRIDGE="false"' in lxc_net and "true" not in lxc_net
    assert "net.ipv4.ip_forward=1" in (root / "etc/sysctl.d/60-docklet.conf").read_text()
    modules = (root / "etc/modules-load.d/docklet.conf").read_text().split()
    assert {"loop", "overlay", "openvswitch", "dm_mod", "fuse"} <= set(modules)
    grub = (root / "etc/default/grub.d/60-docklet.cfg").read_text()
    assert "systemd.unified_cgroup_hierarchy=0" in grub
    # what grub-mkconfig would see after the bootloader element's own settings
    out = subprocess.run(["sh", "-c", 'GRUB_CMDLINE_LINUX=""; . "$1"; echo "$GRUB_CMDLINE_LINUX"',
                          "x", os.fspath(root / "etc/default/grub.d/60-docklet.cfg")],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "systemd.unified_cgroup_hierarchy=0"


def test_install_system_worker_and_unified_cgroup(tmp_path):
    root = fake_system_root(tmp_path / "root", with_etcd=False)
    di.install_system(root, settings(**WORKER, DOCKLET_CGROUP="unified"))
    assert wanted(root) == MATRIX["worker"], "nginx is not started in worker mode"
    assert not (root / "etc/default/etcd").exists()
    assert not (root / "etc/default/grub.d/60-docklet.cfg").exists()


def test_install_system_fails_clearly_without_a_unit(tmp_path):
    root = fake_system_root(tmp_path / "root", with_etcd=False)
    with pytest.raises(di.DockletError, match="cannot enable etcd.service"):
        di.install_system(root, settings())


# -- the tree --------------------------------------------------------------------------------

@pytest.fixture
def stage(tmp_path):
    """What extra-data.d leaves in the hooks tree: the patched source plus its records."""
    st = docklet_tree.write_tree(tmp_path / "stage", modes=False)
    results = di.apply_patches(st)
    (st / di.SOURCE_META).write_text(json.dumps(
        {"repo": "/src/docklet", "ref": "master", "kind": "git-local", "commit": "abc123",
         "version": "synthetic-1"}))
    (st / di.PATCH_META).write_text(json.dumps([r.__dict__ for r in results]))
    return st


def test_install_tree(tmp_path, stage):
    root = tmp_path / "root"
    s = settings()
    di.install_tree(root, stage, s, package_dir=docklet_tree.PACKAGE)
    home = root / "home/docklet"
    for rel in ("bin/docklet-supermaster", "bin/docklet-master", "bin/docklet-worker",
                "tools/nginx_config.sh", "conf/lxc-script/lxc-ifup", "src/master/httprest.py"):
        assert os.access(home / rel, os.X_OK), rel
    assert not (home / di.SOURCE_META).exists() and not (home / di.PATCH_META).exists()
    assert (home / "web/templates/home.html").read_text() == \
        (home / "web/templates/home.template").read_text()
    container = (home / "conf/container.conf").read_text()
    assert container == (home / "conf/container/lxc3.container.conf").read_text()
    assert "lxc.network." not in container
    conf = di.loadenv((home / "conf/docklet.conf").read_text())
    assert conf["FS_PREFIX"] == "/opt/docklet" and "AUTH_KEY" not in conf
    assert oct((home / "conf/docklet.conf").stat().st_mode & 0o777) == "0o640"
    info = (root / "etc/docklet/source-info").read_text()
    assert "commit=abc123" in info and "version=synthetic-1" in info
    patches = (root / "etc/docklet/patches").read_text()
    assert "lxc3-config-fallback bin/docklet-worker applied" in patches
    assert patches.count("proxy-default-target") == 3
    assert "wait-for-user-server bin/docklet-supermaster applied" in patches
    env = di.parse_env_file((root / "etc/docklet/docklet.env").read_text())
    assert env["DOCKLET_MODE"] == "single" and "DOCKLET_REPO" not in env
    assert oct((root / "etc/docklet/docklet.env").stat().st_mode & 0o777) == "0o600"
    for cmd in ("usr/local/sbin/docklet-setup", "usr/local/sbin/docklet-service",
                "sbin/mount.aufs"):
        assert os.access(root / cmd, os.X_OK), cmd
        assert (root / cmd).read_text().startswith("#!/usr/bin/python3 -I\n")
    installed = root / "usr/local/lib/docklet/docklet_image"
    files = docklet_tree.package_files()
    assert sorted(p for p in installed.rglob("*") if p.is_file()) == \
        [installed / p.relative_to(docklet_tree.PACKAGE) for p in files]
    for p in files:
        assert (installed / p.relative_to(docklet_tree.PACKAGE)).read_text() == p.read_text()
    assert not (root / "usr/local/lib/docklet/docklet_image.py").exists()
    assert (root / "opt/docklet/local").is_dir() and (root / "opt/docklet/global").is_dir()


def test_install_tree_without_overlay_shim(tmp_path, stage):
    root = tmp_path / "root"
    di.install_tree(root, stage, settings(DOCKLET_UNIONFS="aufs"),
                    package_dir=docklet_tree.PACKAGE)
    assert not (root / "sbin/mount.aufs").exists()


def test_launcher_runs_the_installed_module(tmp_path, stage):
    """/usr/local/sbin/docklet-setup imports the module from /usr/local/lib/docklet: run its
    text against a copy of the module in a temporary directory."""
    root = tmp_path / "root"
    di.install_tree(root, stage, settings(), package_dir=docklet_tree.PACKAGE)
    text = (root / "usr/local/sbin/docklet-service").read_text()
    text = text.replace(repr(di.LIB_DIR), repr(os.fspath(root / "usr/local/lib/docklet")))
    launcher = tmp_path / "launcher"
    launcher.write_text(text.replace("#!/usr/bin/python3 -I", f"#!{sys.executable} -I"))
    os.chmod(launcher, 0o755)
    proc = subprocess.run([os.fspath(launcher), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "wait-master" in proc.stdout


# -- the basefs ------------------------------------------------------------------------------

def tree_content(root: Path) -> dict:
    return {os.fspath(p.relative_to(root)): (p.stat().st_mode, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def test_finish_basefs(tmp_path):
    base = tmp_path / "basefs"
    with tarfile.open(docklet_tree.make_basefs_tarball(tmp_path / "b.tar.gz")) as t:
        t.extractall(tmp_path)
    source = docklet_tree.write_tree(tmp_path / "src")
    done = di.finish_basefs(base, source, settings(DOCKLET_BASEFS_DNS="192.0.2.53"))
    assert not list((base / "etc/ssh").glob("ssh_host_*"))
    assert "ssh-keygen -A" in (base / "etc/default/ssh").read_text()
    assert os.access(base / "home/jupyter/start_jupyter.sh", os.X_OK)
    stub = base / "usr/local/bin/jupyterhub-singleuser"
    assert os.access(stub, os.X_OK) and "DOCKLET_BASEFS_JUPYTER=0" in stub.read_text()
    assert "#1:2345:respawn:/sbin/getty" in (base / "etc/inittab").read_text()
    assert (base / "etc/resolv.conf").read_text() == "nameserver 192.0.2.53\n"
    assert any("removed etc/ssh/ssh_host_rsa_key" == d for d in done)
    # idempotent, and the same inputs give the same content (dib's layer cache keys on it)
    before = tree_content(base)
    again = di.finish_basefs(base, source, settings(DOCKLET_BASEFS_DNS="192.0.2.53"))
    assert tree_content(base) == before
    assert (base / "etc/default/ssh").read_text().count("ssh-keygen -A") == 1
    assert not any(d.startswith("removed") for d in again)
    assert (base / "etc/inittab").read_text().count("#1:") == 1


def test_jupyter_stub_serves_a_page(tmp_path):
    import socket
    import time
    import urllib.request
    stub = tmp_path / "stub"
    stub.write_text(di.JUPYTER_STUB)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, os.fspath(stub), f"--port={port}",
                             "--ip=127.0.0.1", "--base-url=/workspace/root"])
    try:
        for _ in range(50):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/x", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        assert b"No Jupyter here" in body
    finally:
        proc.terminate()
        proc.wait()


def test_finish_basefs_keeps_a_real_jupyter(tmp_path):
    base = tmp_path / "basefs"
    (base / "usr/bin").mkdir(parents=True)
    (base / "usr/bin/jupyterhub-singleuser").write_text("#!/bin/sh\n")
    di.finish_basefs(base, docklet_tree.write_tree(tmp_path / "src"), settings())
    assert not (base / "usr/local/bin/jupyterhub-singleuser").exists()


def test_place_basefs_tarball(tmp_path):
    tree = tmp_path / "tree"
    tb = docklet_tree.make_basefs_tarball(tmp_path / "basefs.tar.gz")
    s = settings(DOCKLET_BASEFS="tarball", DOCKLET_BASEFS_TARBALL=os.fspath(tb))
    di.place_basefs(tree, s, {}, source=docklet_tree.write_tree(tmp_path / "src"),
                    cache_root=tmp_path / "cache", offline=False)
    base = tree / "opt/docklet/local/basefs"
    assert (base / "etc/os-release").is_file() and os.access(base / "sbin/init", os.X_OK)
    assert not list((base / "etc/ssh").glob("ssh_host_*"))


def test_place_basefs_tarball_without_basefs_dir(tmp_path):
    tb = docklet_tree.make_basefs_tarball(tmp_path / "rootfs.tar.gz", top="rootfs")
    s = settings(DOCKLET_BASEFS="tarball", DOCKLET_BASEFS_TARBALL=os.fspath(tb))
    with pytest.raises(di.DockletError, match="top-level\nbasefs/|basefs/ directory"):
        di.place_basefs(tmp_path / "tree", s, {}, source=tmp_path, cache_root=tmp_path,
                        offline=False)


def test_place_basefs_dir_and_none(tmp_path):
    src = tmp_path / "rootfs"
    (src / "etc").mkdir(parents=True)
    (src / "etc/os-release").write_text("ID=x\n")
    s = settings(DOCKLET_BASEFS="dir", DOCKLET_BASEFS_DIR=os.fspath(src))
    di.place_basefs(tmp_path / "tree", s, {}, source=docklet_tree.write_tree(tmp_path / "s"),
                    cache_root=tmp_path, offline=False)
    assert (tmp_path / "tree/opt/docklet/local/basefs/etc/os-release").is_file()
    assert di.place_basefs(tmp_path / "t2", settings(DOCKLET_BASEFS="none"), {},
                           source=tmp_path, cache_root=tmp_path, offline=False) == "none"
    assert not (tmp_path / "t2/opt/docklet/local/basefs").exists()


def test_place_basefs_debootstrap_calls_the_bootstrap(tmp_path):
    calls = []

    def fake_bootstrap(target, env):
        calls.append((target, env))
        (target / "etc/ssh").mkdir(parents=True)
        (target / "etc/ssh/ssh_host_rsa_key").write_text("x")
        (target / "var/lib/dib-build").mkdir(parents=True)

    env = {**BOOKWORM, "TMP_HOOKS_PATH": "/hooks", "DIB_DISTRIBUTION_MIRROR": "http://m/debian",
           "DIB_MMDEBSTRAP_EXTRA_ARGS": "--foo", "DIB_IMAGE_CACHE": "/c"}
    s = settings(DOCKLET_BASEFS_PACKAGES="vim-tiny,htop")
    di.place_basefs(tmp_path / "tree", s, env, source=docklet_tree.write_tree(tmp_path / "s"),
                    cache_root=tmp_path / "cache/docklet", offline=False,
                    bootstrap=fake_bootstrap)
    (target, benv), = calls
    assert target == tmp_path / "tree/opt/docklet/local/basefs"
    include = benv["DIB_DEBOOTSTRAP_INCLUDE"].split(",")
    assert {"sysvinit-core", "openssh-server", "python3", "vim-tiny", "htop"} <= set(include)
    assert "TMP_HOOKS_PATH" not in benv and "DIB_MMDEBSTRAP_EXTRA_ARGS" not in benv
    assert benv["DIB_DISTRIBUTION_MIRROR"] == "http://m/debian", "the image's own mirror"
    assert benv["DIB_IMAGE_CACHE"] == os.fspath(tmp_path / "cache/docklet/basefs")
    assert not (target / "var/lib/dib-build").exists()
    assert not (target / "etc/ssh/ssh_host_rsa_key").exists()


def test_bootstrap_env_other_distro_drops_the_image_mirror(tmp_path):
    s = settings(DOCKLET_BASEFS_DISTRO="ubuntu", DOCKLET_BASEFS_RELEASE="noble",
                 DOCKLET_BASEFS_JUPYTER="1")
    env = di.bootstrap_env(s, {**BOOKWORM, "DIB_DISTRIBUTION_MIRROR": "http://m/debian"},
                           tmp_path)
    assert (env["DISTRO_NAME"], env["DIB_RELEASE"]) == ("ubuntu", "noble")
    assert "DIB_DISTRIBUTION_MIRROR" not in env
    assert "jupyterhub" in env["DIB_DEBOOTSTRAP_INCLUDE"]
    env = di.bootstrap_env(settings(DOCKLET_BASEFS_MIRROR="http://other/debian"), BOOKWORM,
                           tmp_path)
    assert env["DIB_DISTRIBUTION_MIRROR"] == "http://other/debian"


# -- pinned packages -------------------------------------------------------------------------

FAKE_PIP = r"""#!/usr/bin/env python3
# a stand-in for "python3 -m pip" (records calls; installs fake dist-info)
import os, sys, json
args = sys.argv[3:] if sys.argv[1:3] == ["-m", "pip"] else sys.argv[1:]
with open(os.environ["FAKE_PIP_LOG"], "a") as f:
    f.write(json.dumps(args + ["CA=" + os.environ.get("REQUESTS_CA_BUNDLE", "") + ","
                               + os.environ.get("PIP_CERT", "")]) + "\n")
def opt(name):
    return [args[i + 1] for i, a in enumerate(args) if a == name]
pins = [a for a in args if "==" in a]
if "download" in args:
    if os.environ.get("FAKE_PIP_NO_NET"):
        sys.exit("ERROR: No matching distribution found")
    for p in pins:
        n, v = p.split("==")
        open(os.path.join(opt("--dest")[0], f"{n}-{v}-py3-none-any.whl"), "w").close()
    sys.exit(0)
links = opt("--find-links")
have = {f for d in links if os.path.isdir(d) for f in os.listdir(d)}
for p in pins:
    n, v = p.split("==")
    if f"{n}-{v}-py3-none-any.whl" not in have:
        sys.exit(f"ERROR: Could not find a version that satisfies the requirement {p}")
target = opt("--target")[0]
for p in pins:
    n, v = p.split("==")
    d = os.path.join(target, f"{n.replace('-', '_')}-{v}.dist-info")
    os.makedirs(d)
    open(os.path.join(d, "METADATA"), "w").write(f"Name: {n}\nVersion: {v}\n")
"""


@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
    py = tmp_path / "fakepython"
    py.write_text(FAKE_PIP.replace("#!/usr/bin/env python3", f"#!{sys.executable}"))
    os.chmod(py, 0o755)
    log = tmp_path / "pip.log"
    monkeypatch.setenv("FAKE_PIP_LOG", os.fspath(log))
    return py, log


def pip_calls(log):
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def commands(log):
    return [next(a for a in c if a in ("install", "download")) for c in pip_calls(log)]


PINS = ["itsdangerous==2.0.1", "Flask-SQLAlchemy==2.5.1"]


def test_pylib_downloads_once_then_uses_the_wheel_cache(tmp_path, fake_pip, monkeypatch):
    py, log = fake_pip
    cache = tmp_path / "wheels"
    pylib = tmp_path / "root/usr/local/lib/docklet/pylib"
    di.install_pylib(pylib, PINS, shim=docklet_tree.SHIM, wheel_cache=cache,
                     cert=os.fspath(tmp_path / "ca.crt"), python=os.fspath(py))
    calls = pip_calls(log)
    assert commands(log) == ["install", "download", "install"]
    assert "--only-binary=:all:" in calls[1] and "--no-deps" in calls[1]
    assert "--no-index" in calls[2] and "--target" in calls[2]
    ca = os.fspath(tmp_path / "ca.crt")
    assert all(c[-1] == f"CA={ca},{ca}" for c in calls), "pip trusts the staged CA bundle"
    assert (pylib / "sitecustomize.py").read_text() == docklet_tree.SHIM.read_text()
    assert di.pylib._installed_version(pylib, "Flask-SQLAlchemy") == "2.5.1"
    # the next build: nothing to download, even offline
    log.unlink()
    monkeypatch.setenv("FAKE_PIP_NO_NET", "1")
    di.install_pylib(pylib, PINS, shim=docklet_tree.SHIM, wheel_cache=cache, offline=True,
                     python=os.fspath(py))
    assert commands(log) == ["install"]


def test_pylib_offline_without_wheels_fails_clearly(tmp_path, fake_pip):
    py, _ = fake_pip
    with pytest.raises(di.DockletError, match="offline build: the pinned Python packages"):
        di.install_pylib(tmp_path / "pylib", PINS, shim=docklet_tree.SHIM,
                         wheel_cache=tmp_path / "w", offline=True, python=os.fspath(py))


def test_pylib_download_failure_fails_clearly(tmp_path, fake_pip, monkeypatch):
    py, _ = fake_pip
    monkeypatch.setenv("FAKE_PIP_NO_NET", "1")
    with pytest.raises(di.DockletError) as exc:
        di.install_pylib(tmp_path / "pylib", PINS, shim=docklet_tree.SHIM,
                         wheel_cache=tmp_path / "w", python=os.fspath(py))
    assert "cannot download itsdangerous==2.0.1" in str(exc.value)
    assert "DOCKLET_PIP_WHEELHOUSE" in exc.value.hint


def test_pylib_wheelhouse_first_and_no_pins(tmp_path, fake_pip, monkeypatch):
    py, log = fake_pip
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/host/only/ca.crt")  # the build host's
    wh = tmp_path / "wheelhouse"
    wh.mkdir()
    for p in PINS:
        n, v = p.split("==")
        (wh / f"{n}-{v}-py3-none-any.whl").write_text("")
    di.install_pylib(tmp_path / "pylib", PINS, shim=docklet_tree.SHIM,
                     wheel_cache=tmp_path / "w", wheelhouse=os.fspath(wh), python=os.fspath(py))
    (call,) = pip_calls(log)
    assert call[call.index("--find-links") + 1] == os.fspath(wh)
    assert call[-1] == "CA=,", "the host's CA paths do not leak into the chroot"
    di.install_pylib(tmp_path / "p2", [], shim=docklet_tree.SHIM, wheel_cache=tmp_path / "w",
                     python=os.fspath(py))
    assert (tmp_path / "p2/sitecustomize.py").is_file()
    assert len(pip_calls(log)) == 1


# -- the compatibility shim -------------------------------------------------------------------

FAKE_FSA = '''
class SQLAlchemy:
    def __init__(self, app=None):
        self.app = app
    def get_app(self, reference_app=None):
        return reference_app or "current_app"
'''


def run_with_shim(tmp_path, code, fake=True):
    pylib = tmp_path / "pylib"
    pylib.mkdir(exist_ok=True)
    (pylib / "sitecustomize.py").write_text(docklet_tree.SHIM.read_text())
    other = tmp_path / "site"
    if fake:
        (other / "flask_sqlalchemy").mkdir(parents=True, exist_ok=True)
        (other / "flask_sqlalchemy/__init__.py").write_text(FAKE_FSA)
    env = dict(os.environ, PYTHONPATH=f"{pylib}:{other}")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True)


def test_shim_prefers_the_bound_app(tmp_path):
    proc = run_with_shim(tmp_path, "import flask_sqlalchemy as f\n"
                                   "db = f.SQLAlchemy('bound')\n"
                                   "print(db.get_app(), db.get_app('explicit'),"
                                   " f.SQLAlchemy().get_app(),"
                                   " f.SQLAlchemy.get_app._docklet_shim)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["bound", "explicit", "current_app", "True"]


def test_shim_costs_nothing_without_flask_sqlalchemy(tmp_path):
    proc = run_with_shim(tmp_path, "import sys; print('flask_sqlalchemy' in sys.modules)",
                         fake=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "False"


# -- mount.aufs ------------------------------------------------------------------------------

def test_mount_aufs_docklet_call():
    argv = ["none", "/var/lib/lxc/u-1-0/rootfs/", "-o",
            "rw,br=/opt/docklet/local/volume/u-1-0=rw:/opt/docklet/local/packagefs=ro+wh:"
            "/opt/docklet/local/basefs=ro+wh,udba=reval"]
    spec = di.parse_aufs_args(argv)
    assert spec.target == "/var/lib/lxc/u-1-0/rootfs"
    assert spec.upper == "/opt/docklet/local/volume/u-1-0"
    assert spec.lowers == ("/opt/docklet/local/packagefs", "/opt/docklet/local/basefs")
    assert spec.overlay_argv() == [
        "mount", "-i", "-t", "overlay", "overlay", "-o",
        "lowerdir=/opt/docklet/local/packagefs:/opt/docklet/local/basefs,"
        "upperdir=/opt/docklet/local/volume/u-1-0/.ovl-upper,"
        "workdir=/opt/docklet/local/volume/u-1-0/.ovl-work",
        "/var/lib/lxc/u-1-0/rootfs"]


def test_mount_aufs_separate_options_and_flags():
    spec = di.parse_aufs_args(["-n", "none", "/r", "-o", "br=/a=rw:/b=ro", "-o", "udba=reval",
                               "-v"])
    assert (spec.upper, spec.lowers, spec.target) == ("/a", ("/b",), "/r")


@pytest.mark.parametrize("argv, message", [
    (["none", "/r", "-o", "udba=reval"], "no br= option"),
    (["none", "/r", "-o", "br=/a=rw:/b=rw"], "one writable branch"),
    (["none", "/r", "-o", "br=/a=rw"], "at least one read-only branch"),
    (["/r", "-o", "br=/a=rw:/b=ro"], "expected SOURCE TARGET"),
    (["none", "/r", "-o", "br=/a:b=rw:/c=ro"], "overlayfs needs|one writable|cannot go"),
])
def test_mount_aufs_rejects(argv, message):
    with pytest.raises(di.DockletError, match=message):
        di.parse_aufs_args(argv)


def test_mount_aufs_command_reports_errors():
    proc = subprocess.run([sys.executable, os.fspath(docklet_tree.PACKAGE), "mount-aufs",
                           "none", "/r", "-o", "udba=reval"], capture_output=True, text=True)
    assert proc.returncode == 32 and "mount.aufs: mount.aufs: no br= option" in proc.stderr
