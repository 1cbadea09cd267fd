"""A libvirt domain definition next to disk images (``<image>.xml``), ready for
``virsh define``.

The XML is rendered from a template (:data:`DEFAULT_TEMPLATE`, or the file named by
``DIB_LIBVIRT_TEMPLATE``) with ``string.Template`` placeholders, e.g. ``${name}``,
``${disk_path}``. Every variable (see :meth:`DomainSettings.variables`) is XML-escaped;
the ``*_xml`` ones are ready-made fragments (``os_xml``, ``cpu_xml``, ``interface_xml``,
``console_xml``) so a custom template need not re-implement the firmware choice.

Knobs (``DIB_LIBVIRT_*``): ``NAME`` (default: the image's base name), ``MEMORY`` (MiB, 1024),
``VCPUS`` (2), ``DOMAIN_TYPE`` (``kvm``, or ``qemu`` for TCG), ``FIRMWARE`` (``auto``:
UEFI when the disk has an EFI system partition, else BIOS; or ``bios`` / ``uefi``),
``MACHINE`` (default ``pc`` for BIOS, ``q35`` for UEFI), ``NETWORK`` (a libvirt network
name, default ``default``; ``bridge:BR``; or ``none``), ``SERIAL`` (``pty``, default, or
``file:PATH``), ``TEMPLATE`` (a template file), ``XML`` (``0`` writes no XML).

A ``<video>`` device is always there: without one, SeaBIOS under QEMU hangs before the
bootloader (observed with libvirt 9 and QEMU 7.2).
"""
from __future__ import annotations

import logging
import os
import re
import string
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Mapping, Optional
from xml.sax.saxutils import escape

from dib.config import BuildConfig, ImageFormat
from dib.errors import ConfigError
from dib.outputs.files import atomic_output

if TYPE_CHECKING:  # pragma: no cover
    from dib.outputs.base import Run

#: qemu-img format -> libvirt's <driver type=...>
DRIVER_TYPES = {"qcow2": "qcow2", "raw": "raw", "vmdk": "vmdk", "vhd": "vpc", "vdi": "vdi"}
#: which disk output the XML points at, most preferred first
PREFERRED = ("qcow2", "raw", "vmdk", "vdi", "vhd")
ARCHES = {"amd64": "x86_64", "arm64": "aarch64", "i386": "i686", "ppc64el": "ppc64le",
          "s390x": "s390x", "armhf": "armv7l", "riscv64": "riscv64"}

DEFAULT_TEMPLATE = """\
<domain type='${domain_type}'>
  <name>${name}</name>
  <description>${description}</description>
  <memory unit='MiB'>${memory}</memory>
  <currentMemory unit='MiB'>${memory}</currentMemory>
  <vcpu placement='static'>${vcpus}</vcpu>
${os_xml}
  <features>
    <acpi/>
    <apic/>
  </features>
${cpu_xml}
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='${disk_driver}'/>
      <source file='${disk_path}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
${interface_xml}
${console_xml}
    <video>
      <model type='vga'/>
    </video>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
    </rng>
    <memballoon model='virtio'/>
  </devices>
</domain>
"""



