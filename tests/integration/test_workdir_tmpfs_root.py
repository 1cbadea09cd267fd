"""The work directory's tmpfs honours what other running builds' tmpfs mounts hold.

A fake "other build" is a tmpfs mounted at ``.../dib_build.<x>/w`` under tmp_path; every
mount is a context manager and the fixture checks nothing stays mounted below tmp_path.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Iterator

import pytest

from dib import mounts
from dib.workdir import GIB, PREFIX, build_tmpfs_mounts, current_tmpfs_plan, promised_bytes, workdir
from tests.lib import caps, leaks

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def capable(tmp_path) -> Iterator[None]:
    if not caps.can_mount():
        pytest.skip("needs to mount a tmpfs (run as root)")
    yield
    leaks.assert_clean(tmp_path)


@contextlib.contextmanager
def other_build(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs where a running build keeps its work directory."""
    target = tmp_path / "other" / f"{PREFIX}fake{os.getpid()}" / "w"
    target.mkdir(parents=True)
    with mounts.mounted("tmpfs", target, fstype="tmpfs", options=(f"size={size}",)):
        yield target


def _mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text()


def test_what_another_build_could_still_fill_is_promised(tmp_path):
    with other_build(tmp_path, "64m") as other:
        (other / "used").write_bytes(b"x" * (16 << 20))
        assert other in build_tmpfs_mounts(_mountinfo())
        promised = promised_bytes([other])
        assert 0 < promised <= (64 - 16) << 20
        assert current_tmpfs_plan(None, GIB).promised >= promised


def test_a_build_goes_to_disk_when_others_hold_the_memory(tmp_path, caplog):
    # a tmpfs limit may exceed the RAM: this "other build" could fill all of it
    with other_build(tmp_path, "4t"), caplog.at_level(logging.INFO, logger="dib.workdir"):
        with workdir(tmp_path / "tmp", use_tmpfs=True, min_tmpfs_gib=1) as wd:
            assert not os.path.ismount(wd.base)
            (wd.hooks / "probe").write_text("the build works on disk")
    lines = [r.getMessage() for r in caplog.records if "work directory" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith("work directory on disk: only 0.0 GiB of memory to spare")
    assert "needs 1 GiB, --min-tmpfs" in lines[0]


def test_the_tmpfs_is_as_big_as_the_log_says_and_not_promised_to_itself(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="dib.workdir"):
        with workdir(tmp_path / "tmp", use_tmpfs=True, min_tmpfs_gib=0.01) as wd:
            line = next(r.getMessage() for r in caplog.records
                        if "work directory" in r.getMessage())
            m = re.match(r"work directory: tmpfs of ([0-9.]+) GiB", line)
            assert m, line
            assert os.path.ismount(wd.base)
            st = os.statvfs(wd.base)
            assert f"{st.f_blocks * st.f_frsize / GIB:.1f}" == m.group(1)
            # a build starting now counts ours; we do not count ourselves
            assert wd.base in build_tmpfs_mounts(_mountinfo())
            assert wd.base not in build_tmpfs_mounts(_mountinfo(), own=wd.root)
