"""Build engine: ``break=`` points open a shell where docs/debugging.md says, with a terminal.

Each build runs ``bin/disk-image-create`` with a pseudo-terminal as standard input (break
points need one) and ``break_cmd`` set to a recorder instead of an interactive shell. The
element ``t-brk`` has two install.d scripts and a cleanup.d script that append their names to
``/t-brk.log`` in the tree; pre-install.d has no script at all. The recorder notes what that
file holds when the shell opens, so the tests see where each shell opened relative to the
scripts -- in the tree's cached one-script steps and in the final phases alike.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

import pytest

from tests.lib import builds
from tests.lib.elements import make_element

MARK = 'echo "$(basename "$(dirname "$0")")/$(basename "$0")" >> "${TARGET_ROOT:-}/t-brk.log"\n'
FAIL = '[ -z "${DIB_TEST_BRK_FAIL:-}" ] || exit 7\n'
#: what every shell records: the tree's t-brk.log on one line (TMP_MOUNT_PATH is the tree)
RECORDER = ('#!/bin/sh\n'
            'printf "%s|\\n" "$(cat "$TMP_MOUNT_PATH/t-brk.log" 2>/dev/null | tr "\\n" " ")" '
            '>> "$DIB_TEST_BRK_RECORD"\n')


@pytest.fixture
def dib(tmp_path: Path) -> Iterator[builds.Dib]:
    with builds.Dib(tmp_path) as d:
        make_element(d.elements, "t-brk", hooks={
            "install.d": {"10-t-brk": MARK, "20-t-brk": FAIL + MARK},
            "cleanup.d": {"90-t-brk": MARK},
        })
        yield d


def _run_on_a_terminal(dib: builds.Dib,
                       env: Dict[str, str]) -> "subprocess.CompletedProcess[str]":
    master, slave = os.openpty()
    try:
        return subprocess.run(dib.argv(["t-brk"]), env=dib.env(env), stdin=slave,
                              capture_output=True, text=True, timeout=180)
    finally:
        os.close(slave)
        os.close(master)


def _recorder(dib: builds.Dib) -> Dict[str, str]:
    script = dib.base / "record-break"
    script.write_text(RECORDER)
    script.chmod(0o755)
    return {"break_cmd": os.fspath(script), "break_outside_target": "1",
            "DIB_TEST_BRK_RECORD": os.fspath(dib.base / "breaks")}


def _recorded(dib: builds.Dib) -> List[str]:
    path = dib.base / "breaks"
    return path.read_text().splitlines() if path.exists() else []


def _logged_breaks(dib: builds.Dib) -> List[str]:
    return re.findall(r"break \(([^)]*)\): starting", dib.logfile().read_text())


POINTS = ("before-pre-install", "after-pre-install", "before-install", "after-install",
          "after-post-root", "before-finalise", "before-cleanup", "after-cleanup")
INSTALLED = "install.d/10-t-brk install.d/20-t-brk "


def test_shells_open_at_each_point_in_order(dib: builds.Dib) -> None:
    result = _run_on_a_terminal(dib, {"break": ",".join(POINTS), **_recorder(dib)})
    assert result.returncode == 0, result.stderr
    assert _logged_breaks(dib) == list(POINTS)
    assert _recorded(dib) == [
        "|",                        # before-pre-install (a phase with no script)
        "|",                        # after-pre-install
        "|",                        # before-install: before its first script's step
        INSTALLED + "|",            # after-install: after its last script's step
        INSTALLED + "|",            # after-post-root
        INSTALLED + "|",            # before-finalise
        INSTALLED + "|",            # before-cleanup
        INSTALLED + "cleanup.d/90-t-brk |",  # after-cleanup
    ]
    assert dib.read("t-brk.log").decode().split() == INSTALLED.split() + ["cleanup.d/90-t-brk"]
    # break= disables the cache: every step ran
    assert not any(s["cached"] for s in dib.report()["steps"])


def test_shell_in_the_chroot_changes_the_image(dib: builds.Dib) -> None:
    shell = shlex.join(["/bin/sh", "-c", "echo shell >> /t-brk.log"])
    result = _run_on_a_terminal(dib, {"break": "after-install", "break_cmd": shell})
    assert result.returncode == 0, result.stderr
    assert _logged_breaks(dib) == ["after-install"]
    assert dib.read("t-brk.log").decode().split() == \
        INSTALLED.split() + ["shell", "cleanup.d/90-t-brk"]


@pytest.mark.parametrize("points", [("after-error",), ("after-install", "before-cleanup")])
def test_after_error_shell_only_where_a_script_failed(dib: builds.Dib,
                                                      points: Sequence[str]) -> None:
    env = {"break": ",".join(points), "DIB_TEST_BRK_FAIL": "1", **_recorder(dib)}
    result = _run_on_a_terminal(dib, env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "phase install.d, script 20-t-brk failed with exit status 7" in result.stderr
    if "after-error" in points:
        assert _logged_breaks(dib) == ["after-error in install.d/20-t-brk"]
        assert _recorded(dib) == ["install.d/10-t-brk |"]
    else:
        # the failed phase's after- point and later points never open
        assert _logged_breaks(dib) == []
        assert _recorded(dib) == []
    assert not dib.image().exists()
    assert dib.workdirs() == []
