"""Writing a :class:`~dib.blockdev.partition.Layout` and making its partitions visible.

MBR tables are written by ``sfdisk`` from a script, GPT tables by one ``sgdisk`` call; both
get every start and size in sectors, and the derived disk identifier, so the table is fully
determined by the layout. Both work on a regular file as well as on a loop device, which is
how the unit tests exercise them without root: :func:`sfdisk_script` and :func:`sgdisk_argv`
are pure, and :func:`write_table` runs them through :mod:`dib.cmd`.

Making partitions visible does not rely on udev or on the kernel's own rescan (neither works
on every machine dib runs on; device-mapper/kpartx is not used at all): ``partx --add`` asks
the kernel for the partition devices, and a ``/dev`` node the kernel did not create is made
with ``mknod`` from ``/sys/class/block/<dev>/dev``. The undo (remove our nodes, ``partx
--delete``) goes on the ExitStack right after each step.
"""
from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from pathlib import Path
from typing import Dict, List

from dib import cmd
from dib.blockdev.partition import Layout, partition_node
from dib.errors import BlockDeviceError

log = logging.getLogger("dib.blockdev.parttable")

SYS_BLOCK = Path("/sys/class/block")


def sfdisk_script(layout: Layout) -> str:
    """The sfdisk input for an MBR layout."""
    lines = ["label: dos", f"label-id: {layout.disk_id}", "unit: sectors",
             f"sector-size: {layout.sector_size}", ""]
    for slot in layout.slots:
        if slot.logical and layout.extended and slot.number == 5:
            _, start, size = layout.extended
            lines.append(f"start={start}, size={size}, type=5")
        boot = ", bootable" if slot.spec.bootable else ""
        lines.append(f"start={slot.start}, size={slot.size}, type={slot.spec.type}{boot}")
    return "\n".join(lines) + "\n"


def sfdisk_argv(device: str) -> List[str]:
    return ["sfdisk", "--quiet", "--no-tell-kernel", device]


def sgdisk_argv(device: str, layout: Layout) -> List[str]:
    """One sgdisk call writing a whole GPT layout (``-A N:set:2`` = legacy BIOS bootable)."""
    argv = ["sgdisk", "--clear", "--disk-guid", layout.disk_id]
    for slot in layout.slots:
        n = slot.number
        argv += ["--new", f"{n}:{slot.start}:{slot.start + slot.size - 1}",
                 "--typecode", f"{n}:{slot.spec.type}",
                 "--change-name", f"{n}:{slot.spec.name}"]
        if slot.spec.uuid:
            argv += ["--partition-guid", f"{n}:{slot.spec.uuid}"]
        if slot.spec.bootable:
            argv += ["--attributes", f"{n}:set:2"]
    return argv + [device]


def write_table(device: str, layout: Layout) -> None:
    """Write ``layout`` to ``device`` (a block device or a regular file)."""
    log.info("writing %s partition table to %s", layout.label, device)
    if layout.label == "gpt":
        cmd.run(sgdisk_argv(device, layout))
    else:
        cmd.run(sfdisk_argv(device), input=sfdisk_script(layout))


def map_partitions(stack: contextlib.ExitStack, device: str, layout: Layout) -> Dict[str, str]:
    """Make the partitions of ``device`` appear as ``/dev`` nodes; returns {name: node}."""
    sysname = os.path.basename(device)
    # A loop device can carry partitions from an earlier user (partitions added by partx
    # survive a detach): drop them, or partx --add fails and the stale ones stand in.
    if list(SYS_BLOCK.glob(f"{sysname}p*")):
        log.info("%s still has partitions from an earlier user; removing them", device)
        cmd.run(["partx", "--delete", device], check=False, capture=True)
    result = cmd.run(["partx", "--add", device], check=False, capture=True)
    stack.callback(_remove_partitions, device)
    wanted = {slot.spec.name: slot.number for slot in layout.slots}
    missing = [n for n in wanted.values()
               if not (SYS_BLOCK / f"{sysname}p{n}").exists()]
    if missing:
        raise BlockDeviceError(
            f"partitions {missing} of {device} did not appear after 'partx --add' "
            f"(exit status {result.returncode}): {result.tail.strip()}",
            hint="check 'partx --show' and 'dmesg' for the partition table the kernel sees")
    _check_geometry(device, layout)
    nodes: Dict[str, str] = {}
    for name, number in wanted.items():
        node = partition_node(device, number)
        if _ensure_node(SYS_BLOCK / f"{sysname}p{number}" / "dev", node):
            stack.callback(_unlink, node)
        nodes[name] = node
    return nodes


def _check_geometry(device: str, layout: Layout) -> None:
    """Each partition the kernel shows must be where the layout put it (sysfs counts in
    512-byte units whatever the sector size)."""
    sysname = os.path.basename(device)
    unit = layout.sector_size // 512
    for slot in layout.slots:
        part = SYS_BLOCK / f"{sysname}p{slot.number}"
        start, size = (int((part / f).read_text()) for f in ("start", "size"))
        if (start, size) != (slot.start * unit, slot.size * unit):
            raise BlockDeviceError(
                f"partition {slot.number} ({slot.spec.name}) of {device} is at {start}+{size} "
                f"in the kernel, not {slot.start * unit}+{slot.size * unit} as written",
                hint="another program may be using the loop device; run "
                     "'partx --delete' on it or detach it")


def _ensure_node(dev_file: Path, node: str, wait: float = 1.0) -> bool:
    """Make ``node`` the block device sysfs names in ``dev_file``; True if we created it.

    devtmpfs usually creates the node itself (give it a moment). An existing node is checked:
    partition minors are allocated dynamically, so a node left behind by another loop device
    may point at a different partition -- mkfs on it would hit the wrong disk.
    """
    major, minor = (int(x) for x in dev_file.read_text().strip().split(":"))
    expected = os.makedev(major, minor)
    deadline = time.monotonic() + wait
    while True:
        try:
            st = os.stat(node)
        except FileNotFoundError:
            if time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            break
        if stat.S_ISBLK(st.st_mode) and st.st_rdev == expected:
            return False
        log.warning("%s is %d:%d, not the partition %d:%d; replacing it", node,
                    os.major(st.st_rdev), os.minor(st.st_rdev), major, minor)
        os.unlink(node)
        break
    log.debug("mknod %s b %d %d", node, major, minor)
    os.mknod(node, stat.S_IFBLK | 0o600, expected)
    return True


def _unlink(node: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(node)


def _remove_partitions(device: str) -> None:
    sysname = os.path.basename(device)
    result = cmd.run(["partx", "--delete", device], check=False, capture=True)
    left = sorted(p.name for p in SYS_BLOCK.glob(f"{sysname}p*"))
    if result.returncode and left:
        # Not fatal: detaching the loop device drops its partitions too.
        log.warning("partx --delete %s failed (%s); still present: %s", device,
                    result.tail.strip(), ", ".join(left))
