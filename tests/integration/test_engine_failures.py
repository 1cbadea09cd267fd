"""Build engine: failures are reported precisely and leave nothing behind.

A failing hook in each phase that runs, a hook shipped twice, a broken environment.d file,
and ``break=`` without a terminal. Each build runs as ``bin/disk-image-create`` in a
subprocess; the ``dib`` fixture fails the test if anything stays mounted, attached or running.
"""
from __future__ import annotations

import re
import subprocess
import time

import pytest

from tests.lib import builds
from tests.lib.elements import make_element

RUN_PHASES = ("root.d", "extra-data.d", "pre-install.d", "install.d", "post-install.d",
              "post-root.d", "pre-finalise.d", "finalise.d", "cleanup.d")


@pytest.fixture
def dib(tmp_path):
    with builds.Dib(tmp_path) as d:
        yield d


def _assert_nothing_built(dib: builds.Dib) -> None:
    assert not dib.image().exists()
    # no half-written output under a temporary name either
    assert [p.name for p in dib.out.iterdir() if p.name != "img.d"] == []
    assert dib.workdirs() == []


@pytest.mark.parametrize("phase", RUN_PHASES)
def test_failing_hook_is_reported_and_cleaned_up(dib, phase):
    result = dib.run("t-fail", env={"DIB_TEST_FAIL_PHASE": phase})
    err = result.stderr
    assert result.returncode == 1, err
    assert "Traceback" not in err
    assert (f"element 't-fail', phase {phase}, script 50-t-fail failed with exit status 7"
            in err)
    # the last lines of the script's output, not the first
    assert f"t-fail last words in {phase}" in err
    assert "t-fail noise 40" in err
    assert not re.search(r"t-fail noise 1$", err, re.M)
    assert str(dib.logfile()) in err
    assert result.stdout == ""
    _assert_nothing_built(dib)
    report = dib.report()
    assert report["status"] == "failed"
    assert "50-t-fail" in report["error"] and phase in report["error"]
    assert report["outputs"] == []
    # the log has the whole output
    log = dib.logfile().read_text()
    assert "t-fail noise 1\n" in log
    assert f"{phase}/50-t-fail  (element t-fail)" in log


def test_block_device_hook_does_not_run_without_a_disk_output(dib):
    result = dib.run("t-fail", env={"DIB_TEST_FAIL_PHASE": "block-device.d"})
    assert result.returncode == 0, result.stderr
    assert dib.image().exists()
    assert "block-device.d/50-t-fail" not in dib.logfile().read_text()


def test_duplicate_hook_names_both_elements(dib):
    for name in ("t-dup-one", "t-dup-two"):
        make_element(dib.elements, name, hooks={"install.d": {"50-t-dup": "true\n"}})
    result = dib.run("t-dup-one", "t-dup-two")
    err = result.stderr
    assert result.returncode == 1, err
    assert "Traceback" not in err
    assert "50-t-dup" in err
    assert "'t-dup-one'" in err and "'t-dup-two'" in err
    assert err.startswith("error: ") or "\nerror: " in err
    _assert_nothing_built(dib)


def test_failing_environment_d_names_the_file_and_element(dib):
    make_element(dib.elements, "t-badenv", env={"10-t-badenv": "echo sourcing-badenv\nfalse\n"})
    result = dib.run("t-badenv")
    err = result.stderr
    assert result.returncode == 1, err
    assert "Traceback" not in err
    assert "environment.d" in err and "root.d" in err
    assert "10-t-badenv (element t-badenv)" in err
    _assert_nothing_built(dib)


def test_break_point_without_a_terminal_fails_fast(dib):
    started = time.monotonic()
    result = dib.run("t-probe", env={"break": "before-install"})
    err = result.stderr
    assert result.returncode == 1, err
    assert time.monotonic() - started < 15
    assert "Traceback" not in err
    assert "break=before-install" in err and "not a terminal" in err
    # refused before anything was built or even logged
    assert list(dib.out.iterdir()) == []
    assert dib.workdirs() == []


@pytest.mark.parametrize("value", ["before-bogus", "before-install,after-nothing", "install"])
def test_unknown_break_point_is_a_config_error(dib, value):
    result = dib.run("t-probe", env={"break": value})
    err = result.stderr
    assert result.returncode == 1, err
    assert "Traceback" not in err
    bad = [p for p in value.split(",") if p != "before-install"][0]
    assert f"unknown break point '{bad}'" in err
    assert "before-install" in err.split("hint:", 1)[1]
    assert list(dib.out.iterdir()) == []
    assert dib.workdirs() == []


def test_a_full_disk_names_the_script_and_where_room_is_short(dib, tmp_path):
    """A hook fills the filesystem its layer is written to (the image cache, on a 32 MiB
    tmpfs): the error names the script and says how much room each filesystem has left."""
    small = tmp_path / "small-cache"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(small)], check=True)
    try:
        make_element(dib.elements, "t-fill", hooks={"install.d": {
            "10-t-fill": "dd if=/dev/zero of=/t-fill bs=1M count=64\n"}})
        result = dib.run("t-fill", env={"DIB_IMAGE_CACHE": str(small)})
    finally:
        subprocess.run(["umount", str(small)], check=True)
    err = result.stderr
    assert result.returncode == 1, err
    assert "element 't-fill', phase install.d, script 10-t-fill failed" in err
    assert "No space left on device" in err
    hint = re.search(r"hint: a filesystem ran out of space\. .*smallest first: (.*)", err)
    assert hint, err
    # the 32 MiB cache comes first: every other filesystem here has more room
    assert re.match(rf"the image cache {re.escape(str(small))}: \d+ MiB, ", hint.group(1)), err
    _assert_nothing_built(dib)
