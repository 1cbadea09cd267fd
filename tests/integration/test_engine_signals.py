"""Build engine: SIGINT/SIGTERM unwind a build; after SIGKILL, --cleanup (or the next build)
recovers what it left.

The t-sleep element sleeps in the phase named by DIB_TEST_SLEEP_PHASE, after starting a
detached ``sleep N+1`` in a session of its own, and drops a marker file into the tree; the
sleep lengths are random so the tests can recognise their own processes.
"""
from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator, List, Tuple

import pytest

from tests.lib import builds, leaks

MARKER = "dib_build.*/w/mnt/t-sleep-ready"


@pytest.fixture
def dib(tmp_path):
    with builds.Dib(tmp_path) as d:
        yield d


@pytest.fixture
def sleeper(dib) -> Iterator[Callable[..., Tuple[subprocess.Popen, List[List[str]]]]]:
    """A function that starts a build sleeping in a phase and returns (process, the argv of
    its two sleeps); afterwards the build and its sleeps are gone, whatever happened."""
    procs: List[subprocess.Popen] = []
    all_sleeps: List[List[str]] = []

    def start(phase: str, stubborn: bool = False) -> Tuple[subprocess.Popen, List[List[str]]]:
        secs = random.randint(1000, 99999)
        sleeps = [["sleep", str(secs)], ["sleep", str(secs + 1)]]
        all_sleeps.extend(sleeps)
        env = {"DIB_TEST_SLEEP_PHASE": phase, "DIB_TEST_SLEEP_SECS": str(secs)}
        if stubborn:
            env["DIB_TEST_SLEEP_STUBBORN"] = "1"
        proc = dib.start("t-sleep", env=env)
        procs.append(proc)
        dib.wait_for(MARKER, proc)
        _wait(lambda: all(builds.processes_running(s) for s in sleeps),
              "the hook's sleep processes to start")
        return proc, sleeps

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # after a failed test: the hook's sleeps may have escaped every other check
    for pid in _running(all_sleeps):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _wait(cond, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _running(sleeps) -> List[int]:
    return [pid for s in sleeps for pid in builds.processes_running(s)]


@pytest.mark.parametrize("sig,phase", [
    (signal.SIGINT, "install.d"),
    (signal.SIGTERM, "install.d"),
    (signal.SIGINT, "post-root.d"),
    (signal.SIGTERM, "root.d"),
], ids=["INT-install.d", "TERM-install.d", "INT-post-root.d", "TERM-root.d"])
def test_signal_unwinds_the_build(dib, sleeper, sig, phase):
    proc, sleeps = sleeper(phase)
    [wd] = dib.workdirs()
    assert leaks.mounts_under(wd), "the build should be mounted while it sleeps"

    os.kill(proc.pid, sig)
    rc = proc.wait(timeout=60)
    err = dib.stderr_of_started()
    assert rc == 128 + sig, err
    assert f"interrupted by {signal.Signals(sig).name}" in err
    assert "Traceback" not in err
    assert _running(sleeps) == []
    assert builds.processes_under(dib.tmp_dir) == []
    assert leaks.mounts_under(dib.tmp_dir) == []
    assert dib.workdirs() == []
    assert not dib.image().exists()
    assert [p.name for p in dib.out.iterdir()] == ["img.d"]
    report = dib.report()
    assert report["status"] == "failed"
    assert signal.Signals(sig).name in report["error"]


def test_second_signal_does_not_cut_the_cleanup_short(dib, sleeper):
    # the detached sleep ignores SIGTERM: unwinding the chroot waits, then uses SIGKILL
    proc, sleeps = sleeper("install.d", stubborn=True)
    os.kill(proc.pid, signal.SIGINT)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGTERM)
    os.kill(proc.pid, signal.SIGINT)
    rc = proc.wait(timeout=60)
    err = dib.stderr_of_started()
    assert rc == 130, err
    assert "received SIGTERM while cleaning up" in err
    assert "Traceback" not in err
    assert _running(sleeps) == []
    assert builds.processes_under(dib.tmp_dir) == []
    assert leaks.mounts_under(dib.tmp_dir) == []
    assert dib.workdirs() == []
    assert not dib.image().exists()


def test_cleanup_leaves_a_running_build_alone(dib, sleeper):
    proc, sleeps = sleeper("install.d")
    [wd] = dib.workdirs()
    mounted = leaks.mounts_under(wd)

    result = dib.cleanup()
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert dib.workdirs() == [wd]
    assert leaks.mounts_under(wd) == mounted
    assert len(_running(sleeps)) == 2

    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 143


def _kill_hard(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _assert_left_behind(wd: Path, sleeps) -> None:
    """What SIGKILL leaves: the chroot mounts and the processes in it."""
    mounted = leaks.mounts_under(wd)
    for sub in ("w/mnt", "w/mnt/proc", "w/mnt/sys", "w/mnt/dev", "w/mnt/dev/pts",
                "w/mnt/tmp/in_target.d"):
        assert os.fspath(wd / sub) in mounted, (sub, mounted)
    assert len(_running(sleeps)) == 2
    assert builds.processes_under(wd)


def test_cleanup_recovers_after_sigkill(dib, sleeper):
    proc, sleeps = sleeper("install.d")
    [wd] = dib.workdirs()
    _kill_hard(proc)
    _assert_left_behind(wd, sleeps)

    result = dib.cleanup()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"removed stale work directory {wd}" in out
    assert f"unmounted {wd}/w/mnt/proc" in out
    assert "killed" in out
    assert leaks.mounts_under(dib.tmp_dir) == []
    assert _running(sleeps) == []
    assert builds.processes_under(dib.tmp_dir) == []
    assert dib.workdirs() == []

    # nothing left to do the second time
    again = dib.cleanup()
    assert again.returncode == 0 and again.stdout == ""


def test_next_build_recovers_after_sigkill(dib, sleeper):
    proc, sleeps = sleeper("install.d")
    [wd] = dib.workdirs()
    _kill_hard(proc)
    _assert_left_behind(wd, sleeps)

    result = dib.run("t-probe", name="next")
    assert result.returncode == 0, result.stderr
    assert f"removed stale work directory {wd}" in result.stderr
    assert dib.image("next").exists()
    assert _running(sleeps) == []
    assert leaks.mounts_under(dib.tmp_dir) == []
    assert dib.workdirs() == []
