"""-t ova: the OVF descriptor and the package, checked strictly (no root; qemu-img makes the
streamOptimized VMDK of a small raw file)."""
from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
import xml.etree.ElementTree as ET

import pytest

from dib.config import ImageFormat, parse_args
from dib.errors import DibError
from dib.outputs import cache_inputs, family_of, ova
from dib.outputs.base import Needs
from tests.lib.ova import OVF, RASD, check_ova

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                    reason="qemu-img is not installed (apt install qemu-utils)")
MIB = 1 << 20


def _descriptor(**kw):
    args = dict(disk_href="a-disk1.vmdk", disk_size=1234, capacity=64 * MIB, cpus=3,
                memory_mib=768, os_id=96, os_name="Debian <12> & co")
    args.update(kw)
    return ova.descriptor("a", **args)


def test_descriptor_is_well_formed_and_escapes_text():
    root = ET.fromstring(_descriptor())
    assert root.tag == f"{{{OVF}}}Envelope"
    assert root.find(f"{{{OVF}}}VirtualSystem/{{{OVF}}}OperatingSystemSection/"
                     f"{{{OVF}}}Description").text == "Debian <12> & co"
    disk = root.find(f"{{{OVF}}}DiskSection/{{{OVF}}}Disk")
    assert disk.get(f"{{{OVF}}}capacity") == str(64 * MIB)
    qty = {i.findtext(f"{{{RASD}}}ResourceType"): i.findtext(f"{{{RASD}}}VirtualQuantity")
           for i in root.iter(f"{{{OVF}}}Item")}
    assert (qty["3"], qty["4"]) == ("3", "768")


def test_os_type_by_distribution_and_word_size():
    assert ova.os_type("debian", "amd64") == 96
    assert ova.os_type("debian", "i386") == 95
    assert ova.os_type("ubuntu", "arm64") == 94
    assert ova.os_type("", "amd64") == 101


def test_family_declares_a_disk_output_keyed_by_its_hardware():
    fam = family_of(ImageFormat.OVA)
    assert fam is ova.FAMILY and fam.needs is Needs.DISK
    a = cache_inputs(parse_args(["-t", "ova", "x"], {}))
    b = cache_inputs(parse_args(["-t", "ova", "x"], {"DIB_LIBVIRT_MEMORY": "4096"}))
    assert a["ova"] != b["ova"] and b["ova"]["memory"] == 4096


@pytest.fixture
def raw(tmp_path):
    path = tmp_path / "disk.raw"
    with open(path, "wb") as f:
        f.truncate(64 * MIB)
        f.seek(MIB)
        f.write(b"dib-ova-test" * 1000)
    return path


@needs_qemu_img
def test_write_ova_is_a_strict_ovf_package(tmp_path, raw):
    vmdk = tmp_path / "disk.vmdk"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o",
                    "subformat=streamOptimized", raw, vmdk], check=True)
    dest = tmp_path / "web.ova"
    names = ova.write_ova(dest, vmdk, name="web", capacity=raw.stat().st_size, cpus=2,
                          memory_mib=1024, os_id=96, os_name="Debian", mtime=0)
    assert names == ["web.ovf", "web-disk1.vmdk", "web.mf"]
    got = check_ova(dest)
    assert got["members"] == names
    assert got["disks"] == [{"capacity": 64 * MIB, "file": "web-disk1.vmdk"}]
    assert got["digests"]["web-disk1.vmdk"] == hashlib.sha256(vmdk.read_bytes()).hexdigest()
    assert (got["cpus"], got["memory_mib"]) == (2, 1024)
    with tarfile.open(dest) as tar:
        assert all(m.mtime == 0 and m.uid == 0 and m.mode == 0o644 for m in tar)
    # the member is the VMDK qemu-img wrote, and qemu-img reads it back at full capacity
    out = tmp_path / "member.vmdk"
    out.write_bytes(got["data"]["web-disk1.vmdk"])
    info = subprocess.run(["qemu-img", "info", "--output=json", out], check=True,
                          capture_output=True, text=True).stdout
    assert '"virtual-size": 67108864' in info and "streamOptimized" in info


@needs_qemu_img
def test_the_checker_catches_a_wrong_size_and_digest(tmp_path, raw):
    vmdk = tmp_path / "d.vmdk"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o",
                    "subformat=streamOptimized", raw, vmdk], check=True)
    good = tmp_path / "good.ova"
    ova.write_ova(good, vmdk, name="x", capacity=64 * MIB, cpus=1, memory_mib=512, os_id=96,
                  os_name="Debian", mtime=0)
    with tarfile.open(good) as tar:
        data = {m.name: tar.extractfile(m).read() for m in tar}

    def repack(path, members):
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for name, blob in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))

    wrong_size = dict(data)
    wrong_size["x.ovf"] = data["x.ovf"].replace(
        f'ovf:size="{len(data["x-disk1.vmdk"])}"'.encode(), b'ovf:size="1"')
    repack(tmp_path / "size.ova", wrong_size)
    with pytest.raises(AssertionError, match="ovf:size"):
        check_ova(tmp_path / "size.ova")
    wrong_digest = dict(data)
    wrong_digest["x-disk1.vmdk"] = data["x-disk1.vmdk"] + b"\0"
    wrong_digest["x.ovf"] = data["x.ovf"].replace(
        f'ovf:size="{len(data["x-disk1.vmdk"])}"'.encode(),
        f'ovf:size="{len(data["x-disk1.vmdk"]) + 1}"'.encode())
    repack(tmp_path / "digest.ova", wrong_digest)
    with pytest.raises(AssertionError, match="digest"):
        check_ova(tmp_path / "digest.ova")


def test_a_disk_too_large_for_ustar_is_refused(tmp_path, monkeypatch):
    vmdk = tmp_path / "big.vmdk"
    vmdk.write_bytes(b"x")
    monkeypatch.setattr(ova, "USTAR_MAX", 0)
    with pytest.raises(DibError, match="ustar"):
        ova.write_ova(tmp_path / "o.ova", vmdk, name="o", capacity=1, cpus=1, memory_mib=1,
                      os_id=96, os_name="x", mtime=0)
