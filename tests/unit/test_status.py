"""The live status line (dib.status, wired by dib.log): drawn on a terminal only, redrawn in
place below the log lines, its estimate taken from the previous build's report; plain lines,
and an unchanged log file, otherwise."""
from __future__ import annotations

import io
import json
import logging
import os
import re
import select
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator, List

import pytest

from dib import config, status, steps
from dib import log as dlog

ESC = re.compile(r"\x1b\[K|\r")


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_console() -> Iterator[None]:
    root = logging.getLogger("dib")
    before = list(root.handlers)
    yield
    dlog.end_status()
    for h in list(root.handlers):
        if h not in before:
            root.removeHandler(h)
            h.close()
    for h in before:
        if h not in root.handlers:
            root.addHandler(h)


def report(path: Path, steps_seconds: dict, total: float, status_: str = "ok") -> Path:
    path.write_text(json.dumps({
        "status": status_, "seconds": total,
        "steps": [{"step": k, "cached": v == 0, "seconds": v} for k, v in steps_seconds.items()],
    }))
    return path


# -- the estimate ---------------------------------------------------------------------------

def test_previous_reads_the_step_seconds_of_a_good_report(tmp_path: Path) -> None:
    prev = status.previous(report(tmp_path / "r.json", {"root.d": 14.0, "install.d/a": 3.5},
                                  30.0))
    assert prev is not None
    assert prev.steps == {"root.d": 14.0, "install.d/a": 3.5}
    assert prev.outside_steps == pytest.approx(30.0 - 14.0 - 3.5)


@pytest.mark.parametrize("content", [None, "not json", json.dumps({"status": "failed",
                                                                   "seconds": 3, "steps": []}),
                                     json.dumps({"status": "ok"}), json.dumps([1, 2])])
def test_no_estimate_without_a_usable_previous_report(tmp_path: Path, content: str) -> None:
    path = tmp_path / "build-report.json"
    if content is not None:
        path.write_text(content)
    assert status.previous(path) is None


def test_remaining_is_what_the_last_build_spent_after_this_point() -> None:
    prev = status.Previous({"root.d": 10.0, "install.d/a": 20.0, "install.d/b": 5.0}, 50.0)
    state = status.State(started=100.0, prev=prev)
    state.start_step(status.Step(1, 4, "root.d"), 100.0)
    state.start_step(status.Step(2, 4, "install.d/a", "el"), 110.0)
    # 15 s left of install.d/a, then install.d/b (5 s), then the 15 s outside the steps
    assert state.remaining(115.0) == pytest.approx(15.0 + 5.0 + 15.0)
    # a step running longer than last time counts as done, not negative
    assert state.remaining(200.0) == pytest.approx(5.0 + 15.0)


def test_the_line_names_the_step_its_element_times_and_estimate() -> None:
    prev = status.Previous({"root.d": 10.0, "install.d/a": 20.0}, 40.0)
    state = status.State(started=0.0, prev=prev)
    state.start_step(status.Step(1, 3, "root.d", "debian-minimal"), 0.0)
    state.start_step(status.Step(2, 3, "install.d/a", "debian-minimal"), 70.0)
    line = state.render(75.0, 200)
    assert line.startswith("[2/3] install.d/a (debian-minimal)")
    assert "step 0:05" in line and "build 1:15" in line
    # 15 s of install.d/a to go, and the 10 s outside the steps
    assert f"~{status.clock(15.0 + 10.0)} left" in line and "last build 0:40" in line


def test_no_estimate_shown_without_a_previous_build() -> None:
    state = status.State(started=0.0)
    state.start_step(status.Step(1, 2, "root.d"), 0.0)
    assert "left" not in state.render(3.0, 200)


def test_the_line_fits_the_terminal() -> None:
    state = status.State(started=0.0)
    state.start_step(status.Step(1, 2, "post-install.d/" + "x" * 100, "element"), 0.0)
    assert len(state.render(1.0, 40)) == 39


# -- on a terminal and off ------------------------------------------------------------------

def emit_a_build(tmp_path: Path) -> None:
    log = logging.getLogger("dib.build")
    dlog.build_started(report(tmp_path / "build-report.json", {"root.d": 8.0}, 20.0))
    log.info("first line")
    dlog.step_started(1, 2, "root.d", "debian-minimal")
    log.debug("command output")
    log.info("second line")
    dlog.step_started(2, 2, steps.DISK_STEP)


def test_on_a_terminal_the_status_line_is_drawn_below_the_log_lines(tmp_path: Path) -> None:
    tty = FakeTTY()
    dlog.setup(stream=tty, stdout=tty, progress=True)
    emit_a_build(tmp_path)
    out = tty.getvalue()
    assert "\r\x1b[K" in out  # erased in place before a log line
    assert "[1/2] root.d (debian-minimal)" in out and "~" in out
    # the log lines are whole lines of their own, the debug one not shown
    lines = [ESC.sub("", seg) for seg in out.split("\n")[:-1]]
    assert [re.sub(r"^.*?\[\d\d:\d\d\.\d\] ", "", ln) for ln in lines] == ["first line",
                                                                           "second line"]
    assert "command output" not in out
    dlog.end_status()
    assert tty.getvalue().endswith("\r\x1b[K")  # nothing left on the line for the CLI


