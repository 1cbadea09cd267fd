"""``-t ova``: an OVF package for VirtualBox and VMware (no ``ovftool`` needed).

An OVA is a ustar archive of, in this order:

* ``<name>.ovf``: the OVF 1.0 descriptor (DMTF DSP0243): ``References/File`` names the disk
  file with its size, ``DiskSection/Disk`` its capacity in bytes and format
  (streamOptimized VMDK), and one ``VirtualSystem`` with an ``OperatingSystemSection`` and a
  ``VirtualHardwareSection``: CPUs, memory, an LSI Logic SCSI controller, the disk on it and
  an E1000 network adapter on the ``NAT`` network;
* ``<name>-disk1.vmdk``: the disk, ``qemu-img convert -O vmdk -o subformat=streamOptimized``;
* ``<name>.mf``: the manifest, ``SHA256(<file>)= <hex>`` for the two files above.

The machine's CPUs and memory are the libvirt domain's (``DIB_LIBVIRT_VCPUS``,
``DIB_LIBVIRT_MEMORY``). The descriptor asks for BIOS firmware (OVF 1.0 has no portable way to
ask for UEFI): for a UEFI-only disk, switch the imported machine to EFI.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import IO, Any, Dict, List, Mapping, Sequence, Tuple
from xml.sax.saxutils import escape, quoteattr

from dib import cmd
from dib.cache import file_sha256
from dib.config import BuildConfig, ImageFormat
from dib.errors import DibError
from dib.outputs.base import Family, Needs, Run
from dib.outputs.files import atomic_output
from dib.outputs.libvirt import DomainSettings
from dib.outputs.stable_ids import stabilize

log = logging.getLogger("dib.outputs")

OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1"
RASD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
STREAM_OPTIMIZED = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"

#: CIM_OperatingSystem OsType values (OVF OperatingSystemSection ovf:id), by os-release ID:
#: (32-bit, 64-bit)
OS_TYPES: Mapping[str, Tuple[int, int]] = {"debian": (95, 96), "ubuntu": (93, 94)}
LINUX_OS_TYPES = (36, 101)  # "LINUX", "Linux 64-Bit"
ARCHES_64 = ("amd64", "arm64", "ppc64el", "riscv64", "s390x")

#: a ustar member holds at most 8 GiB - 1 bytes (its size is 11 octal digits)
USTAR_MAX = 8 ** 11 - 1


def os_type(os_id: str, arch: str) -> int:
    pair = OS_TYPES.get(os_id.lower(), LINUX_OS_TYPES)
    return pair[1] if arch in ARCHES_64 else pair[0]


def _item(**rasd: Any) -> str:
    # the RASD schema is a sequence in alphabetical order of the element names
    lines = [f"        <rasd:{k}>{escape(str(v))}</rasd:{k}>" for k, v in sorted(rasd.items())]
    return "      <Item>\n" + "\n".join(lines) + "\n      </Item>\n"


def descriptor(name: str, *, disk_href: str, disk_size: int, capacity: int, cpus: int,
               memory_mib: int, os_id: int, os_name: str) -> str:
    """The OVF 1.0 envelope for one machine with one disk."""
    q = quoteattr
    hardware = "".join([
        _item(AllocationUnits="hertz * 10^6", Caption=f"{cpus} virtual CPU",
              Description="Number of virtual CPUs", ElementName=f"{cpus} virtual CPU",
              InstanceID=1, ResourceType=3, VirtualQuantity=cpus),
        _item(AllocationUnits="byte * 2^20", Caption=f"{memory_mib} MB of memory",
              Description="Memory Size", ElementName=f"{memory_mib} MB of memory",
              InstanceID=2, ResourceType=4, VirtualQuantity=memory_mib),
        _item(Address=0, Caption="scsiController0", Description="SCSI Controller",
              ElementName="scsiController0", InstanceID=3, ResourceSubType="lsilogic",
              ResourceType=6),
        _item(AddressOnParent=0, Caption="disk1", Description="Disk Image",
              ElementName="disk1", HostResource="ovf:/disk/vmdisk1", InstanceID=4,
              Parent=3, ResourceType=17),
        _item(AutomaticAllocation="true", Caption="Ethernet adapter on 'NAT'",
              Connection="NAT", Description="E1000 ethernet adapter",
              ElementName="Ethernet adapter on 'NAT'", InstanceID=5,
              ResourceSubType="E1000", ResourceType=10),
    ])
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="{OVF_NS}" xmlns:ovf="{OVF_NS}" \
xmlns:rasd="{RASD_NS}" xmlns:vssd="{VSSD_NS}">
  <References>
    <File ovf:href={q(disk_href)} ovf:id="file1" ovf:size="{disk_size}"/>
  </References>
  <DiskSection>
    <Info>List of the virtual disks used in the package</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" \
ovf:fileRef="file1" ovf:format="{STREAM_OPTIMIZED}"/>
  </DiskSection>
  <NetworkSection>
    <Info>Logical networks used in the package</Info>
    <Network ovf:name="NAT">
      <Description>Logical network used by this appliance</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id={q(name)}>
    <Info>A virtual machine</Info>
    <Name>{escape(name)}</Name>
    <OperatingSystemSection ovf:id="{os_id}">
      <Info>The kind of installed guest operating system</Info>
      <Description>{escape(os_name)}</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements for a virtual machine</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{escape(name)}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-10</vssd:VirtualSystemType>
      </System>
{hardware}    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def _add(tar: tarfile.TarFile, name: str, size: int, data: IO[bytes], mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    tar.addfile(info, data)


def disk_name(name: str) -> str:
    """The disk's member name in the OVA of image ``name``."""
    return f"{name}-disk1.vmdk"


