"""Build engine: tar/tgz outputs, checksums, the layered tree's final state, the log and the
JSON report, and what happens to an output that already exists.
"""
from __future__ import annotations

import os
import re
import stat
import subprocess

import pytest

from tests.lib import builds

TIMESTAMPED = r"-\d{4}\.\d\d\.\d\d-\d\d\.\d\d\.\d\d"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR) ")
RUN_PHASES = ("root.d", "extra-data.d", "pre-install.d", "install.d", "post-install.d",
              "post-root.d", "pre-finalise.d", "finalise.d", "cleanup.d")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """fake-os + t-probe + t-overlay as tar and tgz at once, with checksums."""
    with builds.Dib(tmp_path_factory.mktemp("outputs")) as dib:
        result = dib.run("t-probe", "t-overlay", types="tar,tgz", args=["--checksum"])
        assert result.returncode == 0, result.stderr
        yield dib, result


@pytest.fixture
def dib(tmp_path):
    with builds.Dib(tmp_path) as d:
        yield d


# -- formats and checksums ----------------------------------------------------------------

def test_two_formats_at_once(built):
    dib, result = built
    expected = [dib.image(fmt=f) for f in ("tar", "tgz")]
    printed = result.stdout.split()
    for image in expected:
        assert image.is_file()
        assert os.fspath(image) in printed
        for alg in ("md5", "sha256"):
            assert f"{image}.{alg}" in printed
    assert set(dib.members(fmt="tar")) == set(dib.members(fmt="tgz"))
    with open(dib.image(fmt="tgz"), "rb") as f:
        assert f.read(2) == b"\x1f\x8b"
    # no temporary files left beside the outputs
    assert sorted(p.name for p in dib.out.iterdir()) == sorted(
        ["img.d", "img.tar", "img.tgz", "img.tar.md5", "img.tar.sha256", "img.tgz.md5",
         "img.tgz.sha256"])


@pytest.mark.parametrize("fmt", ["tar", "tgz"])
@pytest.mark.parametrize("tool", ["sha256sum", "md5sum"])
def test_checksum_files_verify_from_the_output_directory(built, fmt, tool):
    dib, _ = built
    sums = dib.image(fmt=fmt).with_name(f"img.{fmt}.{tool[:-3]}")
    assert sums.read_text().split()[1] == f"img.{fmt}"
    check = subprocess.run([tool, "-c", sums.name], cwd=dib.out, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"img.{fmt}: OK" in check.stdout


def test_tgz_alone_with_one_checksum(dib):
    result = dib.run("t-probe", types="tgz", env={"DIB_CHECKSUM": "sha256"})
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in dib.out.iterdir()) == ["img.d", "img.tgz", "img.tgz.sha256"]
    assert dib.read("etc/t-probe-installed", fmt="tgz") == b"installed by t-probe\n"


# -- what is (not) in the archive ----------------------------------------------------------

@pytest.mark.parametrize("fmt", ["tar", "tgz"])
def test_archive_holds_the_image_and_nothing_of_the_host(built, fmt):
    dib, _ = built
    members = dib.members(fmt=fmt)

    def read(member: str) -> bytes:
        return dib.read(member, fmt=fmt)

    # the elements' files
    assert read("etc/t-probe-installed") == b"installed by t-probe\n"
    assert "bin/busybox" in members and "t-probe/order" in members
    assert b"ID=fake-os" in read("etc/os-release")
    # the image's own resolv.conf, not the host's; the build-time copy is gone
    assert read("etc/resolv.conf") == b"nameserver 192.0.2.53\n"
    assert "etc/resolv.conf.ORIG" not in members
    # no hooks tree, mounted or copied
    assert not [m for m in members if "in_target" in m or "t-probe-extra" in m]
    assert members["tmp"].isdir()
    assert not [m for m in members if m.startswith("tmp/")]
    # /dev, /proc, /sys: empty directories, no device node anywhere
    for d in ("dev", "proc", "sys"):
        assert members[d].isdir()
        assert not [m for m in members if m.startswith(d + "/")], d
    assert not [m for m, info in members.items() if info.isdev()]
    assert "dev/loop-control" not in members and "dev/pts/ptmx" not in members
    assert not [n for n in os.listdir("/dev") if f"dev/{n}" in members]


def test_layers_deletions_and_replacements_come_out_right(built):
    dib, _ = built
    members = dib.members()
    tree = {m[len("t-overlay/"):]: info for m, info in members.items()
            if m.startswith("t-overlay/")}
    assert sorted(tree) == ["chmod-file", "dir-to-file", "file-to-dir", "file-to-dir/inner",
                            "keep", "recreated-file", "renew-dir", "renew-dir/new1"]
    assert tree["dir-to-file"].isfile()
    assert dib.read("t-overlay/dir-to-file") == b"now-a-file\n"
    assert tree["file-to-dir"].isdir()
    assert dib.read("t-overlay/file-to-dir/inner") == b"inner\n"
    assert dib.read("t-overlay/recreated-file") == b"v2\n"
    assert dib.read("t-overlay/chmod-file") == b"data\n"
    assert stat.S_IMODE(tree["chmod-file"].mode) == 0o600
    assert dib.read("t-overlay/keep") == b"keep\n"
    # no overlayfs internals: whiteouts (0:0 char devices or .wh. files), opaque markers
    assert not [m for m in members if ".wh." in m]
    assert not [m for m, i in members.items() if i.ischr()]
    xattrs = {k for i in members.values() for k in i.pax_headers}
    assert not [k for k in xattrs if "overlay" in k]


