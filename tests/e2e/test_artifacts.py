"""Artifacts of real Debian builds, handed to the real clients.

Built once per session, all with the shared e2e cache (``DIB_E2E_CACHE``, default
/var/tmp/dib-e2e-cache), so a second session reuses the layers and finished images:

* ``vm debian vagrant manifests`` as ``-t qcow2,vagrant,docker,oci`` (one build): the box goes
  to ``vagrant box add``, the docker-archive to ``podman load`` + ``podman run``, the OCI
  layout to ``skopeo inspect``, the libvirt XML to ``virsh define``; the SBOM is compared
  with ``dpkg-query`` on the image's own dpkg database;
* the same build again with ``--boot-test`` (the finished image comes from the cache): passes;
* ``vm debian vagrant manifests`` with a copy of the ``vm`` element whose finalise.d wipes
  the boot code and /boot/grub after the bootloader was installed, ``-t qcow2
  --boot-test``: fails, saying why (its tree steps mostly run again: the hooks tree records
  the elements' paths, and the copy lives elsewhere);
* a recipe of two ``debian-minimal`` images (``-t docker`` and ``-t tar``) in one run.

Clients run with private state only: podman with its own --root/--runroot (vfs, runc,
explicit ulimits, ``--network=none``), Vagrant with VAGRANT_HOME in a temporary directory,
libvirt's daemons started by hand if they are not running (and stopped again), the domain
undefined afterwards.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import pytest
import yaml

from dib.outputs import container, vagrant
from tests.lib.builds import HOST_PATH, TEST_ELEMENTS, build_env
from tests.lib.leaks import assert_clean

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("DIB_E2E_CACHE", "/var/tmp/dib-e2e-cache"))
VM_ELEMENTS = ["vm", "debian", "vagrant", "manifests"]
VM_TYPES = "qcow2,vagrant,docker,oci"
TARGET = "dibtest/debian:12"
#: the knobs every vm build of this module shares (DIB_* variables are part of the layer keys)
VM_ENV = {"DIB_LIBVIRT_DOMAIN_TYPE": "qemu", "DIB_VAGRANT_LIBVIRT_DRIVER": "qemu",
          "DIB_E2E_SECRET_TOKEN": "s3cr3t"}
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def _env(tmp: Path, extra: Optional[Dict[str, str]] = None,
         elements_path: Sequence[Path] = ()) -> Dict[str, str]:
    return build_env(tmp / "tmp", [*elements_path, TEST_ELEMENTS],
                     {"DIB_IMAGE_CACHE": str(CACHE), "OVERWRITE_OLD_IMAGE": "1", **(extra or {})})


def dib(tmp: Path, *args: str, env: Optional[Dict[str, str]] = None,
        elements_path: Sequence[Path] = (), timeout: float = 2400) -> subprocess.CompletedProcess:
    (tmp / "tmp").mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, str(ROOT / "bin" / "disk-image-create"), *args],
                          env=_env(tmp, env, elements_path), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)
    assert_clean(tmp)
    return proc


def need(*tools: str) -> None:
    missing = [t for t in tools if not shutil.which(t, path=HOST_PATH)]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (run bin/dib-host-setup --test)")


def run(argv: List[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", 600)
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)


# -- the builds (once per session) ---------------------------------------------------------------

@pytest.fixture(scope="module")
def vm(scratch) -> Path:
    """``vm debian vagrant manifests`` -> qcow2, box, docker-archive, OCI layout; returns the
    output base path."""
    tmp = scratch("artifacts-vm")
    out = tmp / "vm"
    proc = dib(tmp, "-t", VM_TYPES, "--checksum", "--docker-target", TARGET, "-o", str(out),
               *VM_ELEMENTS, env=VM_ENV)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def vm_layer(vm, scratch) -> Path:
    """The few files of the vm image the checks read, extracted from the docker layer."""
    dest = scratch("vm-files")
    wanted = ("etc/os-release", "usr/lib/os-release", "var/lib/dpkg/status",
              "home/vagrant/.ssh/authorized_keys", "etc/sudoers.d/90-dib-vagrant",
              "etc/dib-manifests/manifest.json", "etc/dib-manifests/sbom.cdx.json")
    with tarfile.open(f"{vm}.docker.tar") as outer:
        [entry] = json.load(outer.extractfile("manifest.json"))
        with tarfile.open(fileobj=outer.extractfile(entry["Layers"][0]), mode="r|") as layer:
            for m in layer:
                name = m.name[2:] if m.name.startswith("./") else m.name
                if name in wanted and m.isfile():
                    target = dest / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(layer.extractfile(m).read())
    return dest


# -- podman, skopeo -------------------------------------------------------------------------------

@contextlib.contextmanager
def podman(tmp: Path) -> Iterator[List[str]]:
    need("podman", "runc")
    conf = tmp / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    runroot = Path(tempfile.mkdtemp(prefix="dib-podman.", dir="/tmp"))  # podman: <= 50 chars
    base = ["podman", "--root", str(tmp / "root"), "--runroot", str(runroot),
            "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--runtime", "runc"]
    old = os.environ.get("CONTAINERS_CONF")
    os.environ["CONTAINERS_CONF"] = str(conf)
    try:
        yield base
    finally:
        run(base + ["rmi", "--all", "--force"], timeout=300)
        if old is None:
            del os.environ["CONTAINERS_CONF"]
        else:
            os.environ["CONTAINERS_CONF"] = old
        assert_clean(tmp)
        assert_clean(runroot)
        shutil.rmtree(tmp / "root", ignore_errors=True)
        shutil.rmtree(runroot, ignore_errors=True)


def test_podman_loads_and_runs_the_docker_archive(vm, tmp_path):
    with podman(tmp_path) as p:
        load = run(p + ["load", "-i", f"{vm}.docker.tar"])
        assert load.returncode == 0, load.stderr
        print(load.stdout)
        assert f"Loaded image: localhost/{TARGET}" in load.stdout + load.stderr
        out = run(p + ["run", "--rm", "--network=none", TARGET, "cat", "/etc/os-release"])
        assert out.returncode == 0, out.stderr
        print(out.stdout)
        assert "ID=debian" in out.stdout and 'VERSION_ID="12"' in out.stdout
        who = run(p + ["run", "--rm", "--network=none", TARGET, "id", "-un", "vagrant"])
        assert who.stdout.strip() == "vagrant", who.stderr


def test_skopeo_inspects_the_oci_layout(vm):
    need("skopeo")
    out = run(["skopeo", "inspect", f"oci:{vm}.oci"])
    assert out.returncode == 0, out.stderr
    print(out.stdout)
    info = json.loads(out.stdout)
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"
    assert len(info["Layers"]) == 1
    # the same layer as the docker-archive's, and every blob matches its digest
    with tarfile.open(f"{vm}.docker.tar") as tar:
        [entry] = json.load(tar.extractfile("manifest.json"))
    assert info["Layers"][0] == f"sha256:{entry['Layers'][0].split('/')[0]}"
    assert container.verify_oci_layout(Path(f"{vm}.oci")) == []
    tagged = run(["skopeo", "inspect", f"oci:{vm}.oci:12"])
    assert tagged.returncode == 0, tagged.stderr


# -- vagrant --------------------------------------------------------------------------------------

def test_vagrant_box_add_and_list(vm, tmp_path):
    need("vagrant")
    box = Path(f"{vm}.box")
    info = vagrant.read_box(box)
    assert info["metadata"]["provider"] == "libvirt" and info["metadata"]["format"] == "qcow2"
    assert 'config.ssh.username = "vagrant"' in info["Vagrantfile"]
    env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "vagrant.d"), VAGRANT_CHECKPOINT_DISABLE="1")
    add = run(["vagrant", "box", "add", "--name", "dibtest-vm", str(box)], env=env)
    text = add.stdout.replace("\r", "\n")
    print("\n".join(line for line in text.splitlines() if "Progress:" not in line))
    assert add.returncode == 0, add.stderr
    assert "Successfully added box 'dibtest-vm' (v0) for 'libvirt'!" in text
    listing = run(["vagrant", "box", "list"], env=env)
    print(listing.stdout)
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"^dibtest-vm\s+\(libvirt, 0\)", listing.stdout, re.M)
    stored = tmp_path / "vagrant.d/boxes/dibtest-vm/0/libvirt"
    assert sorted(p.name for p in stored.iterdir()) == ["Vagrantfile", "box.img",
                                                        "metadata.json"]


def test_vagrant_user_has_the_insecure_key(vm_layer):
    key = (ROOT / "elements/vagrant/vagrant-insecure-key.pub").read_text().split()[1]
    assert key in (vm_layer / "home/vagrant/.ssh/authorized_keys").read_text()
    assert "NOPASSWD" in (vm_layer / "etc/sudoers.d/90-dib-vagrant").read_text()


# -- libvirt --------------------------------------------------------------------------------------

def _pid(path: str) -> Optional[int]:
    try:
        pid = int(Path(path).read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def libvirt_daemons() -> Iterator[None]:
    """virtlogd and libvirtd, started here if they are not running (PID 1 is not always
    systemd), and then stopped again -- only the ones started here."""
    need("virsh", "libvirtd", "virtlogd")
    started = []
    for daemon, pidfile in (("virtlogd", "/run/virtlogd.pid"), ("libvirtd", "/run/libvirtd.pid")):
        if _pid(pidfile) is None:
            subprocess.run([daemon, "-d"], check=True, timeout=60)
            for _ in range(100):
                if _pid(pidfile):
                    break
                time.sleep(0.1)
            started.append((daemon, pidfile, _pid(pidfile)))
    try:
        yield
    finally:
        for _daemon, pidfile, pid in reversed(started):
            if pid is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if _pid(pidfile) != pid:
                    break
                time.sleep(0.1)


def test_virsh_defines_the_domain(vm):
    xml = Path(f"{vm}.xml")
    assert xml.is_file()
    virsh = ["virsh", "-c", "qemu:///system"]
    name = "vm"
    with libvirt_daemons():
        run(virsh + ["undefine", "--nvram", name], timeout=300)  # a leftover of a killed run
        define = run(virsh + ["define", str(xml)], timeout=600)
        try:
            print(define.stdout, define.stderr)
            assert define.returncode == 0, define.stderr
            assert f"Domain '{name}' defined" in define.stdout
            dump = run(virsh + ["dumpxml", name], timeout=300)
            assert dump.returncode == 0, dump.stderr
            assert f"<source file='{vm}.qcow2'/>" in dump.stdout
            assert "<driver name='qemu' type='qcow2'/>" in dump.stdout
            assert "<video>" in dump.stdout and "type='vga'" in dump.stdout
            assert "<domain type='qemu'>" in dump.stdout
        finally:
            undefine = run(virsh + ["undefine", "--nvram", name], timeout=300)
            assert undefine.returncode == 0 or define.returncode != 0, undefine.stderr


# -- manifest and SBOM ----------------------------------------------------------------------------

def _dpkg(tree: Path) -> set:
    out = run(["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W", "-f",
               "${Package}\t${Version}\t${Architecture}\t${db:Status-Abbrev}\n"])
    assert out.returncode == 0, out.stderr
    return {tuple(line.split("\t")[:3]) for line in out.stdout.splitlines()
            if line.split("\t")[3].startswith(("ii", "hi"))}


def test_sbom_lists_what_dpkg_query_shows(vm, vm_layer):
    bom = json.loads(Path(f"{vm}.d/sbom.cdx.json").read_text())
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.5"
    listed = {(c["name"], c["version"],
               next(p["value"] for p in c["properties"] if p["name"] == "dib:package:arch"))
              for c in bom["components"]}
    installed = _dpkg(vm_layer)
    assert len(installed) > 100
    assert listed == installed
    for c in bom["components"]:
        assert c["purl"].startswith(f"pkg:deb/debian/{c['name']}@")
        assert "distro=debian-12" in c["purl"]
    # the manifests element's copy inside the image lists the same packages
    inside = json.loads((vm_layer / "etc/dib-manifests/sbom.cdx.json").read_text())
    assert {(c["name"], c["version"]) for c in inside["components"]} == \
        {(n, v) for n, v, _ in installed}


def test_manifest(vm):
    m = json.loads(Path(f"{vm}.d/manifest.json").read_text())
    assert m["requested_elements"] == VM_ELEMENTS
    names = [e["name"] for e in m["elements"]]
    assert set(VM_ELEMENTS) <= set(names) and "bootloader" in names
    assert m["environment"]["DIB_E2E_SECRET_TOKEN"] == "<redacted>"
    assert "s3cr3t" not in Path(f"{vm}.d/manifest.json").read_text()
    assert m["packages"]["count"] > 100 and m["sbom"] == "sbom.cdx.json"
    arts = {Path(a["path"]).name: a for a in m["artifacts"]}
    assert set(arts) == {"vm.qcow2", "vm.box", "vm.docker.tar", "vm.oci", "vm.xml"}
    sums = Path(f"{vm}.qcow2.sha256").read_text().split()[0]
    assert arts["vm.qcow2"]["sha256"] == sums
    assert m["uefi"] is False
    assert m["timings"]["seconds"] > 0 and m["steps"]


# -- --boot-test ----------------------------------------------------------------------------------

def test_boot_test_passes_for_the_good_image(vm, tmp_path):
    """The same build again with --boot-test: the finished image comes from the cache."""
    proc = dib(tmp_path, "-t", VM_TYPES, "--checksum", "--docker-target", TARGET,
               "-o", str(tmp_path / "vm"), "--boot-test", *VM_ELEMENTS,
               env={**VM_ENV, "DIB_BOOT_TEST_TIMEOUT": "900"})
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "(cached image)" in proc.stderr
    m = re.search(r"boot test passed: login:\s+after (\d+) s \(BIOS, (tcg|kvm): ([^\n]+)\)",
                  proc.stderr)
    assert m, proc.stderr[-3000:]
    print(m.group(0))
    boot = json.loads((tmp_path / "vm.d" / "build-report.json").read_text())["boot_test"]
    assert boot["passed"] is True and boot["firmware"] == "BIOS"
    assert (boot["accel"], boot["accel_reason"]) == (m.group(2), m.group(3).split(" -- ")[0])


WIPE = """#!/bin/bash
# test element: remove the bootloader installed by 50-bootloader
set -eu
rm -rf /boot/grub
dd if=/dev/zero of="$IMAGE_BLOCK_DEVICE" bs=440 count=1 conv=notrunc status=none
"""


def _vm_without_bootloader(under: Path) -> Path:
    """A copy of the vm element whose finalise.d wipes the MBR boot code and /boot/grub
    after 50-bootloader."""
    src = ROOT / "elements" / "vm"
    dest = under / "vm"
    shutil.copytree(src, dest)
    (dest / "finalise.d").mkdir(exist_ok=True)
    wipe = dest / "finalise.d" / "90-t-wipe-bootloader"
    # A token of this run makes the final scripts, and so the finished image's cache key, new:
    # the e2e cache outlives sessions, and a cached image would skip the script under test.
    wipe.write_text(WIPE + f"# run {uuid.uuid4().hex}\n")
    wipe.chmod(0o755)
    return under


def test_boot_test_fails_clearly_without_a_bootloader(vm, tmp_path):
    elements = _vm_without_bootloader(tmp_path / "elements")
    proc = dib(tmp_path, "-t", "qcow2", "-o", str(tmp_path / "nogrub"), "--boot-test",
               *VM_ELEMENTS, env={**VM_ENV, "DIB_BOOT_TEST_TIMEOUT": "60"},
               elements_path=[elements])
    print(proc.stderr[-1500:])
    assert proc.returncode == 1
    assert "finalise.d/90-t-wipe-bootloader" in proc.stderr
    # (a good image shows GRUB's menu on the serial console within seconds)
    assert "error: boot test failed: timed out after 60 s (BIOS" in proc.stderr
    assert "neither a bootloader nor a kernel wrote to the serial console" in proc.stderr
    assert "hint: the image is " in proc.stderr
    report = json.loads((tmp_path / "nogrub.d" / "build-report.json").read_text())
    print(f"{sum(s['cached'] for s in report['steps'])} of {len(report['steps'])} steps cached")
    assert report["boot_test"]["passed"] is False
    assert report["boot_test"]["failure"] == "timed out after 60 s"


# -- a recipe of two images -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def recipe_build(scratch):
    tmp = scratch("artifacts-recipe")
    path = tmp / "images.yaml"
    path.write_text(yaml.safe_dump([
        {"imagename": str(tmp / "minimal-container"), "elements": ["debian-minimal"],
         "types": ["docker", "oci"], "docker-target": "dibtest/minimal:12"},
        {"imagename": str(tmp / "minimal-tree"), "elements": ["debian-minimal"],
         "types": ["tar"]},
    ], sort_keys=False))
    proc = dib(tmp, "--recipe", str(path))
    return tmp, proc


def test_recipe_builds_both_images(recipe_build):
    tmp, proc = recipe_build
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert proc.stdout.split() == [str(tmp / "minimal-container.docker.tar"),
                                   str(tmp / "minimal-container.oci"),
                                   str(tmp / "minimal-tree.tar")]
    assert "recipe: built 2 images" in proc.stderr
    second = json.loads((tmp / "minimal-tree.d" / "build-report.json").read_text())
    assert second["status"] == "ok"
    assert second["steps"] and all(s["cached"] for s in second["steps"])  # shared cache
    assert (tmp / "minimal-tree.d" / "manifest.json").is_file()


def test_recipe_container_runs_in_podman(recipe_build, tmp_path):
    tmp, proc = recipe_build
    assert proc.returncode == 0, proc.stderr[-3000:]
    with podman(tmp_path) as p:
        load = run(p + ["load", "-i", str(tmp / "minimal-container.docker.tar")])
        assert load.returncode == 0, load.stderr
        out = run(p + ["run", "--rm", "--network=none", "dibtest/minimal:12",
                       "cat", "/etc/os-release"])
        assert out.returncode == 0, out.stderr
        assert "VERSION_CODENAME=bookworm" in out.stdout
