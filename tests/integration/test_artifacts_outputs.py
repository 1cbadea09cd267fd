"""Artifacts on fake-os builds (root: mounts and loop devices, no network): -t docker and
-t oci from the tree, -t vagrant and the libvirt XML from a disk, the manifest and the
manifests element, the finished-image cache with a directory output, and recipes.

The real clients (skopeo, podman, vagrant, virsh) are exercised on Debian images by
tests/e2e/test_artifacts.py; here skopeo is used when it is installed.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from dib.cache import file_sha256
from dib.outputs import container, vagrant
from tests.lib import builds

SECRET = "s3cr3t-value"


@pytest.fixture(scope="module")
def containers(tmp_path_factory):
    """fake-os + manifests as tar, docker and oci at once; then the same build again (from
    the finished-image cache)."""
    with builds.Dib(tmp_path_factory.mktemp("containers")) as dib:
        env = {"DIB_TEST_PASSWORD": SECRET, "DIB_CONTAINER_LABELS": "team=os",
               "OVERWRITE_OLD_IMAGE": "1"}
        args = ["--docker-target", "dibtest/fake:1"]
        first = dib.run("manifests", types="tar,docker,oci", args=args, env=env)
        assert first.returncode == 0, first.stderr
        manifest1 = json.loads((dib.out / "img.d" / "manifest.json").read_text())
        second = dib.run("manifests", types="tar,docker,oci", args=args, env=env)
        assert second.returncode == 0, second.stderr
        yield dib, first, second, manifest1


@pytest.fixture
def dib(tmp_path):
    with builds.Dib(tmp_path) as d:
        yield d


def _sha256(path: Path) -> str:
    return file_sha256(path)


# -- containers --------------------------------------------------------------------------------

def test_container_outputs_are_printed_and_named(containers):
    dib, first, _, _ = containers
    printed = first.stdout.split()
    for name in ("img.tar", "img.docker.tar", "img.oci"):
        assert os.fspath(dib.out / name) in printed
    assert (dib.out / "img.oci").is_dir()
    assert not list(dib.out.glob(".*partial*"))


def test_docker_archive_holds_the_tar_as_its_layer(containers):
    dib, *_ = containers
    with tarfile.open(dib.out / "img.docker.tar") as tar:
        [entry] = json.load(tar.extractfile("manifest.json"))
        config = json.load(tar.extractfile(entry["Config"]))
        layer = tar.extractfile(entry["Layers"][0]).read()
    assert entry["RepoTags"] == ["dibtest/fake:1"]
    # the layer is the very archive -t tar wrote: same bytes, so the same digest
    digest = container.digest(layer)
    assert digest == f"sha256:{_sha256(dib.out / 'img.tar')}"
    assert config["rootfs"]["diff_ids"] == [digest]
    assert config["config"]["Labels"]["team"] == "os"
    shell = "/bin/bash" if "bin/bash" in dib.members() else "/bin/sh"
    assert config["config"]["Cmd"] == [shell]
    assert config["architecture"] == "amd64"


def test_oci_layout_is_valid_and_shares_the_layer(containers):
    dib, *_ = containers
    layout = dib.out / "img.oci"
    assert container.verify_oci_layout(layout) == []
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "1"
    tar_digest = _sha256(dib.out / "img.tar")
    assert (layout / "blobs" / "sha256" / tar_digest).is_file()


def test_layer_has_no_host_device_nodes(containers):
    dib, *_ = containers
    members = dib.members()  # the tar: identical to the layer (see above)
    devices = [n for n, m in members.items() if m.ischr() or m.isblk()]
    assert devices == []
    assert not any(n.startswith(("proc/", "sys/")) for n in members)


@pytest.mark.skipif(not shutil.which("skopeo"),
                    reason="skopeo is not installed: run bin/dib-host-setup --test")
@pytest.mark.parametrize("transport,name", [("docker-archive", "img.docker.tar"),
                                            ("oci", "img.oci")])
def test_skopeo_reads_both(containers, transport, name):
    dib, *_ = containers
    out = subprocess.run(["skopeo", "inspect", f"{transport}:{dib.out / name}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["Layers"] == [f"sha256:{_sha256(dib.out / 'img.tar')}"]
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"


def test_rebuild_reuses_the_cached_image_including_the_layout(containers):
    dib, first, second, manifest1 = containers
    assert "(cached image)" in second.stderr
    assert container.verify_oci_layout(dib.out / "img.oci") == []
    manifest2 = json.loads((dib.out / "img.d" / "manifest.json").read_text())
    assert manifest1["cache"]["image_reused"] is False
    assert manifest2["cache"]["image_reused"] is True
    assert manifest2["cache"]["steps_cached"] == manifest2["cache"]["steps"] >= 1
    assert [a["sha256"] for a in manifest2["artifacts"] if "sha256" in a] == \
        [a["sha256"] for a in manifest1["artifacts"] if "sha256" in a]


# -- the manifest ---------------------------------------------------------------------------------

def test_manifest_next_to_the_outputs(containers):
    dib, first, _, m = containers
    assert m["image"] == "img" and m["arch"] == "amd64"
    assert m["argv"][-2:] == ["fake-os", "manifests"]
    assert [e["name"] for e in m["elements"]] == ["fake-os", "manifests"]
    assert all(len(e["sha256"]) == 64 and Path(e["path"]).is_dir() for e in m["elements"])
    assert m["environment"]["DIB_TEST_PASSWORD"] == "<redacted>"
    assert m["environment"]["DIB_CONTAINER_LABELS"] == "team=os"
    arts = {Path(a["path"]).name: a for a in m["artifacts"]}
    assert set(arts) == {"img.tar", "img.docker.tar", "img.oci"}
    assert arts["img.tar"]["sha256"] == _sha256(dib.out / "img.tar")
    assert arts["img.docker.tar"]["bytes"] == (dib.out / "img.docker.tar").stat().st_size
    assert arts["img.oci"]["manifest_digest"].startswith("sha256:")
    assert m["packages"]["count"] == 0 and m["sbom"] is None  # fake-os has no dpkg
    assert m["timings"]["seconds"] > 0
    assert {o["output"] for o in m["timings"]["outputs"]} >= {"tar", "docker", "oci"}
    assert [s["step"] for s in m["steps"]] == [s["step"] for s in dib.report()["steps"]]
    assert SECRET not in (dib.out / "img.d" / "manifest.json").read_text()


def test_manifests_element_writes_into_the_image(containers):
    dib, *_ = containers
    members = dib.members()
    d = members["etc/dib-manifests"]
    assert stat.S_IMODE(d.mode) == 0o700
    for name in ("manifest.json", "dib_arguments", "dib_environment"):
        m = members[f"etc/dib-manifests/{name}"]
        assert stat.S_IMODE(m.mode) == 0o600 and m.uid == 0
    inside = json.loads(dib.read("etc/dib-manifests/manifest.json"))
    assert [e["name"] for e in inside["elements"]] == ["fake-os", "manifests"]
    assert inside["environment"]["DIB_TEST_PASSWORD"] == "<redacted>"
    assert SECRET.encode() not in dib.read("etc/dib-manifests/dib_environment")
    assert (dib.out / "img.d" / "dib-manifests" / "manifest.json").is_file()


# -- from a disk: vagrant box, libvirt XML --------------------------------------------------------

def test_vagrant_box_and_libvirt_xml_from_a_disk(dib):
    result = dib.run(types="raw,vagrant", env={"DIB_VAGRANT_LIBVIRT_DRIVER": "qemu"})
    assert result.returncode == 0, result.stderr
    printed = result.stdout.split()
    box, xml, raw = dib.out / "img.box", dib.out / "img.xml", dib.out / "img.raw"
    assert [os.fspath(p) for p in (raw, box, xml)] == printed
    info = vagrant.read_box(box)
    assert info["members"] == ["metadata.json", "Vagrantfile", "box.img"]
    assert info["metadata"] == {"provider": "libvirt", "format": "qcow2",
                                "virtual_size": 1}
    assert 'libvirt.driver = "qemu"' in info["Vagrantfile"]
    assert "built without the vagrant element" in info["Vagrantfile"]
    assert "without the vagrant element" in result.stderr  # the warning
    with tarfile.open(box) as tar:
        assert tar.extractfile("box.img").read(4) == b"QFI\xfb"  # qcow2
    root = ET.parse(xml).getroot()
    assert root.find("devices/disk/source").get("file") == os.fspath(raw)
    assert root.find("devices/disk/driver").get("type") == "raw"
    assert root.find("os").get("firmware") is None  # no ESP: BIOS
    assert root.find("devices/video") is not None
    m = json.loads((dib.out / "img.d" / "manifest.json").read_text())
    assert {Path(a["path"]).name for a in m["artifacts"]} == {"img.raw", "img.box", "img.xml"}
    assert m["uefi"] is False


def test_libvirt_knobs_and_uefi(dib):
    result = dib.run(types="qcow2", env={"DIB_LIBVIRT_FIRMWARE": "uefi",
                                         "DIB_LIBVIRT_NAME": "fake1",
                                         "DIB_LIBVIRT_MEMORY": "512"})
    assert result.returncode == 0, result.stderr
    root = ET.parse(dib.out / "img.xml").getroot()
    assert root.findtext("name") == "fake1"
    assert root.find("memory").text == "512"
    assert root.find("os").get("firmware") == "efi"
    assert root.find("devices/disk/driver").get("type") == "qcow2"


def test_a_bad_knob_fails_before_the_build(dib):
    result = dib.run(types="qcow2", env={"DIB_LIBVIRT_VCPUS": "many"})
    assert result.returncode == 1
    assert "error: DIB_LIBVIRT_VCPUS: must be a positive whole number, not 'many'" in result.stderr
    assert dib.workdirs() == [] and not (dib.out / "img.d" / "build.log").exists()


def test_bad_docker_target_fails_before_the_build(dib):
    result = dib.run(types="docker", args=["--docker-target", "Not/Valid"])
    assert result.returncode == 1
    assert "--docker-target: 'Not/Valid' is not a valid image name" in result.stderr


# -- recipes ---------------------------------------------------------------------------------------

def _recipe(dib, images) -> Path:
    path = dib.base / "recipe.yaml"
    path.write_text(yaml.safe_dump(images, sort_keys=False))
    return path


def test_recipe_builds_two_images_sharing_the_cache(dib):
    path = _recipe(dib, [
        {"imagename": os.fspath(dib.out / "one"), "elements": ["fake-os", "t-overlay"],
         "skip-base": True, "types": ["tar"], "environment": {"DIB_TEST_X": "1"}},
        {"imagename": os.fspath(dib.out / "two"), "elements": ["fake-os", "t-overlay"],
         "skip-base": True, "types": ["docker"], "docker-target": "dibtest/two:2",
         "environment": {"DIB_TEST_X": "1"}},
    ])
    result = dib.cli("--recipe", os.fspath(path), timeout=240)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [os.fspath(dib.out / "one.tar"),
                                     os.fspath(dib.out / "two.docker.tar")]
    assert "recipe: built 2 images: " in result.stderr
    one = dib.report("one")
    two = dib.report("two")
    assert one["status"] == two["status"] == "ok"
    assert not any(s["cached"] for s in one["steps"])
    assert all(s["cached"] for s in two["steps"]) and two["steps"]  # the first image's layers
    with tarfile.open(dib.out / "two.docker.tar") as tar:
        [entry] = json.load(tar.extractfile("manifest.json"))
    assert entry["RepoTags"] == ["dibtest/two:2"]


def test_recipe_continues_after_a_failure_and_reports_it(dib):
    path = _recipe(dib, [
        {"imagename": os.fspath(dib.out / "bad"), "elements": ["fake-os", "t-fail"],
         "skip-base": True, "types": ["tar"],
         "environment": {"DIB_TEST_FAIL_PHASE": "install.d"}},
        {"imagename": os.fspath(dib.out / "good"), "elements": ["fake-os"],
         "skip-base": True, "types": ["tar"]},
    ])
    result = dib.cli("--recipe", os.fspath(path), timeout=240)
    assert result.returncode == 1
    assert result.stdout.split() == [os.fspath(dib.out / "good.tar")]
    assert "error: recipe: 1 of 2 images failed:" in result.stderr
    assert f"{dib.out / 'bad'}: " in result.stderr and "t-fail" in result.stderr

    result = dib.cli("--recipe", os.fspath(path), "--stop-on-failure", timeout=240)
    assert result.returncode == 1
    assert "1 not started (--stop-on-failure)" in result.stderr


def test_recipe_error_in_the_second_image_stops_before_any_build(dib):
    path = _recipe(dib, [
        {"imagename": os.fspath(dib.out / "one"), "elements": ["fake-os"], "skip-base": True,
         "types": ["tar"]},
        {"imagename": os.fspath(dib.out / "two"), "elements": ["fake-os"], "skip-base": True,
         "types": ["tar", "qcow3"]},
    ])
    result = dib.cli("--recipe", os.fspath(path))
    assert result.returncode == 1
    assert f"image 2 ('{dib.out / 'two'}'): 'types': unknown output type 'qcow3'" in result.stderr
    assert not (dib.out / "one.tar").exists() and not (dib.out / "one.d").exists()
