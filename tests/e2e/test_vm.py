"""`vm debian`: a real partitioned disk that boots, under BIOS and UEFI, in every format.

Two images are built once per session (BIOS/MBR and the hybrid EFI layout) from the Debian
mirror, with the t-boot-marker element, whose first-boot unit prints the boot result on the
console and powers off. The images are then inspected (partition table, label, fstab,
qemu-img check) and booted under qemu TCG.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dib import boottest
from tests.lib.leaks import assert_clean

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("DIB_E2E_CACHE", "/var/tmp/dib-e2e-cache"))
MARKER = r"DIB-BOOT-MARKER state=(\S+) failed=(\d+) root=(\S+) os=(\S+)"


def _build(tmp: Path, name: str, *args: str, **extra_env: str) -> Path:
    env = dict(os.environ, ELEMENTS_PATH=str(ROOT / "tests" / "elements"),
               TMP_DIR=str(tmp / "tmp"), DIB_IMAGE_CACHE=str(CACHE), OVERWRITE_OLD_IMAGE="1",
               **extra_env)
    out = tmp / name
    proc = subprocess.run([sys.executable, str(ROOT / "bin" / "disk-image-create"), "-o", str(out),
                           *args], env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_clean(tmp)
    return out


@pytest.fixture(scope="module")
def bios_image(scratch) -> Path:
    tmp = scratch("vm-bios")
    return _build(tmp, "bios", "-t", "qcow2,raw", "--checksum",
                  "vm", "debian", "t-boot-marker")


@pytest.fixture(scope="module")
def efi_image(scratch) -> Path:
    tmp = scratch("vm-efi")
    return _build(tmp, "efi", "-t", "qcow2,raw,vmdk,vhd,vdi",
                  "vm", "debian", "block-device-efi", "t-boot-marker")


def _sfdisk(raw: Path) -> dict:
    out = subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)["partitiontable"]


@pytest.fixture(scope="module")
def cloud_kernel_image(scratch) -> Path:
    tmp = scratch("vm-cloud-kernel")
    return _build(tmp, "cloud", "vm", "debian-minimal", "t-boot-marker",
                  DIB_DEBIAN_KERNEL_FLAVOUR="cloud")


def _boot(image: Path, tmp: Path, uefi: bool) -> re.Match:
    # DIB_BOOT_TEST_ACCEL forces an accelerator; unset, KVM is used when it works, and a KVM
    # that stalls after the bootloader is dropped for TCG (boottest.boot)
    result = boottest.boot(image, tmp, uefi=uefi, expect=[r"login: ", MARKER], timeout=600,
                           accel=os.environ.get("DIB_BOOT_TEST_ACCEL") or None,
                           accel_source="DIB_BOOT_TEST_ACCEL")
    assert result.passed, result.failure + "\n" + result.serial_text()[-3000:]
    m = re.search(MARKER, result.serial_text())
    assert m is not None
    return m


# -- BIOS / MBR ------------------------------------------------------------------------------

def test_bios_partition_table_is_one_bootable_mbr_partition(bios_image):
    table = _sfdisk(Path(f"{bios_image}.raw"))
    assert table["label"] == "dos"
    assert len(table["partitions"]) == 1
    assert table["partitions"][0].get("bootable") is True
    assert table["partitions"][0]["type"] == "83"


def test_bios_root_filesystem_label_and_fstab(bios_image, tmp_path):
    raw = Path(f"{bios_image}.raw")
    loop = subprocess.run(["losetup", "--show", "-f", "-r", "-P", str(raw)],
                          capture_output=True, text=True, check=True).stdout.strip()
    try:
        subprocess.run(["partx", "-a", loop], capture_output=True)
        part = f"{loop}p1"
        blkid = subprocess.run(["blkid", "-o", "export", part], capture_output=True, text=True,
                               check=True).stdout
        assert "LABEL=cloudimg-rootfs" in blkid and "TYPE=ext4" in blkid
        fsck = subprocess.run(["fsck.ext4", "-fn", part], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        fstab = subprocess.run(["debugfs", "-R", "cat /etc/fstab", part], capture_output=True,
                               text=True, check=True).stdout
        assert fstab.split("\n")[0].split() == ["LABEL=cloudimg-rootfs", "/", "ext4",
                                                "defaults", "0", "1"]
        grub = subprocess.run(["debugfs", "-R", "cat /boot/grub/grub.cfg", part],
                              capture_output=True, text=True, check=True).stdout
        assert "root=LABEL=cloudimg-rootfs" in grub and "console=ttyS0,115200" in grub
        # no menu and no wait for a key (the hidden style's key check took 3 s on the serial
        # console)
        assert re.search(r"set timeout_style=menu\n\s*set timeout=0\n", grub), grub
        # a disk that boots by BIOS alone has GRUB's BIOS modules and not its EFI ones
        grub_dirs = subprocess.run(["debugfs", "-R", "ls /usr/lib/grub", part],
                                   capture_output=True, text=True, check=True).stdout.split()
        assert "i386-pc" in grub_dirs and "x86_64-efi" not in grub_dirs, grub_dirs
    finally:
        subprocess.run(["losetup", "-d", loop])


def test_bios_qcow2_is_clean_and_zstd_compressed(bios_image):
    qcow2 = Path(f"{bios_image}.qcow2")
    check = subprocess.run(["qemu-img", "check", "--output=json", str(qcow2)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(qcow2)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format-specific"]["data"]["compression-type"] == "zstd"
    assert info["actual-size"] < info["virtual-size"] / 2


def test_bios_checksums_verify(bios_image):
    for ext in ("qcow2", "raw"):
        for alg in ("sha256", "md5"):
            proc = subprocess.run([f"{alg}sum", "-c", f"{bios_image.name}.{ext}.{alg}"],
                                  cwd=bios_image.parent, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bios_image_boots_to_login_and_marker(bios_image, tmp_path):
    m = _boot(Path(f"{bios_image}.qcow2"), tmp_path, uefi=False)
    state, failed, root, os_id = m.groups()
    assert (state, failed) == ("running", "0")
    assert root == "/dev/vda1"
    assert os_id == "debian-12"


# -- hybrid EFI layout -------------------------------------------------------------------------

def test_efi_partition_table(efi_image):
    table = _sfdisk(Path(f"{efi_image}.raw"))
    assert table["label"] == "gpt"
    names = [p.get("name") for p in table["partitions"]]
    assert names == ["ESP", "BSP", "root"]
    assert table["partitions"][0]["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    assert table["partitions"][1]["type"] == "21686148-6449-6E6F-744E-656564454649"


def test_efi_system_partition_holds_the_removable_grub(efi_image):
    raw = Path(f"{efi_image}.raw")
    start = _sfdisk(raw)["partitions"][0]["start"] * 512
    listing = subprocess.run(["mdir", "-i", f"{raw}@@{start}", "-/", "::/EFI"],
                             capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"BOOTX64\s+EFI", listing.stdout), listing.stdout


@pytest.mark.parametrize("fmt", ["qcow2", "vmdk", "vdi"])
def test_efi_formats_pass_qemu_img_check(efi_image, fmt):
    check = subprocess.run(["qemu-img", "check", f"{efi_image}.{fmt}"], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_efi_vhd_has_the_disk_size(efi_image):
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", f"{efi_image}.vhd"],
                                     capture_output=True, text=True, check=True).stdout)
    raw_size = Path(f"{efi_image}.raw").stat().st_size
    assert info["format"] == "vpc"
    assert info["virtual-size"] >= raw_size


def test_efi_image_boots_under_uefi(efi_image, tmp_path):
    state, failed, root, _ = _boot(Path(f"{efi_image}.qcow2"), tmp_path, uefi=True).groups()
    assert (state, failed, root) == ("running", "0", "/dev/vda3")


def test_efi_image_also_boots_under_bios(efi_image, tmp_path):
    state, failed, root, _ = _boot(Path(f"{efi_image}.qcow2"), tmp_path, uefi=False).groups()
    assert (state, failed, root) == ("running", "0", "/dev/vda3")


# -- debian-minimal with DIB_DEBIAN_KERNEL_FLAVOUR=cloud -------------------------------------

def test_cloud_kernel_image_has_only_the_cloud_kernel(cloud_kernel_image):
    manifest = json.loads(Path(f"{cloud_kernel_image}.d/manifest.json").read_text())
    names = {p["name"] if isinstance(p, dict) else p for p in manifest["packages"]["list"]}
    kernels = sorted(n for n in names if n.startswith("linux-image-"))
    assert "linux-image-cloud-amd64" in kernels and "linux-image-amd64" not in kernels, kernels
    assert all("cloud" in k for k in kernels), kernels


def test_cloud_kernel_image_boots_to_login_and_marker(cloud_kernel_image, tmp_path):
    state, failed, root, os_id = _boot(Path(f"{cloud_kernel_image}.qcow2"), tmp_path,
                                       uefi=False).groups()
    assert (state, failed, root, os_id) == ("running", "0", "/dev/vda1", "debian-12")
    console = (tmp_path / "serial.log").read_text(errors="replace")
    assert re.search(r"Linux version \S+-cloud-amd64 ", console), console[:3000]
