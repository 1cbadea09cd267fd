"""With SOURCE_DATE_EPOCH, -t vmdk, vhd, vdi, vhdx and ova are bit-identical across conversions
of the same raw disk, and qemu-img still reads them (no root; needs qemu-img)."""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from dib import cmd
from dib.config import ImageFormat, parse_args
from dib.log import Timings
from dib.outputs import Run, family_of, ova, vhdx
from dib.outputs.qemu import qemu_img_convert_argv
from dib.outputs.stable_ids import VHD_EPOCH, crc32c, raw_digest, stabilize, vhd_checksum

MIB = 1 << 20
EPOCH = 1700000000
FORMATS = ("vmdk", "vhd", "vdi", "vhdx")
QEMU_NAME = {"vmdk": "vmdk", "vhd": "vpc", "vdi": "vdi", "vhdx": "vhdx"}

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                    reason="qemu-img is not installed (apt install qemu-utils)")


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    """64 MiB, mostly a hole, with fixed pseudo-random data at a few offsets."""
    path = tmp_path / "disk.raw"
    rng = random.Random(15)
    with open(path, "wb") as f:
        f.truncate(64 * MIB)
        for offset in (0, MIB, 5 * MIB + 123, 40 * MIB, 64 * MIB - 4096):
            f.seek(offset)
            f.write(rng.randbytes(4096 if offset == 64 * MIB - 4096 else 70000))
    return path


def _run(out: Path, types: str, env: Optional[Dict[str, str]] = None) -> Run:
    cfg = parse_args(["-t", types, "-o", str(out / "img"), "x"], env or {})
    return Run(cfg, Timings(), ("x",))


def _write(out: Path, raw: Path, fmt: str, epoch: Optional[int] = EPOCH) -> Path:
    env = {} if epoch is None else {"SOURCE_DATE_EPOCH": str(epoch)}
    run = _run(out, fmt, env)
    image_format = ImageFormat(fmt)
    family_of(image_format).write(run, raw, [image_format])
    return run.cfg.output_path(image_format)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _qemu_img(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True)


def _reads_back(image: Path, qemu_fmt: str, raw: Path, tmp_path: Path) -> None:
    """qemu-img info / check accept ``image``, and it converts back to ``raw``'s bytes."""
    info = json.loads(_qemu_img("info", "--output=json", "-f", qemu_fmt, image).stdout)
    assert info["format"] == qemu_fmt and info["virtual-size"] >= raw.stat().st_size
    check = _qemu_img("check", "-f", qemu_fmt, image)
    if "does not support checks" not in check.stderr:  # vpc has no check
        assert check.returncode == 0, check.stdout + check.stderr
    back = tmp_path / f"back-{image.name}.raw"
    done = _qemu_img("convert", "-f", qemu_fmt, "-O", "raw", image, back)
    assert done.returncode == 0, done.stderr
    want = raw.read_bytes()
    got = back.read_bytes()
    # a VHD's size is rounded up to whole CHS cylinders: the tail is zeros
    assert got[:len(want)] == want and not got[len(want):].strip(b"\0")


def test_crc32c_is_castagnoli():
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert crc32c(b"") == 0


def test_the_seed_depends_on_the_bytes_not_on_the_allocation(tmp_path):
    sparse, written = tmp_path / "sparse", tmp_path / "written"
    size = 3 * MIB + 1000  # not whole MiBs
    with open(sparse, "wb") as f:
        f.truncate(size)
        f.seek(2 * MIB + 10)
        f.write(b"data")
    with open(written, "wb") as f:
        f.write(bytes(2 * MIB + 10) + b"data" + bytes(size - 2 * MIB - 14))
    assert raw_digest(sparse) == raw_digest(written)
    with open(written, "r+b") as f:
        f.seek(size - 1)
        f.write(b"x")
    assert raw_digest(sparse) != raw_digest(written)
    before = raw_digest(sparse)
    with open(sparse, "r+b") as f:
        f.truncate(size + 1)  # one more zero byte is other content
    assert raw_digest(sparse) != before


@needs_qemu_img
@pytest.mark.parametrize("fmt", FORMATS)
def test_two_conversions_with_the_epoch_are_bit_identical(fmt, raw, tmp_path):
    first = _write(tmp_path / "a", raw, fmt)
    second = _write(tmp_path / "b", raw, fmt)
    assert first.name == second.name == f"img.{fmt}"
    assert _sha256(first) == _sha256(second)
    _reads_back(first, QEMU_NAME[fmt], raw, tmp_path)


@needs_qemu_img
def test_two_ovas_with_the_epoch_are_bit_identical(raw, tmp_path):
    first = _write(tmp_path / "a", raw, "ova")
    second = _write(tmp_path / "b", raw, "ova")
    assert _sha256(first) == _sha256(second)
    with tarfile.open(first) as tar:
        member = tar.getmember(ova.disk_name("img"))
        disk = tmp_path / "disk1.vmdk"
        disk.write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
    assert b'SPARSE "img-disk1.vmdk"' in disk.read_bytes()[:4096]
    _reads_back(disk, "vmdk", raw, tmp_path)


@needs_qemu_img
@pytest.mark.parametrize("fmt", FORMATS)
def test_without_stabilizing_qemu_img_differs(fmt, raw, tmp_path):
    """The premise: qemu-img alone writes a random id (so the test above can fail)."""
    a, b = tmp_path / "a", tmp_path / "b"
    for dest in (a, b):
        argv = vhdx.convert_argv(raw, dest) if fmt == "vhdx" else \
            qemu_img_convert_argv(raw, fmt, dest, compress=True)
        subprocess.run(argv, check=True)
    assert _sha256(a) != _sha256(b)


