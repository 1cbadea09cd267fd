"""The docklet element end to end.

* A synthetic-source image (``debian-minimal docklet -t tar``, built once per session from
  the synthetic tree of tests/lib/docklet_tree.py, basefs from a fixture tarball, no pip):
  the offline checks of docklet.md §3.8 A-D on the extracted tree.
* With the real Docklet source (``DOCKLET_TEST_SOURCE``, a checkout; skipped without it):
  ``vm debian docklet`` is booted under QEMU; a serial-console login runs the
  ``t-docklet-check`` script of the t-docklet-console test element inside the guest
  (services, etcd, the portal login as root, the worker's pool, the aufs shim), then the
  guest reboots once and the checks run again (the second boot must recover, not re-init).
  The first boot also creates and starts a one-node vcluster (the container side).
  Everything talks to 127.0.0.1 inside the guest; the guest's NIC is QEMU's user-mode
  network with ``restrict=on`` (no way out), which gives Docklet a real interface to find.

Both builds share the e2e cache (``DIB_E2E_CACHE``, default /var/tmp/dib-e2e-cache).
"""
from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lib import docklet_tree
from tests.lib.leaks import assert_clean

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("DIB_E2E_CACHE", "/var/tmp/dib-e2e-cache"))
SOURCE = os.environ.get("DOCKLET_TEST_SOURCE", "")
di = docklet_tree.element_module()


def _build(tmp: Path, name: str, env_extra: dict, *args: str) -> Path:
    env = dict(os.environ, ELEMENTS_PATH=str(ROOT / "tests" / "elements"),
               TMP_DIR=str(tmp / "tmp"), DIB_IMAGE_CACHE=str(CACHE), OVERWRITE_OLD_IMAGE="1")
    for k in [k for k in env if k.startswith("DOCKLET_")]:
        del env[k]
    env.update(env_extra)
    out = tmp / name
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "bin" / "disk-image-create"), "-o",
                           str(out), *args], env=env, capture_output=True, text=True,
                          timeout=3600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert_clean(tmp)
    print(f"{name}: built in {time.monotonic() - started:.0f} s")
    return out


# -- the synthetic-source image (offline checks) ---------------------------------------------

@pytest.fixture(scope="module")
def synthetic(scratch):
    """(extracted tree, the synthetic repository) of ``debian-minimal docklet -t tar``."""
    tmp = scratch("docklet-synthetic")
    repo = docklet_tree.make_repo(tmp / "docklet-src")
    tarball = docklet_tree.make_basefs_tarball(tmp / "basefs.tar.gz")
    image = _build(tmp, "docklet", {
        "DOCKLET_REPO": str(repo.path), "DOCKLET_REF": "synthetic-v2",
        "DOCKLET_BASEFS": "tarball", "DOCKLET_BASEFS_TARBALL": str(tarball),
        "DOCKLET_PY_PINS": "",
    }, "-t", "tar", "debian-minimal", "docklet")
    tree = tmp / "tree"
    tree.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xpf", f"{image}.tar", "-C", str(tree),
                    "--exclude=./usr/share/doc", "--exclude=./usr/share/locale",
                    "--exclude=./usr/lib/firmware", "--exclude=./boot"], check=True)
    yield tree, repo
    shutil.rmtree(tree, ignore_errors=True)


def exists(tree: Path, path: str) -> Path:
    p = tree / path.lstrip("/")
    assert p.exists() or p.is_symlink(), f"{path} is missing"
    return p