def write_ova(dest: Path, vmdk: Path, *, name: str, capacity: int, cpus: int, memory_mib: int,
              os_id: int, os_name: str, mtime: int) -> List[str]:
    """The OVA at ``dest`` from the streamOptimized ``vmdk``; returns its member names."""
    import io

    disk_href = disk_name(name)
    disk_size = vmdk.stat().st_size
    if disk_size > USTAR_MAX:
        raise DibError(f"-t ova: the disk ({disk_size >> 20} MiB as streamOptimized VMDK) is "
                       "larger than a ustar member can hold (8 GiB)",
                       hint="use -t vmdk for this image")
    ovf = descriptor(name, disk_href=disk_href, disk_size=disk_size, capacity=capacity,
                     cpus=cpus, memory_mib=memory_mib, os_id=os_id,
                     os_name=os_name).encode()
    ET.fromstring(ovf)  # well-formed, or a bug here
    mf = (f"SHA256({name}.ovf)= {hashlib.sha256(ovf).hexdigest()}\n"
          f"SHA256({disk_href})= {file_sha256(vmdk)}\n").encode()
    names = [f"{name}.ovf", disk_href, f"{name}.mf"]
    with tarfile.open(dest, "w", format=tarfile.USTAR_FORMAT) as tar:
        _add(tar, names[0], len(ovf), io.BytesIO(ovf), mtime)
        with open(vmdk, "rb") as f:
            _add(tar, names[1], disk_size, f, mtime)
        _add(tar, names[2], len(mf), io.BytesIO(mf), mtime)
    return names


def _domain(cfg: BuildConfig) -> DomainSettings:
    return cfg.domain or DomainSettings(os.path.basename(cfg.image_name))


def cache_inputs(cfg: BuildConfig) -> Dict[str, Any]:
    d = _domain(cfg)
    return {"cpus": d.vcpus, "memory": d.memory_mib,
            "epoch": "" if cfg.source_date_epoch is None else str(cfg.source_date_epoch)}


def write(run: Run, raw: Path, formats: Sequence[ImageFormat]) -> None:
    cfg = run.cfg
    dest = cfg.output_path(ImageFormat.OVA)
    domain = _domain(cfg)
    rel = run.facts.os_release
    log.info("writing %s", dest)
    with run.timings.measure("output", "ova"), atomic_output(dest, cfg.overwrite) as tmp:
        vmdk = tmp.with_name(tmp.name + ".vmdk")
        try:
            cmd.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o",
                     "subformat=streamOptimized", os.fspath(raw), os.fspath(vmdk)])
            if cfg.source_date_epoch is not None:
                stabilize(vmdk, "vmdk", raw, cfg.source_date_epoch,
                          extent_name=disk_name(os.path.basename(cfg.image_name)))
            write_ova(tmp, vmdk, name=os.path.basename(cfg.image_name),
                      capacity=raw.stat().st_size, cpus=domain.vcpus,
                      memory_mib=domain.memory_mib,
                      os_id=os_type(rel.get("ID", ""), cfg.arch),
                      os_name=rel.get("PRETTY_NAME") or "Linux",
                      mtime=cfg.source_date_epoch if cfg.source_date_epoch is not None
                      else int(time.time()))
        finally:
            vmdk.unlink(missing_ok=True)
    run.add(dest)


FAMILY = Family("ova", (ImageFormat.OVA,), Needs.DISK, write, cache_inputs=cache_inputs)