@needs_qemu_img
def test_the_ids_follow_the_content_and_the_vhd_time_is_the_epoch(raw, tmp_path):
    other = tmp_path / "other.raw"
    shutil.copyfile(raw, other)
    with open(other, "r+b") as f:
        f.seek(2 * MIB)
        f.write(b"x")
    one = _write(tmp_path / "a", raw, "vdi")
    two = _write(tmp_path / "b", other, "vdi")
    assert one.read_bytes()[392:408] != two.read_bytes()[392:408]  # the image UUIDs
    vhd = _write(tmp_path / "c", raw, "vhd")
    footer = vhd.read_bytes()[-512:]
    assert struct.unpack_from(">I", footer, 24)[0] == EPOCH - VHD_EPOCH
    assert struct.unpack_from(">I", footer, 64)[0] == vhd_checksum(footer)
    assert vhd.read_bytes()[:512] == footer  # the dynamic disk's copy at the start


@needs_qemu_img
def test_the_checksums_are_computed_as_qemu_img_computes_them(raw, tmp_path):
    """Recomputing the checksum of an untouched qemu-img file gives qemu-img's own value."""
    vhd, vhdx_file = tmp_path / "d.vhd", tmp_path / "d.vhdx"
    subprocess.run(qemu_img_convert_argv(raw, "vhd", vhd, compress=True), check=True)
    subprocess.run(vhdx.convert_argv(raw, vhdx_file), check=True)
    footer = vhd.read_bytes()[-512:]
    assert struct.unpack_from(">I", footer, 64)[0] == vhd_checksum(footer)
    before = _vhdx_checksums(vhdx_file.read_bytes())
    assert len(before) >= 3  # two headers and at least one log entry
    stabilize(vhdx_file, "vhdx", raw, EPOCH)
    after = _vhdx_checksums(vhdx_file.read_bytes())
    assert len(after) == len(before)


def _vhdx_checksums(data: bytes) -> List[int]:
    """Each header's and log entry's stored CRC-32C, asserted equal to the recomputed one."""
    found = []
    spans = [(off, 4096) for off in (64 * 1024, 128 * 1024)]
    log_length, log_offset = struct.unpack_from("<IQ", data, 64 * 1024 + 68)
    pos = log_offset
    while pos < log_offset + log_length:
        if data[pos:pos + 4] == b"loge":
            length = struct.unpack_from("<I", data, pos + 8)[0]
            spans.append((pos, length))
            pos += length
        else:
            pos += 4096
    for off, length in spans:
        block = bytearray(data[off:off + length])
        stored = struct.unpack_from("<I", block, 4)[0]
        block[4:8] = bytes(4)
        assert stored == crc32c(bytes(block)), f"checksum at {off}"
        found.append(stored)
    return found


@pytest.fixture
def calls() -> Iterator[List[List[str]]]:
    seen: List[List[str]] = []

    def runner(argv: List[str], **kwargs: Any) -> cmd.Result:
        seen.append(list(argv))
        return cmd.Result(tuple(argv), 0, "", "")
    with cmd.use_runner(runner):
        yield seen


@pytest.mark.parametrize("fmt", FORMATS)
def test_without_the_epoch_only_qemu_img_runs(fmt, calls, raw, tmp_path):
    # the fake runner writes nothing: any attempt to patch the (empty) file would fail
    dest = _write(tmp_path / "out", raw, fmt, epoch=None)
    assert len(calls) == 1
    argv = calls[0]
    tmp = Path(argv[-1])
    want = vhdx.convert_argv(raw, tmp) if fmt == "vhdx" else \
        qemu_img_convert_argv(raw, fmt, tmp, compress=True)
    assert argv == want and tmp.parent == dest.parent
    assert dest.stat().st_size == 0


@needs_qemu_img
def test_a_multi_file_vmdk_is_left_as_written_with_a_warning(raw, tmp_path, caplog):
    dest = tmp_path / "flat.vmdk"
    subprocess.run(qemu_img_convert_argv(raw, "vmdk", dest, compress=True,
                                         options="subformat=monolithicFlat"), check=True)
    before = dest.read_bytes()
    stabilize(dest, "vmdk", raw, EPOCH)
    assert dest.read_bytes() == before
    assert "keeps qemu-img's random CID" in caplog.text


@needs_qemu_img
def test_several_formats_in_one_run_match_one_format_runs(raw, tmp_path):
    """One run hashes the raw disk once for all its formats; the ids are per format."""
    run = _run(tmp_path / "both", "vhd,vdi,vmdk", {"SOURCE_DATE_EPOCH": str(EPOCH)})
    formats = [ImageFormat.VHD, ImageFormat.VDI, ImageFormat.VMDK]
    family_of(ImageFormat.VHD).write(run, raw, formats)
    for fmt in formats:
        alone = _write(tmp_path / fmt.value, raw, fmt.value)
        assert _sha256(run.cfg.output_path(fmt)) == _sha256(alone)
    vhd = run.cfg.output_path(ImageFormat.VHD).read_bytes()[-512:]
    vdi = run.cfg.output_path(ImageFormat.VDI).read_bytes()
    assert vhd[68:84] != vdi[392:408]  # the format is part of the seed
