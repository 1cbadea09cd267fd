"""Build engine: what the disk stage learns reaches the phases after it and the build's record.

fake-os on a GPT disk with an EFI system partition (tests/lib/blockdev_configs.EFI_TREE),
``-t tar,raw`` (the tar is written from the disk's filesystems, so the test reads what the
disk and final phases left there). A block-device.d and a finalise.d script record the
block device's variables; the build's record says the disk has an ESP (manifest, libvirt
XML) -- also when the same build is then reused from the finished-image cache.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Iterator

import pytest

from tests.lib import builds
from tests.lib.blockdev_configs import EFI_TREE
from tests.lib.elements import make_element

VARS = ("IMAGE_BLOCK_DEVICE", "DIB_ROOT_LABEL", "DIB_ROOT_FSTYPE")
RECORD = "".join(f'echo "{v}=${{{v}:-}}" >> "$OUT"\n' for v in VARS)


@pytest.fixture
def dib(tmp_path: Path) -> Iterator[builds.Dib]:
    with builds.Dib(tmp_path) as d:
        make_element(d.elements, "t-disk", hooks={
            "block-device.d": {"50-t-disk": 'OUT="$TMP_MOUNT_PATH/t-disk.block-device"\n'
                                            + RECORD},
            "finalise.d": {"50-t-disk": "OUT=/t-disk.finalise\n" + RECORD},
        })
        yield d


def _recorded(dib: builds.Dib, phase: str) -> Dict[str, str]:
    text = dib.read(f"t-disk.{phase}").decode()
    return dict(line.split("=", 1) for line in text.splitlines())


def _uefi(dib: builds.Dib) -> bool:
    manifest = json.loads((dib.out / "img.d" / "manifest.json").read_text())
    firmware = ET.parse(dib.out / "img.xml").getroot().find("os")
    assert firmware is not None
    assert (firmware.get("firmware") == "efi") is manifest["uefi"]
    return bool(manifest["uefi"])


def test_disk_variables_and_esp_reach_later_phases_and_the_record(dib: builds.Dib) -> None:
    env = {"DIB_BLOCK_DEVICE_CONFIG": EFI_TREE, "OVERWRITE_OLD_IMAGE": "1"}
    first = dib.run("t-disk", types="tar,raw", env=env)
    assert first.returncode == 0, first.stderr
    block, final = _recorded(dib, "block-device"), _recorded(dib, "finalise")
    assert block["IMAGE_BLOCK_DEVICE"].startswith("/dev/loop") and all(block.values())
    assert block == final
    assert _uefi(dib)

    again = dib.run("t-disk", types="tar,raw", env=env)
    assert again.returncode == 0, again.stderr
    assert "(cached image)" in dib.logfile().read_text()
    assert _uefi(dib)


def test_no_esp_no_uefi(dib: builds.Dib) -> None:
    result = dib.run("t-disk", types="tar,raw")
    assert result.returncode == 0, result.stderr
    assert _recorded(dib, "finalise")["IMAGE_BLOCK_DEVICE"].startswith("/dev/loop")
    assert not _uefi(dib)