def test_a_files_and_permissions(synthetic):
    tree, _ = synthetic
    for rel in ("bin/docklet-supermaster", "bin/docklet-master", "bin/docklet-worker",
                "tools/nginx_config.sh", "conf/lxc-script/lxc-ifup", "src/master/httprest.py"):
        assert os.access(exists(tree, f"/home/docklet/{rel}"), os.X_OK), rel
    container = exists(tree, "/home/docklet/conf/container.conf").read_text()
    assert "lxc.net.0" in container and "lxc.network." not in container
    exists(tree, "/home/docklet/web/templates/home.html")
    for rel in ("docklet.env", "source-info", "patches"):
        exists(tree, f"/etc/docklet/{rel}")
    for cmd in ("/usr/local/sbin/docklet-setup", "/usr/local/sbin/docklet-service",
                "/sbin/mount.aufs"):
        assert os.access(exists(tree, cmd), os.X_OK), cmd
    base = exists(tree, "/opt/docklet/local/basefs")
    for rel in ("sbin/init", "etc/os-release", "home/jupyter/start_jupyter.sh"):
        exists(base, rel)
    assert not list((base / "etc/ssh").glob("ssh_host_*")), "no shared ssh host keys"
    exists(tree, "/usr/share/lxc/config/ubuntu.common.conf")
    for cmd in ("/usr/bin/configurable-http-proxy", "/usr/bin/etcd", "/usr/bin/ovs-vsctl",
                "/usr/sbin/lvcreate"):
        exists(tree, cmd)


def test_a_docklet_conf_reads_the_same_for_sh_and_docklet(synthetic):
    tree, _ = synthetic
    conf = exists(tree, "/home/docklet/conf/docklet.conf")
    py = di.loadenv(conf.read_text())
    keys = sorted(py)
    script = f'. "{conf}"; ' + "; ".join(f'printf "%s\\0" "${k}"' for k in keys)
    out = subprocess.run(["sh", "-c", script], capture_output=True, check=True).stdout
    assert dict(zip(keys, out.decode().split("\0"))) == py
    assert py["FS_PREFIX"] == "/opt/docklet" and py["PYTHONPATH"] == "/usr/local/lib/docklet/pylib"


def test_b_config_content(synthetic):
    tree, repo = synthetic
    assert "ETCD_ENABLE_V2=true" in exists(tree, "/etc/default/etcd").read_text()
    assert "net.ipv4.ip_forward=1" in exists(tree, "/etc/sysctl.d/60-docklet.conf").read_text()
    assert "overlay" in exists(tree, "/etc/modules-load.d/docklet.conf").read_text()
    assert not (tree / "etc/nginx/sites-enabled/default").exists()
    assert 'USE_LXC_BRIDGE="false"' in exists(tree, "/etc/default/lxc-net").read_text()
    assert "systemd.unified_cgroup_hierarchy=0" in \
        exists(tree, "/etc/default/grub.d/60-docklet.cfg").read_text()
    patches = exists(tree, "/etc/docklet/patches").read_text()
    assert "lxc3-config-fallback bin/docklet-worker applied" in patches
    assert patches.count("proxy-default-target") == 3 and "missing" not in patches
    assert "wait-for-user-server bin/docklet-supermaster applied" in patches
    worker = exists(tree, "/home/docklet/bin/docklet-worker").read_text()
    assert "LXC_VERSION=3" in worker
    info = exists(tree, "/etc/docklet/source-info").read_text()
    assert f"commit={repo.commits['synthetic-v2']}" in info and "version=synthetic-2" in info
    assert exists(tree, "/home/docklet/VERSION").read_text().strip() == "synthetic-2"


def test_c_units_enabled_for_single_mode(synthetic):
    tree, _ = synthetic
    for unit in ("docklet-setup.service", "docklet-master.service", "docklet-worker.service"):
        exists(tree, f"/etc/systemd/system/{unit}")
    exists(tree, "/etc/systemd/system/etcd.service.d/50-docklet.conf")
    for unit in ("docklet-setup", "etcd", "docklet-master", "docklet-worker", "nginx"):
        proc = subprocess.run(["systemctl", f"--root={tree}", "is-enabled", unit],
                              capture_output=True, text=True)
        assert proc.stdout.strip() == "enabled", (unit, proc.stdout, proc.stderr)


