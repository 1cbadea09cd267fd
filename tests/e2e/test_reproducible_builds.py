"""Reproducible builds (docs/reproducibility.md): the same inputs and SOURCE_DATE_EPOCH give
the same bytes.

``vm debian-minimal -t tar,raw,qcow2,docker`` is built four times with one epoch (the two
``--no-cache`` builds ``a`` and ``b`` also write ``-t vmdk,vhd,vdi,vhdx``: their ids and times
are made stable after qemu-img's conversion, dib/outputs/stable_ids.py; only these two
builds, to keep the disk space and time small: a few seconds of conversion each):

* ``a``: ``--no-cache`` with a fresh cache directory (the bootstrap runs mmdebstrap);
* ``b``: ``--no-cache`` with the shared e2e cache (its bootstrap usually comes from there);
* ``c``: a cached build in ``a``'s cache directory: every step runs again and is stored;
* ``d``: the same, with the types in another order: the finished image is not in the cache
  (its key lists the types), every tree layer is, so the disk is made again from reused
  layers.

Every output (each build's is ``img.*`` in a directory of its own: the image name is an
input, e.g. the container's title) must have the same sha256 in all four. On a mismatch the
test names the first differing archive members (type, mode, owner, size, mtime, content
hash), or for a disk whose tree is identical the first differing byte ranges and, inside
the root filesystem, the files those blocks belong to.

The docklet element set (``debian-minimal docklet -t tar``, synthetic source as in
test_docklet.py) is built twice with ``--no-cache`` in different cache directories.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

from tests.lib import docklet_tree
from tests.lib.builds import TEST_ELEMENTS, build_env
from tests.lib.leaks import assert_clean

ROOT = Path(__file__).resolve().parents[2]
EPOCH = 1700000000
FORMATS = ("tar", "raw", "qcow2", "docker")
#: written by the two --no-cache builds only (a and b)
CONTAINER_FORMATS = ("vmdk", "vhd", "vdi", "vhdx")
SUFFIX = {"docker": "docker.tar"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Image:
    def __init__(self, out: Path, seconds: float) -> None:
        self.out = out
        self.seconds = seconds

    def path(self, fmt: str) -> Path:
        return Path(f"{self.out}.{SUFFIX.get(fmt, fmt)}")

    def sha256(self, fmt: str) -> str:
        return _sha256(self.path(fmt))

    @property
    def report(self) -> dict:
        return json.loads(Path(f"{self.out}.d/build-report.json").read_text())

    @property
    def manifest(self) -> dict:
        return json.loads(Path(f"{self.out}.d/manifest.json").read_text())


def _build(base: Path, name: str, elements: Sequence[str], types: str, cache: Path, *,
           no_cache: bool, env: Optional[Dict[str, str]] = None) -> Image:
    (base / "tmp").mkdir(parents=True, exist_ok=True)
    # one name in a directory of its own: the name is an input (the container's title)
    out = base / "out" / name / "img"
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, os.fspath(ROOT / "bin" / "disk-image-create"), "--no-tmpfs",
            "-t", types, "-o", os.fspath(out), "--image-cache", os.fspath(cache),
            *(["--no-cache"] if no_cache else []), *elements]
    started = time.monotonic()
    proc = subprocess.run(argv, env=build_env(base / "tmp", [TEST_ELEMENTS], {
        "OVERWRITE_OLD_IMAGE": "1", "SOURCE_DATE_EPOCH": str(EPOCH), **(env or {})}),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, f"build {name} failed:\n{proc.stderr[-6000:]}"
    assert_clean(base)
    print(f"{name}: built in {seconds:.0f} s")
    return Image(out, seconds)


# -- naming the first differences ----------------------------------------------------------

def _members(archive: Path) -> Dict[str, Tuple[object, ...]]:
    """name -> (type, mode, uid, gid, owner names, size, mtime, link, content sha256)."""
    out: Dict[str, Tuple[object, ...]] = {}
    with tarfile.open(archive) as tar:
        for m in tar:
            digest = ""
            if m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                digest = hashlib.sha256(f.read()).hexdigest()[:16]
            out[m.name] = (m.type, oct(m.mode), m.uid, m.gid, m.uname, m.gname, m.size,
                           m.mtime, m.linkname, digest, tuple(sorted(m.pax_headers.items())))
    return out


def tar_differences(a: Path, b: Path, limit: int = 12) -> List[str]:
    """The first members that differ between two archives, and how."""
    ma, mb = _members(a), _members(b)
    found = []
    for name in sorted(set(ma) | set(mb)):
        if ma.get(name) != mb.get(name):
            found.append(f"{name}: {ma.get(name)} != {mb.get(name)}")
            if len(found) == limit:
                break
    if not found and list(ma) != list(mb):
        found.append("same members in another order")
    return found


def _partitions(raw: Path) -> List[Tuple[int, int]]:
    """(start, size) in bytes of each partition of a raw disk."""
    proc = subprocess.run(["sfdisk", "--json", os.fspath(raw)], capture_output=True,
                          text=True)
    if proc.returncode:
        return []
    table = json.loads(proc.stdout)["partitiontable"]
    unit = table.get("sectorsize", 512)
    return [(p["start"] * unit, p["size"] * unit) for p in table["partitions"]]


def _files_at(raw: Path, start: int, size: int, offsets: Sequence[int]) -> List[str]:
    """The files of the ext filesystem at ``start`` that own the blocks at ``offsets``."""
    part = raw.with_suffix(".part")
    subprocess.run(["dd", f"if={raw}", f"of={part}", "bs=4M", f"skip={start}",
                    f"count={size}", "iflag=skip_bytes,count_bytes", "conv=sparse",
                    "status=none"], check=True)
    try:
        blocks = " ".join(str((o - start) // 4096) for o in offsets)
        icheck = subprocess.run(["debugfs", "-R", f"icheck {blocks}", os.fspath(part)],
                                capture_output=True, text=True).stdout
        inodes = sorted({line.split()[1] for line in icheck.splitlines()[1:]
                         if len(line.split()) == 2 and line.split()[1].isdigit()})
        if not inodes:
            return ["(metadata blocks: superblock, group descriptors, bitmaps, inode "
                    "tables or journal)"]
        ncheck = subprocess.run(["debugfs", "-R", f"ncheck {' '.join(inodes)}",
                                 os.fspath(part)], capture_output=True, text=True).stdout
        return ncheck.splitlines()[1:]
    finally:
        part.unlink()


def disk_differences(a: Path, b: Path, limit: int = 8) -> List[str]:
    """The first differing 4 KiB blocks of two raw disks, where they are, and (in an ext
    partition) which files they belong to."""
    if a.stat().st_size != b.stat().st_size:
        return [f"sizes differ: {a.stat().st_size} != {b.stat().st_size}"]
    offsets = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        pos = 0
        while len(offsets) < limit:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if not x:
                break
            if x != y:
                for i in range(0, len(x), 4096):
                    if x[i:i + 4096] != y[i:i + 4096] and len(offsets) < limit:
                        offsets.append(pos + i)
            pos += len(x)
    found = [f"first differing blocks at byte offsets {offsets}"]
    for start, size in _partitions(a):
        inside = [o for o in offsets if start <= o < start + size]
        if inside:
            found.append(f"partition at {start}: blocks {inside} belong to "
                         + "; ".join(_files_at(a, start, size, inside)))
    return found


def explain(fmt: str, a: Image, b: Image) -> str:
    lines = [f"-t {fmt} differs between {a.out} and {b.out}"]
    if fmt in ("tar", "docker"):
        if fmt == "docker":
            lines.append("(the docker archive's members; compare its layer.tar like -t tar)")
        lines += tar_differences(a.path(fmt), b.path(fmt))
    elif a.sha256("tar") != b.sha256("tar"):
        lines.append("the trees differ already (see -t tar): "
                     + "; ".join(tar_differences(a.path("tar"), b.path("tar"), 5)))
    elif fmt == "raw":
        lines += disk_differences(a.path("raw"), b.path("raw"))
    elif a.sha256("raw") == b.sha256("raw"):
        lines.append(f"the raw disks are identical: the {fmt} conversion differs")
    else:
        lines += disk_differences(a.path("raw"), b.path("raw"))
    return "\n".join(lines)


def assert_identical(fmt: str, a: Image, b: Image) -> None:
    if a.sha256(fmt) != b.sha256(fmt):
        pytest.fail(explain(fmt, a, b), pytrace=False)


# -- vm debian-minimal ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def vm(scratch, e2e_cache) -> Dict[str, Image]:
    base = scratch("reproducible")
    fresh = base / "cache"
    elements = ["vm", "debian-minimal"]
    types = ",".join(FORMATS)
    more = ",".join(FORMATS + CONTAINER_FORMATS)
    built = {
        "a": _build(base, "a", elements, more, fresh, no_cache=True),
        "b": _build(base, "b", elements, more, e2e_cache, no_cache=True),
        "c": _build(base, "c", elements, types, fresh, no_cache=False),
        "d": _build(base, "d", elements, ",".join(reversed(FORMATS)), fresh, no_cache=False),
    }
    return built


@pytest.mark.parametrize("fmt", FORMATS)
def test_two_no_cache_builds_are_bit_identical(vm, fmt):
    assert_identical(fmt, vm["a"], vm["b"])


@pytest.mark.parametrize("fmt", CONTAINER_FORMATS)
def test_two_no_cache_builds_give_identical_vmdk_vhd_vdi_vhdx(vm, fmt):
    assert_identical(fmt, vm["a"], vm["b"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_cached_build_is_identical_to_a_no_cache_build(vm, fmt):
    assert_identical(fmt, vm["a"], vm["c"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_rebuild_from_cached_layers_changes_no_byte(vm, fmt):
    steps = vm["d"].report["steps"]
    assert steps and all(s["cached"] for s in steps), \
        f"not every layer came from the cache: {[s['step'] for s in steps if not s['cached']]}"
    assert_identical(fmt, vm["a"], vm["d"])


def test_the_manifest_records_the_epoch_and_the_release_files(vm):
    repro = vm["a"].manifest["reproducible"]
    assert repro["source_date_epoch"] == EPOCH
    assert repro["source_date_epoch_from"] == "SOURCE_DATE_EPOCH"
    releases = repro["apt_release_files"]
    assert any(name.endswith("_InRelease") or name.endswith("_Release") for name in releases)
    assert all(len(digest) == 64 for digest in releases.values())
    # the same mirror state for every build of the module
    assert vm["d"].manifest["reproducible"]["apt_release_files"] == releases


def test_no_timestamp_in_the_tree_is_newer_than_the_epoch(vm):
    with tarfile.open(vm["a"].path("tar")) as tar:
        newer = [m.name for m in tar if m.mtime > EPOCH]
    assert not newer, f"{len(newer)} members newer than the epoch, e.g. {newer[:5]}"


@pytest.mark.parametrize("build", ["a", "b"])
def test_the_password_change_dates_are_the_epochs_day(vm, build):
    """shadow's last-change field is a day, not a time: builds made on the same day agree even
    when it is the build's day, so the comparisons above miss it until two builds (or a build
    and its cached bootstrap) straddle midnight. ``b``'s bootstrap usually comes from the
    shared cache, made earlier."""
    with tarfile.open(vm[build].path("tar")) as tar:
        for name in ("./etc/shadow", "./etc/shadow-"):
            f = tar.extractfile(name)
            assert f is not None
            days = {line.split(":")[0]: line.split(":")[2]
                    for line in f.read().decode().splitlines() if line.count(":") >= 2}
            other = {user: day for user, day in days.items() if day != str(EPOCH // 86400)}
            assert days and not other, \
                f"{name}: last-change days other than {EPOCH // 86400} (the epoch's): {other}"


# -- the docklet element set (synthetic source) ------------------------------------------------

@pytest.fixture(scope="module")
def docklet(scratch, e2e_cache) -> Tuple[Image, Image]:
    base = scratch("reproducible-docklet")
    repo = docklet_tree.make_repo(base / "docklet-src")
    tarball = docklet_tree.make_basefs_tarball(base / "basefs.tar.gz")
    env = {"DOCKLET_REPO": os.fspath(repo.path), "DOCKLET_REF": "synthetic-v2",
           "DOCKLET_BASEFS": "tarball", "DOCKLET_BASEFS_TARBALL": os.fspath(tarball),
           "DOCKLET_PY_PINS": ""}
    elements = ["debian-minimal", "docklet"]
    return (_build(base, "docklet-a", elements, "tar", base / "cache", no_cache=True,
                   env=env),
            _build(base, "docklet-b", elements, "tar", e2e_cache, no_cache=True, env=env))


def test_docklet_tar_is_bit_identical(docklet):
    assert_identical("tar", *docklet)
