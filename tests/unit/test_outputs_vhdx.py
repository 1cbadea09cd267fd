"""-t vhdx: a dynamic VHDX that qemu-img checks clean (no root)."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from dib.config import ImageFormat, parse_args
from dib.outputs import cache_inputs, family_of, vhdx
from dib.outputs.base import Needs

MIB = 1 << 20


def test_family_declares_a_disk_output():
    fam = family_of(ImageFormat.VHDX)
    assert fam is vhdx.FAMILY and fam.needs is Needs.DISK
    cfg = parse_args(["-t", "vhdx", "-o", "/o/web", "x"], {})
    assert cfg.output_path(ImageFormat.VHDX).name == "web.vhdx"
    assert cfg.needs_block_device
    assert "vhdx" not in cache_inputs(cfg)  # nothing beyond the format itself


@pytest.mark.skipif(shutil.which("qemu-img") is None,
                    reason="qemu-img is not installed (apt install qemu-utils)")
def test_convert_writes_a_dynamic_vhdx_with_the_data(tmp_path):
    raw = tmp_path / "disk.raw"
    payload = b"dib-vhdx-test" * 100
    with open(raw, "wb") as f:
        f.truncate(64 * MIB)
        f.seek(3 * MIB)
        f.write(payload)
    dest = tmp_path / "disk.vhdx"
    subprocess.run(vhdx.convert_argv(raw, dest), check=True)
    subprocess.run(["qemu-img", "check", "-f", "vhdx", dest], check=True,
                   capture_output=True)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", dest], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["format"] == "vhdx" and info["virtual-size"] == 64 * MIB
    assert dest.stat().st_size < 64 * MIB  # dynamic: grows with the data only
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", dest, back], check=True)
    assert back.read_bytes()[3 * MIB:3 * MIB + len(payload)] == payload