def test_d_packages(synthetic):
    tree, _ = synthetic
    out = subprocess.run(["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W",
                          "-f", "${Package} ${db:Status-Abbrev}\n"],
                         capture_output=True, text=True, check=True).stdout
    installed = {line.split()[0] for line in out.splitlines() if line.split()[1:2] == ["ii"]}
    for pkg in ("lxc", "lxc-templates", "lxcfs", "lvm2", "openvswitch-switch", "nginx",
                "etcd-server", "etcd-client", "node-configurable-http-proxy", "python3-lxc",
                "python3-flask", "python3-pampy", "python3-grpcio", "sysvinit-utils", "sudo"):
        assert pkg in installed, pkg
    for pkg in ("cgmanager", "libcgmanager0", "redis-server", "npm", "git", "python3-pip"):
        assert pkg not in installed, pkg


def test_e_shim_in_the_private_pylib(synthetic):
    tree, _ = synthetic
    shim = exists(tree, "/usr/local/lib/docklet/pylib/sitecustomize.py")
    assert shim.read_text() == docklet_tree.SHIM.read_text()


# -- the real source, booted ---------------------------------------------------------------

needs_source = pytest.mark.skipif(not SOURCE, reason="DOCKLET_TEST_SOURCE is not set: set it "
                                                     "to a checkout of unias/docklet")


class Console:
    """A QEMU guest on a pexpect serial console (root login as in verify.md §2)."""

    PROMPT = "T-DOCKLET-PROMPT# "

    def __init__(self, image: Path, workdir: Path) -> None:
        import pexpect
        self.pexpect = pexpect
        self.overlay = workdir / "overlay.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F",
                        "qcow2", str(self.overlay)], check=True)
        self.log = open(workdir / "serial.log", "w")
        args = ["-accel", "tcg", "-cpu", "max", "-m", "4096", "-smp", "2", "-display", "none",
                "-monitor", "none", "-serial", "stdio",
                "-nic", "user,model=virtio-net-pci,restrict=on",
                "-drive", f"file={self.overlay},if=virtio,format=qcow2"]
        self.p = pexpect.spawn("qemu-system-x86_64", args, timeout=600, encoding="utf-8",
                               codec_errors="replace")
        self.p.logfile_read = self.log
        atexit.register(self.kill)
        self.n = 0

    def login(self, timeout: float = 900) -> float:
        started = time.monotonic()
        self.p.expect("login: ", timeout=timeout)
        self.p.sendline("root")
        self.p.expect("Password: ")
        self.p.sendline("docklet-e2e")
        self.p.expect("# ", timeout=120)
        self.p.sendline(f"stty -echo; dmesg -n 1; export SYSTEMD_COLORS=0 TERM=dumb "
                        f"PAGER=cat SYSTEMD_PAGER=cat PS1='{self.PROMPT}'")
        self.p.expect_exact(self.PROMPT)
        return time.monotonic() - started

    def run(self, cmd: str, timeout: float = 300) -> tuple:
        self.n += 1
        end = f"T-END-{self.n}"
        self.p.sendline(f"{cmd}; echo {end} $?")
        self.p.expect(rf"{end} (\d+)", timeout=timeout)
        rc = int(self.p.match.group(1))
        out = self.p.before
        self.p.expect_exact(self.PROMPT)
        return rc, out

    def reboot(self) -> None:
        self.p.sendline("systemctl reboot")

    def poweroff(self) -> None:
        self.p.sendline("systemctl poweroff")
        self.p.expect(self.pexpect.EOF, timeout=300)

    def kill(self) -> None:
        if self.p.isalive():
            self.p.terminate(force=True)
        self.log.close()
        self.overlay.unlink(missing_ok=True)


def parse_checks(text: str) -> dict:
    return dict(m.groups() for m in re.finditer(r"T-DOCKLET ([\w.-]+)=(\S*)", text))


@pytest.fixture(scope="module")
def real_image(scratch):
    if not SOURCE:
        pytest.skip("DOCKLET_TEST_SOURCE is not set: set it to a checkout of unias/docklet")
    tmp = scratch("docklet-real")
    return _build(tmp, "docklet", {"DOCKLET_REPO": SOURCE},
                  "vm", "debian", "docklet", "t-docklet-console")


