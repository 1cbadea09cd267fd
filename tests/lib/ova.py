"""A strict reader of an OVA (tests only): the archive layout, the OVF descriptor and the
manifest, checked against each other. No OVF XSD is available offline, so this checks what
the schema and the importers (VirtualBox, VMware) rely on: the namespaces, the structure,
every reference resolving, sizes and digests matching the members."""
from __future__ import annotations

import hashlib
import re
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List

OVF = "http://schemas.dmtf.org/ovf/envelope/1"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
STREAM = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def _a(el: ET.Element, name: str) -> str:
    value = el.get(_q(OVF, name))
    assert value is not None, f"<{el.tag}> has no ovf:{name}"
    return value


def check_ova(path: Path) -> Dict[str, Any]:
    """Check ``path`` strictly (AssertionError on any problem); return what it holds."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        assert tar.format == tarfile.USTAR_FORMAT or all(
            not m.pax_headers for m in members), "not a plain ustar archive"
        data = {m.name: tar.extractfile(m).read() for m in members}
    names = [m.name for m in members]
    assert all(m.isfile() and "/" not in m.name for m in members), names
    assert names[0].endswith(".ovf"), f"the first member is {names[0]}, not the .ovf"
    root = ET.fromstring(data[names[0]])
    assert root.tag == _q(OVF, "Envelope"), root.tag
    assert _a(root, "version").startswith("1."), "not an OVF 1.x envelope"
    # every element is in a known namespace (no stray unqualified names)
    for el in root.iter():
        ns = el.tag[1:].split("}", 1)[0] if el.tag.startswith("{") else ""
        assert ns in (OVF, RASD, VSSD), f"element {el.tag} outside the OVF namespaces"
    files = {_a(f, "id"): f for f in root.findall(f"{_q(OVF, 'References')}/{_q(OVF, 'File')}")}
    assert files, "no References/File"
    for fid, f in files.items():
        href = _a(f, "href")
        assert href in data, f"File {fid} names {href}, which the OVA does not hold"
        assert int(_a(f, "size")) == len(data[href]), f"ovf:size of {href} is wrong"
    disks = root.findall(f"{_q(OVF, 'DiskSection')}/{_q(OVF, 'Disk')}")
    assert disks and root.find(f"{_q(OVF, 'DiskSection')}/{_q(OVF, 'Info')}") is not None
    disk_ids = set()
    out_disks: List[Dict[str, Any]] = []
    for d in disks:
        assert _a(d, "fileRef") in files, f"Disk fileRef {_a(d, 'fileRef')} does not resolve"
        assert _a(d, "format") == STREAM
        units = d.get(_q(OVF, "capacityAllocationUnits"), "byte")
        assert units == "byte", units
        disk_ids.add(_a(d, "diskId"))
        out_disks.append({"capacity": int(_a(d, "capacity")),
                          "file": _a(files[_a(d, "fileRef")], "href")})
    [vs] = root.findall(_q(OVF, "VirtualSystem"))
    assert vs.find(_q(OVF, "Info")) is not None
    oss = vs.find(_q(OVF, "OperatingSystemSection"))
    assert oss is not None and _a(oss, "id").isdigit()
    hw = vs.find(_q(OVF, "VirtualHardwareSection"))
    assert hw is not None and hw.find(_q(OVF, "Info")) is not None
    assert hw.find(f"{_q(OVF, 'System')}/{_q(VSSD, 'VirtualSystemType')}") is not None
    items: Dict[int, Dict[str, str]] = {}
    for item in hw.findall(_q(OVF, "Item")):
        fields = {c.tag.split("}", 1)[1]: (c.text or "") for c in item}
        assert all(c.tag.startswith(f"{{{RASD}}}") for c in item)
        assert list(fields) == sorted(fields), f"RASD elements out of order: {list(fields)}"
        items.setdefault(int(fields["ResourceType"]), fields)
        instance_ids = [i.findtext(_q(RASD, "InstanceID")) for i in hw.findall(_q(OVF, "Item"))]
        assert len(set(instance_ids)) == len(instance_ids), "duplicate InstanceID"
    assert {3, 4, 10, 17} <= set(items), f"missing CPU/memory/NIC/disk: {sorted(items)}"
    controllers = {i["InstanceID"] for t, i in items.items() if t in (5, 6, 20)}
    disk_item = items[17]
    assert disk_item["Parent"] in controllers, "the disk is on no controller"
    assert disk_item["HostResource"] in {f"ovf:/disk/{i}" for i in disk_ids}
    networks = {_a(n, "name") for n in
                root.findall(f"{_q(OVF, 'NetworkSection')}/{_q(OVF, 'Network')}")}
    assert items[10]["Connection"] in networks, "the NIC's network is not declared"
    digests = {}
    mf = [n for n in names if n.endswith(".mf")]
    if mf:
        for line in data[mf[0]].decode().splitlines():
            m = re.fullmatch(r"SHA256\((?P<f>[^)]+)\)= (?P<h>[0-9a-f]{64})", line)
            assert m, f"bad manifest line {line!r}"
            assert hashlib.sha256(data[m["f"]]).hexdigest() == m["h"], f"{m['f']}: digest"
            digests[m["f"]] = m["h"]
        assert set(digests) == set(names) - {mf[0]}, "the manifest does not cover every file"
    return {"members": names, "disks": out_disks, "cpus": int(items[3]["VirtualQuantity"]),
            "memory_mib": int(items[4]["VirtualQuantity"]), "digests": digests,
            "data": data}