@dataclass(frozen=True)
class DomainSettings:
    name: str
    memory_mib: int = 1024
    vcpus: int = 2
    domain_type: str = "kvm"
    firmware: str = "auto"
    machine: str = ""
    network: str = "default"
    serial: str = "pty"
    template: Optional[Path] = None
    enabled: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str], default_name: str) -> "DomainSettings":
        """The DIB_LIBVIRT_* variables, parsed by dib.config's settings table (the engine
        itself uses ``BuildConfig.domain``, parsed once)."""
        from dib.config import group_values

        v = group_values(env, "libvirt")
        return cls(v["name"] or default_name, v["memory"], v["vcpus"], v["domain_type"],
                   v["firmware"], v["machine"] or "", v["network"], v["serial"],
                   v["template"], bool(v["xml"]))

    def uefi(self, has_esp: bool) -> bool:
        return self.firmware == "uefi" or (self.firmware == "auto" and has_esp)

    def variables(self, *, disk_path: Path, disk_format: str, has_esp: bool,
                  arch: str = "amd64", description: str = "") -> Dict[str, str]:
        uefi = self.uefi(has_esp)
        machine = self.machine or ("q35" if uefi else "pc")
        xarch = ARCHES.get(arch, arch)
        def q(s: object) -> str:
            return escape(str(s), {"'": "&apos;", '"': "&quot;"})
        if uefi:
            os_xml = (f"  <os firmware='efi'>\n"
                      f"    <type arch='{q(xarch)}' machine='{q(machine)}'>hvm</type>\n"
                      f"    <firmware>\n"
                      f"      <feature enabled='no' name='secure-boot'/>\n"
                      f"    </firmware>\n"
                      f"    <boot dev='hd'/>\n"
                      f"  </os>")
        else:
            os_xml = (f"  <os>\n"
                      f"    <type arch='{q(xarch)}' machine='{q(machine)}'>hvm</type>\n"
                      f"    <boot dev='hd'/>\n"
                      f"  </os>")
        cpu_xml = ("  <cpu mode='host-passthrough' check='none'/>" if self.domain_type == "kvm"
                   else "  <cpu mode='maximum' check='none'/>")
        if self.network == "none":
            interface_xml = "    <!-- no network interface (DIB_LIBVIRT_NETWORK=none) -->"
        elif self.network.startswith("bridge:"):
            interface_xml = (f"    <interface type='bridge'>\n"
                             f"      <source bridge='{q(self.network[7:])}'/>\n"
                             f"      <model type='virtio'/>\n"
                             f"    </interface>")
        else:
            interface_xml = (f"    <interface type='network'>\n"
                             f"      <source network='{q(self.network)}'/>\n"
                             f"      <model type='virtio'/>\n"
                             f"    </interface>")
        if self.serial == "pty":
            console_xml = ("    <serial type='pty'>\n"
                           "      <target port='0'/>\n"
                           "    </serial>\n"
                           "    <console type='pty'>\n"
                           "      <target type='serial' port='0'/>\n"
                           "    </console>")
        else:
            path = q(self.serial[5:])
            console_xml = (f"    <serial type='file'>\n"
                           f"      <source path='{path}'/>\n"
                           f"      <target port='0'/>\n"
                           f"    </serial>\n"
                           f"    <console type='file'>\n"
                           f"      <source path='{path}'/>\n"
                           f"      <target type='serial' port='0'/>\n"
                           f"    </console>")
        return {
            "name": q(self.name), "description": q(description), "memory": str(self.memory_mib),
            "vcpus": str(self.vcpus), "domain_type": self.domain_type,
            "firmware": "uefi" if uefi else "bios", "machine": q(machine), "arch": q(xarch),
            "disk_path": q(os.fspath(disk_path)), "disk_format": q(disk_format),
            "disk_driver": DRIVER_TYPES.get(disk_format, disk_format),
            "network": q(self.network), "serial": q(self.serial),
            "os_xml": os_xml, "cpu_xml": cpu_xml, "interface_xml": interface_xml,
            "console_xml": console_xml,
        }


def render(template: str, variables: Mapping[str, str], source: str = "template") -> str:
    """Fill ``template``; an unknown ``${var}`` or XML that does not parse is an error."""
    try:
        text = string.Template(template).substitute(variables)
    except KeyError as exc:
        raise ConfigError(f"libvirt {source}: unknown variable ${{{exc.args[0]}}}",
                          hint="known: " + ", ".join(sorted(variables))) from None
    except ValueError as exc:
        raise ConfigError(f"libvirt {source}: {exc}",
                          hint="write a literal $ as $$") from None
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ConfigError(f"libvirt {source}: the rendered XML does not parse: {exc}") from None
    if root.tag != "domain":
        raise ConfigError(f"libvirt {source}: the root element is <{root.tag}>, not <domain>")
    return re.sub(r"\n\s*\n", "\n", text)


def domain_xml(settings: DomainSettings, *, disk_path: Path, disk_format: str, has_esp: bool,
               arch: str = "amd64", description: str = "") -> str:
    tpl = settings.template.read_text() if settings.template else DEFAULT_TEMPLATE
    src = f"template {settings.template}" if settings.template else "template"
    return render(tpl, settings.variables(disk_path=disk_path, disk_format=disk_format,
                                          has_esp=has_esp, arch=arch,
                                          description=description), src)


# -- the sidecar: <image>.xml beside the disk outputs ----------------------------------------

log = logging.getLogger("dib.outputs")


def libvirt_disk(cfg: BuildConfig) -> Optional[ImageFormat]:
    """The disk output the domain boots: the first of :data:`PREFERRED` the build wrote."""
    disks = {f.value: f for f in cfg.formats if f.is_qemu_disk}
    return next((disks[n] for n in PREFERRED if n in disks), None)


def write_xml(run: "Run") -> Optional[Path]:
    """``<image>.xml`` for the disk output, unless there is none or DIB_LIBVIRT_XML=0."""
    cfg = run.cfg
    fmt = libvirt_disk(cfg)
    if fmt is None:
        return None
    settings = cfg.domain or DomainSettings(os.path.basename(cfg.image_name))
    if not settings.enabled:
        return None
    image = cfg.output_path(fmt)
    xml = domain_xml(settings, disk_path=image.absolute(), disk_format=fmt.value,
                     has_esp=run.has_esp, arch=cfg.arch,
                     description=f"built by dib from: {' '.join(cfg.elements)}")
    dest = Path(f"{cfg.image_name}.xml")
    with atomic_output(dest, cfg.overwrite) as tmp:
        tmp.write_text(xml)
    log.info("libvirt domain %s (%s, %s): %s", settings.name,
             "UEFI" if settings.uefi(run.has_esp) else "BIOS", fmt.value, dest)
    run.written.append(dest)
    return dest