@pytest.fixture(scope="module")
def booted(real_image, scratch):
    """Boot twice (first boot, then a reboot): the guest's check results of each."""
    work = scratch("docklet-boot")
    console = Console(Path(f"{real_image}.qcow2"), work)
    result = {}
    try:
        result["login_s"] = console.login()
        rc, out = console.run("t-docklet-check 900 deep", timeout=1800)
        result["first"] = parse_checks(out)
        result["first_raw"] = out
        _, result["journal1"] = console.run(
            "journalctl -b --no-pager -o cat -u docklet-setup -u docklet-master "
            "-u docklet-worker | grep -v sudo | tail -40")
        console.reboot()
        result["relogin_s"] = console.login()
        rc, out = console.run("t-docklet-check 900", timeout=1200)
        result["second"] = parse_checks(out)
        result["second_raw"] = out
        _, result["journal2"] = console.run(
            "journalctl -b --no-pager -o cat -u docklet-master | grep docklet:")
        console.poweroff()
    finally:
        console.kill()
    print({k: v for k, v in result.items() if not k.endswith("_raw")})
    return result


UNITS = ("docklet-setup", "etcd", "openvswitch-switch", "nginx", "docklet-master",
         "docklet-worker")


@needs_source
def test_real_services_active(booted):
    for unit in UNITS:
        assert booted["first"].get(f"unit.{unit}") == "active", \
            (unit, booted["first_raw"], booted["journal1"])


@needs_source
def test_real_etcd_v2_knows_the_master(booted):
    code, _, master = booted["first"]["etcd.v2.service_master"].partition(":")
    assert code == "200" and master == "10.0.2.15", booted["first"]


@needs_source
def test_real_portal_login_reaches_the_dashboard(booted):
    c = booted["first"]
    assert c["portal.login_get"] == "200"
    assert c["portal.csrf_token"] == "True" and c["portal.password_file"] == "True"
    assert c["portal.login_post"] == "302:/dashboard/", c
    assert c["portal.dashboard"] == "200:" and c["portal.dashboard_user_root"] == "True", c


@needs_source
def test_real_worker_joined_with_its_volume_pool(booted):
    c = booted["first"]
    assert c["etcd.allnodes"] == "ok", c
    assert c["vg.docklet_group"] == "0"
    assert c["loop0"] == "/opt/docklet/local/docklet-storage"


@needs_source
def test_real_aufs_shim_and_cgroup_v1(booted):
    c = booted["first"]
    assert c["aufs_shim"] == "0:overlay:True", c
    assert c["cgroupfs"] == "tmpfs", "cgroup v1 (systemd.unified_cgroup_hierarchy=0)"
    assert c["sudoers"] == "0"


@needs_source
def test_real_no_tracebacks_in_docklet_logs(booted):
    c = booted["first"]
    tracebacks = {k: v for k, v in c.items() if k.startswith("log.") and v != "0"}
    assert tracebacks == {}, booted["first_raw"]


@needs_source
def test_real_vcluster_container_runs(booted):
    """A one-node vcluster through the master's API: the lxc3 config under LXC 5, the
    overlay shim, Open vSwitch, the basefs (sysvinit, per-container ssh host keys, the
    workspace placeholder) and the cgroup v1 memory limit."""
    c = booted["first"]
    assert (c.get("deep.create"), c.get("deep.start")) == ("true", "true"), c
    assert c["deep.running"] == "True", c
    assert c["deep.rootfs"] == "overlay" and c["deep.bridge"] == "0"
    assert c["deep.sshd"] == "0" and c["deep.own_host_keys"] == "True"
    assert c["deep.ping_gateway"] == "0"
    assert c["deep.memory_limit"] == str(300 << 20)
    assert c["deep.workspace_placeholder"] == "True"


@needs_source
def test_real_second_boot_recovers_instead_of_init(booted):
    c = booted["second"]
    for unit in UNITS:
        assert c.get(f"unit.{unit}") == "active", (unit, booted["second_raw"])
    assert "docklet-supermaster start (recovery)" in booted["journal2"]
    assert "first start" not in booted["journal2"]
    assert c["portal.login_post"] == "302:/dashboard/", c