def test_the_line_is_redrawn_while_a_step_is_quiet(tmp_path: Path) -> None:
    tty = FakeTTY()
    handler = status.StatusHandler(tty, logging.INFO, tick=0.01)
    logging.getLogger("dib").addHandler(handler)
    try:
        dlog.build_started(tmp_path / "none.json")
        dlog.step_started(1, 1, "root.d")
        drawn = tty.getvalue().count("[1/1] root.d")
        for _ in range(200):
            if tty.getvalue().count("[1/1] root.d") > drawn:
                break
            handler._wake.wait(0.01)
        assert tty.getvalue().count("[1/1] root.d") > drawn
    finally:
        handler.stop()
        logging.getLogger("dib").removeHandler(handler)


def plain_output(tmp_path: Path, **kw: object) -> str:
    stream = kw.pop("stream")
    assert isinstance(stream, io.StringIO)
    dlog.setup(stream=stream, **kw)  # type: ignore[arg-type]
    emit_a_build(tmp_path)
    dlog.end_status()
    return stream.getvalue()


@pytest.mark.parametrize("case", ["not a terminal", "stdout not a terminal", "--no-progress",
                                  "quiet"])
def test_plain_lines_otherwise(tmp_path: Path, case: str) -> None:
    stream = FakeTTY() if case != "not a terminal" else io.StringIO()
    stdout = io.StringIO() if case == "stdout not a terminal" else FakeTTY()
    out = plain_output(tmp_path, stream=stream, stdout=stdout,
                       progress=case != "--no-progress", quiet=case == "quiet")
    assert "\x1b" not in out and "\r" not in out
    assert "root.d" not in out  # the events are not log lines
    if case == "quiet":
        assert out == ""
    else:
        assert [re.sub(r"^\[\d\d:\d\d\.\d\] ", "", ln) for ln in out.splitlines()] == [
            "first line", "second line"]


def test_a_real_pty_gets_the_line(tmp_path: Path) -> None:
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        dlog.setup(stream=tty, stdout=tty, progress=True)
        handlers: List[logging.Handler] = logging.getLogger("dib").handlers
        assert any(isinstance(h, status.StatusHandler) for h in handlers)
        dlog.build_started(tmp_path / "none.json")
        dlog.step_started(3, 9, "install.d/10-x", "el")
        dlog.end_status()
        data = ""
        while select.select([master], [], [], 1.0)[0]:  # every write, however it arrives
            data += os.read(master, 4096).decode()
            if data.endswith("\r\x1b[K") and "[3/9]" in data:
                break
    os.close(master)
    assert "[3/9] install.d/10-x (el)" in data


def test_the_log_file_has_no_status_events(tmp_path: Path) -> None:
    dlog.setup(stream=io.StringIO(), progress=False)
    with dlog.logfile(tmp_path / "build.log") as path:
        emit_a_build(tmp_path)
    text = path.read_text()
    assert "first line" in text and "command output" in text
    assert "step 1 of 2" not in text and "build started" not in text


def test_no_progress_setting() -> None:
    env = {"ARCH": "amd64"}
    assert config.parse_args(["debian"], env).progress is True
    assert config.parse_args(["--no-progress", "debian"], env).progress is False
    assert config.parse_args(["debian"], {**env, "DIB_NO_PROGRESS": "1"}).progress is False


def test_the_setting_is_no_input_of_the_tree() -> None:
    a = steps.layers.build_inputs("amd64", {"DIB_NO_PROGRESS": "1"}, ())
    b = steps.layers.build_inputs("amd64", {}, ())
    assert a == b


# -- the plan the line counts ---------------------------------------------------------------

def test_the_plan_counts_every_tree_step_and_one_for_the_disk() -> None:
    scripts = {
        "root.d": [SimpleNamespace(name="10-debootstrap", element="debian-minimal")],
        "install.d": [SimpleNamespace(name="10-a", element="a"),
                      SimpleNamespace(name="20-b", element="b")],
        "post-root.d": [SimpleNamespace(name="90-c", element="c")],
    }
    b = SimpleNamespace(
        tree_hooks=SimpleNamespace(scripts=lambda phase: scripts.get(phase, [])),
        has_work=lambda phase: bool(scripts.get(phase)),
        cfg=SimpleNamespace(packages=("vim",), needs_block_device=True))
    assert steps.plan(b) == [  # type: ignore[arg-type]
        ("root.d", "debian-minimal"), ("install.d/10-a", "a"), ("install.d/20-b", "b"),
        ("-p", ""), ("post-root.d/90-c", "c"), (steps.DISK_STEP, "")]
