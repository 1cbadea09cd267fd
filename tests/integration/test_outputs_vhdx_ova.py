"""-t vhdx and -t ova from a fake-os disk (root: loop devices): qemu-img checks both clean, the
OVA unpacks with tar and its OVF names the disk with the right size, capacity and digest;
the same build again restores both from the finished-image cache."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dib.cache import file_sha256
from tests.lib import builds
from tests.lib.ova import check_ova

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                reason="qemu-img is not installed (apt install qemu-utils)")


def _info(path: Path) -> dict:
    return json.loads(subprocess.run(["qemu-img", "info", "--output=json", path], check=True,
                                     capture_output=True, text=True).stdout)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    with builds.Dib(tmp_path_factory.mktemp("vhdx-ova")) as dib:
        env = {"DIB_LIBVIRT_VCPUS": "3", "DIB_LIBVIRT_MEMORY": "768", "OVERWRITE_OLD_IMAGE": "1"}
        first = dib.run(types="vhdx,ova", args=["--checksum"], env=env)
        assert first.returncode == 0, first.stderr
        sums = {n: file_sha256(dib.out / n) for n in ("img.vhdx", "img.ova")}
        second = dib.run(types="vhdx,ova", args=["--checksum"], env=env)
        assert second.returncode == 0, second.stderr
        yield dib, first, second, sums


def test_outputs_are_printed_with_their_checksums(built):
    dib, first, _, _ = built
    printed = first.stdout.split()
    for name in ("img.vhdx", "img.ova", "img.vhdx.sha256", "img.ova.sha256"):
        assert os.fspath(dib.out / name) in printed
    assert not list(dib.out.glob(".*partial*"))
    subprocess.run(["sha256sum", "-c", "img.ova.sha256", "img.vhdx.sha256"], cwd=dib.out,
                   check=True, capture_output=True)


def test_vhdx_checks_clean(built):
    dib, *_ = built
    vhdx = dib.out / "img.vhdx"
    subprocess.run(["qemu-img", "check", "-f", "vhdx", vhdx], check=True, capture_output=True)
    info = _info(vhdx)
    assert info["format"] == "vhdx"
    assert info["virtual-size"] % (1 << 20) == 0 and info["virtual-size"] > 0


def test_ova_unpacks_and_its_ovf_describes_the_disk(built, tmp_path):
    dib, *_ = built
    ova = dib.out / "img.ova"
    got = check_ova(ova)
    assert got["members"] == ["img.ovf", "img-disk1.vmdk", "img.mf"]
    assert (got["cpus"], got["memory_mib"]) == (3, 768)
    subprocess.run(["tar", "-xf", ova, "-C", tmp_path], check=True)
    vmdk = tmp_path / "img-disk1.vmdk"
    assert file_sha256(vmdk) == got["digests"]["img-disk1.vmdk"]
    subprocess.run(["qemu-img", "check", "-f", "vmdk", vmdk], check=True, capture_output=True)
    info = _info(vmdk)
    assert info["format"] == "vmdk"
    assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    # the OVF's capacity is the disk's, the same disk -t vhdx holds
    [disk] = got["disks"]
    assert disk["capacity"] == info["virtual-size"] == _info(dib.out / "img.vhdx")["virtual-size"]


def test_the_manifest_lists_both_and_the_rebuild_reuses_them(built):
    dib, _, second, sums = built
    m = json.loads((dib.out / "img.d" / "manifest.json").read_text())
    arts = {Path(a["path"]).name: a for a in m["artifacts"]}
    assert {"img.vhdx", "img.ova"} <= set(arts)
    assert m["cache"]["image_reused"] is True
    for name, digest in sums.items():
        assert file_sha256(dib.out / name) == digest == arts[name]["sha256"]
    assert os.fspath(dib.out / "img.ova") in second.stdout.split()