# -- observability -------------------------------------------------------------------------

def test_log_file_is_timestamped_and_names_every_script(built):
    dib, _ = built
    lines = dib.logfile().read_text().splitlines()
    assert LOG_LINE.match(lines[0])
    # every line is timestamped, continuation lines of multi-line messages too
    assert [x for x in lines if not LOG_LINE.match(x)] == []
    starts = lines
    for phase in RUN_PHASES:
        line = next((x for x in starts if f" {phase}/50-t-probe  (element t-probe)" in x), None)
        assert line is not None, phase
    for script, element in (("root.d/10-fake-os", "fake-os"),
                            ("install.d/50-t-overlay", "t-overlay"),
                            ("cleanup.d/50-t-overlay", "t-overlay")):
        assert any(f" {script}  (element {element})" in x for x in starts), script


def test_log_file_records_the_success(built):
    dib, result = built
    assert "build completed successfully" in result.stderr
    assert "build completed successfully" in dib.logfile().read_text()


def test_report_lists_phases_scripts_and_outputs(built):
    dib, _ = built
    report = dib.report()
    assert report["status"] == "ok" and report["error"] is None
    assert report["elements"][0] == "fake-os"
    assert set(report["elements"]) == {"fake-os", "t-probe", "t-overlay"}
    assert report["log"] == os.fspath(dib.logfile())
    # real phases in order; "(...)" rows are dib's own work (sizing, caching the image)
    assert [p["phase"] for p in report["phases"]
            if not p["phase"].startswith("(")] == list(RUN_PHASES)
    assert all(isinstance(p["seconds"], (int, float)) and p["seconds"] >= 0
               for p in report["phases"])
    scripts = {(s["script"], s["element"]) for s in report["scripts"]}
    assert ("root.d/10-fake-os", "fake-os") in scripts
    assert ("install.d/50-t-overlay", "t-overlay") in scripts
    assert {(f"{p}/50-t-probe", "t-probe") for p in RUN_PHASES} <= scripts
    assert all(s["seconds"] >= 0 for s in report["scripts"])
    fake_os = next(s for s in report["scripts"] if s["script"] == "root.d/10-fake-os")
    assert fake_os["seconds"] > 0
    outputs = {o["path"]: o["bytes"] for o in report["outputs"]}
    expected = [dib.image(fmt=f) for f in ("tar", "tgz")]
    expected += [p.with_name(p.name + ext) for p in expected[:2] for ext in (".md5", ".sha256")]
    assert outputs == {os.fspath(p): p.stat().st_size for p in expected}
    assert report["seconds"] >= sum(p["seconds"] for p in report["phases"]) - 0.01


# -- existing outputs ------------------------------------------------------------------------

def test_existing_output_is_kept_aside_unless_overwrite(dib):
    first = dib.run("t-probe", name="ow", args=["--checksum"])
    assert first.returncode == 0, first.stderr
    old_tar = dib.image("ow").read_bytes()
    old_sums = {alg: dib.out.joinpath(f"ow.tar.{alg}").read_text() for alg in ("md5", "sha256")}

    second = dib.run("t-probe", name="ow", args=["--checksum"])
    assert second.returncode == 0, second.stderr
    aside = [p for p in dib.out.iterdir() if re.fullmatch(f"ow{TIMESTAMPED}\\.tar", p.name)]
    assert len(aside) == 1, sorted(p.name for p in dib.out.iterdir())
    assert aside[0].read_bytes() == old_tar
    for alg, text in old_sums.items():
        kept = aside[0].with_name(f"{aside[0].name}.{alg}")
        assert kept.is_file()
        assert kept.read_text().split()[0] == text.split()[0]
        # the kept checksum still verifies the kept image
        check = subprocess.run([f"{alg}sum", "-c", kept.name], cwd=dib.out,
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    for alg in ("md5", "sha256"):
        check = subprocess.run([f"{alg}sum", "-c", f"ow.tar.{alg}"], cwd=dib.out,
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    assert aside[0].name in dib.logfile("ow").read_text()

    before = sorted(p.name for p in dib.out.iterdir())
    second_tar = dib.image("ow").read_bytes()
    third = dib.run("t-probe", name="ow", args=["--checksum"], env={"OVERWRITE_OLD_IMAGE": "1"})
    assert third.returncode == 0, third.stderr
    assert sorted(p.name for p in dib.out.iterdir()) == before
    assert dib.image("ow").read_bytes() != second_tar
    check = subprocess.run(["sha256sum", "-c", "ow.tar.sha256"], cwd=dib.out,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


# -- ext4 options of the root filesystem ------------------------------------------------------

def test_journal_size_and_online_resize_limit_reach_mkfs(dib):
    """--mkfs-journal-size and --max-online-resize become mkfs.ext4 -J size= / -E resize=
    (fake-os has no block-device element: the raw disk is the filesystem itself)."""
    result = dib.run(types="raw", args=["--mkfs-journal-size", "8",
                                        "--max-online-resize", "4194304"])
    assert result.returncode == 0, result.stderr
    log = (dib.out / "img.d" / "build.log").read_text()
    assert re.search(r"mkfs\.ext4 .*-E resize=4194304 -J size=8", log), log[-2000:]
    header = subprocess.run(["dumpe2fs", "-h", dib.image(fmt="raw")], capture_output=True,
                            text=True, check=True).stdout
    assert re.search(r"^(Total )?[Jj]ournal size:\s+8M$", header, re.M), header
