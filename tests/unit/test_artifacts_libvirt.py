"""libvirt domain XML: rendering from the template, BIOS/UEFI, knobs, user templates."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dib.errors import ConfigError
from dib.outputs import libvirt
from dib.outputs.libvirt import DomainSettings

DISK = Path("/images/web.qcow2")


def render(env=None, *, has_esp=False, fmt="qcow2", disk=DISK, name="web", arch="amd64"):
    s = DomainSettings.from_env(env or {}, name)
    text = libvirt.domain_xml(s, disk_path=disk, disk_format=fmt, has_esp=has_esp, arch=arch,
                              description="built by dib from: vm debian")
    return text, ET.fromstring(text)


def test_bios_default():
    text, root = render()
    assert root.tag == "domain" and root.get("type") == "kvm"
    assert root.findtext("name") == "web"
    assert root.find("memory").text == "1024" and root.find("memory").get("unit") == "MiB"
    assert root.findtext("vcpu") == "2"
    os_ = root.find("os")
    assert os_.get("firmware") is None and os_.find("firmware") is None
    assert os_.find("type").get("machine") == "pc" and os_.find("type").get("arch") == "x86_64"
    assert os_.find("boot").get("dev") == "hd"
    disk = root.find("devices/disk")
    assert disk.find("driver").attrib == {"name": "qemu", "type": "qcow2"}
    assert disk.find("source").get("file") == "/images/web.qcow2"
    assert disk.find("target").attrib == {"dev": "vda", "bus": "virtio"}
    # a <video> device, without which SeaBIOS hangs before the bootloader
    assert root.find("devices/video/model").get("type") == "vga"
    assert root.find("devices/serial").get("type") == "pty"
    assert root.find("devices/console/target").attrib == {"type": "serial", "port": "0"}
    iface = root.find("devices/interface")
    assert iface.get("type") == "network" and iface.find("source").get("network") == "default"
    assert root.find("cpu").get("mode") == "host-passthrough"
    assert "\n\n" not in text


def test_uefi_when_the_disk_has_an_esp():
    _, root = render(has_esp=True)
    os_ = root.find("os")
    assert os_.get("firmware") == "efi"
    assert os_.find("type").get("machine") == "q35"
    assert os_.find("firmware/feature").attrib == {"enabled": "no", "name": "secure-boot"}
    assert root.find("devices/video") is not None


@pytest.mark.parametrize("firmware,has_esp,efi", [("bios", True, False), ("uefi", False, True),
                                                  ("efi", False, True), ("auto", True, True),
                                                  ("AUTO", False, False)])
def test_firmware_override(firmware, has_esp, efi):
    _, root = render({"DIB_LIBVIRT_FIRMWARE": firmware}, has_esp=has_esp)
    assert (root.find("os").get("firmware") == "efi") is efi


def test_knobs():
    _, root = render({"DIB_LIBVIRT_NAME": "db1", "DIB_LIBVIRT_MEMORY": "4096",
                      "DIB_LIBVIRT_VCPUS": "4", "DIB_LIBVIRT_DOMAIN_TYPE": "qemu",
                      "DIB_LIBVIRT_MACHINE": "q35", "DIB_LIBVIRT_NETWORK": "bridge:br0",
                      "DIB_LIBVIRT_SERIAL": "file:/var/log/db1.log"}, fmt="raw")
    assert root.get("type") == "qemu" and root.find("cpu").get("mode") == "maximum"
    assert root.findtext("name") == "db1" and root.findtext("vcpu") == "4"
    assert root.find("memory").text == "4096"
    assert root.find("os/type").get("machine") == "q35"
    assert root.find("devices/disk/driver").get("type") == "raw"
    iface = root.find("devices/interface")
    assert iface.get("type") == "bridge" and iface.find("source").get("bridge") == "br0"
    serial = root.find("devices/serial")
    assert serial.get("type") == "file"
    assert serial.find("source").get("path") == "/var/log/db1.log"
    assert root.find("devices/console/source").get("path") == "/var/log/db1.log"


def test_no_network():
    _, root = render({"DIB_LIBVIRT_NETWORK": "none"})
    assert root.find("devices/interface") is None


@pytest.mark.parametrize("fmt,driver", [("vhd", "vpc"), ("vmdk", "vmdk"), ("vdi", "vdi")])
def test_driver_types(fmt, driver):
    _, root = render(fmt=fmt)
    assert root.find("devices/disk/driver").get("type") == driver


def test_arm64_arch_name():
    _, root = render(arch="arm64", has_esp=True)
    assert root.find("os/type").get("arch") == "aarch64"


def test_values_are_escaped():
    _, root = render({"DIB_LIBVIRT_NAME": "a&b'<c>"}, disk=Path("/x/it's & co.qcow2"))
    assert root.findtext("name") == "a&b'<c>"
    assert root.find("devices/disk/source").get("file") == "/x/it's & co.qcow2"


@pytest.mark.parametrize("env,match", [
    ({"DIB_LIBVIRT_MEMORY": "1G"}, "DIB_LIBVIRT_MEMORY: must be a positive"),
    ({"DIB_LIBVIRT_VCPUS": "-1"}, "DIB_LIBVIRT_VCPUS"),
    ({"DIB_LIBVIRT_DOMAIN_TYPE": "xen"}, "kvm, qemu"),
    ({"DIB_LIBVIRT_FIRMWARE": "coreboot"}, "auto, bios or uefi"),
    ({"DIB_LIBVIRT_SERIAL": "tcp:1"}, "pty or file:PATH"),
    ({"DIB_LIBVIRT_NETWORK": "bridge:"}, "bridge name"),
    ({"DIB_LIBVIRT_TEMPLATE": "/nonexistent.xml"}, "is not a file"),
    ({"DIB_LIBVIRT_NAME": "a/b"}, "not a valid domain name"),
])
def test_bad_knobs_name_the_variable(env, match):
    with pytest.raises(ConfigError, match=match):
        DomainSettings.from_env(env, "web")


def test_disabled():
    assert DomainSettings.from_env({"DIB_LIBVIRT_XML": "0"}, "x").enabled is False
    assert DomainSettings.from_env({}, "x").enabled is True


def test_user_template(tmp_path):
    tpl = tmp_path / "t.xml"
    tpl.write_text("<domain type='${domain_type}'><name>${name}-vm</name>"
                   "<memory unit='MiB'>${memory}</memory>${os_xml}<devices>"
                   "<disk type='file' device='disk'><driver name='qemu' type='${disk_driver}'/>"
                   "<source file='${disk_path}'/><target dev='sda' bus='scsi'/></disk>"
                   "</devices><!-- $$HOME ${firmware} --></domain>")
    text, root = render({"DIB_LIBVIRT_TEMPLATE": str(tpl)}, has_esp=True)
    assert root.findtext("name") == "web-vm"
    assert root.find("os").get("firmware") == "efi"
    assert root.find("devices/disk/target").get("bus") == "scsi"
    assert "$HOME uefi" in text


@pytest.mark.parametrize("body,match", [
    ("<domain><name>${nmae}</name></domain>", r"unknown variable \$\{nmae\}"),
    ("<domain><name>${name}</name>", "does not parse"),
    ("<network><name>${name}</name></network>", "not <domain>"),
    ("<domain>$ 5</domain>", "write a literal"),
])
def test_bad_user_templates(tmp_path, body, match):
    tpl = tmp_path / "t.xml"
    tpl.write_text(body)
    with pytest.raises(ConfigError) as err:
        render({"DIB_LIBVIRT_TEMPLATE": str(tpl)})
    assert str(tpl) in err.value.message
    import re
    assert re.search(match, err.value.message + " " + (err.value.hint or ""))
