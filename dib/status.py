"""The live status line: one line at the bottom of a terminal, redrawn in place.

It shows the step being run (k of N, its name and element), the time spent in it and in
the build so far, and an estimate of what is left, taken from the previous build of the
same image (its ``build-report.json``: the seconds of every step that ran, and of the
whole build). Log lines are written above it as usual; it is cleared before each of them
and redrawn after, and once a second while a step is quiet.

The build tells it what happens through ordinary log records that carry an event
attribute (:data:`STEP` or :data:`BUILD`), logged at debug level by :mod:`dib.log`; the
log file leaves them out, so it is the same with or without the status line.

A small module rather than a library such as ``rich``: what is needed is one line, a
carriage return and an erase-line sequence; rich's live display would take over the
console's formatting (and add a dependency of several packages to every installation)
for no gain here.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, TextIO

#: record attribute of a step starting: a :class:`Step`
STEP = "dib_status_step"
#: record attribute of a build starting: the path of its build report (maybe not there yet)
BUILD = "dib_status_build"

#: erase from the cursor to the end of the line
ERASE = "\x1b[K"


@dataclass(frozen=True)
class Step:
    index: int  # 1-based
    total: int
    label: str
    element: str = ""


@dataclass(frozen=True)
class Previous:
    """What the previous build of the same image took."""

    steps: Dict[str, float]
    total: float

    @property
    def outside_steps(self) -> float:
        """Seconds the previous build spent outside the tree steps (disk, outputs, ...)."""
        return max(0.0, self.total - sum(self.steps.values()))


def previous(report: Path) -> Optional[Previous]:
    """The timings of the build that wrote ``report``; None when there is none (or it
    failed, or cannot be read: the estimate is a nicety, never an error)."""
    try:
        data = json.loads(report.read_text())
        if data.get("status") != "ok":
            return None
        steps = {str(s["step"]): float(s["seconds"]) for s in data.get("steps", [])}
        return Previous(steps, float(data["seconds"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


@dataclass
class State:
    """Where the build is; :meth:`render` turns it into the status line."""

    started: float
    prev: Optional[Previous] = None
    step: Optional[Step] = None
    step_started: float = 0.0
    #: the labels of the steps announced so far, in order
    done: List[str] = field(default_factory=list)

    def start_step(self, step: Step, now: float) -> None:
        self.step, self.step_started = step, now
        self.done.append(step.label)

    def remaining(self, now: float) -> Optional[float]:
        """Seconds left by the previous build's timings: what is left of the current step,
        the steps not yet started that the previous build ran, and its time outside the
        steps; None without a previous build."""
        if self.prev is None or self.step is None:
            return None
        p = self.prev
        current = max(0.0, p.steps.get(self.step.label, 0.0) - (now - self.step_started))
        seen = set(self.done)
        later = sum(v for k, v in p.steps.items() if k not in seen)
        return current + later + p.outside_steps

    def render(self, now: float, width: int) -> str:
        parts: List[str] = []
        if self.step is not None:
            s = self.step
            head = f"[{s.index}/{s.total}] {s.label}"
            if s.element:
                head += f" ({s.element})"
            parts.append(head)
            parts.append(f"step {clock(now - self.step_started)}")
        parts.append(f"build {clock(now - self.started)}")
        left = self.remaining(now)
        if left is not None and self.prev is not None:
            parts.append(f"~{clock(left)} left (last build {clock(self.prev.total)})")
        line = "  ".join(parts)
        if width > 1 and len(line) > width - 1:
            line = line[:max(0, width - 2)] + "…"
        return line


class StatusHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The console handler on a terminal: log lines at ``level`` and above, the status line
    below them. It sees every record (its own level is DEBUG) so that it can follow the
    events; records below ``level`` only refresh the line."""

    def __init__(self, stream: TextIO, level: int, *, tick: float = 1.0) -> None:
        super().__init__(stream)
        self.setLevel(logging.DEBUG)
        self.threshold = level
        self.state = State(time.monotonic())
        self._drawn = False
        self._stopped = False
        self._tick = tick
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- drawing (called with the handler's lock held) -------------------------------------
    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return 80

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r" + ERASE)
            self._drawn = False

    def _draw(self) -> None:
        if self._stopped:
            return
        self.stream.write("\r" + self.state.render(time.monotonic(), self._width()) + ERASE)
        self._drawn = True
        self.stream.flush()

    # -- logging ----------------------------------------------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.acquire()
            try:
                step = getattr(record, STEP, None)
                report = getattr(record, BUILD, None)
                if report is not None:
                    self.state = State(time.monotonic(), previous(Path(report)))
                    self._stopped = False
                    self._start_ticker()
                elif step is not None:
                    self.state.start_step(step, time.monotonic())
                elif record.levelno >= self.threshold:
                    self._clear()
                    self.stream.write(self.format(record) + self.terminator)
                self._draw()
            finally:
                self.release()
        except Exception:
            self.handleError(record)

    def stop(self) -> None:
        """Erase the line and draw it no more (before the CLI prints, or at exit)."""
        self.acquire()
        try:
            self._stopped = True
            self._clear()
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away
            pass
        finally:
            self.release()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        self._thread = None
        self._wake.clear()

    def close(self) -> None:
        self.stop()
        super().close()

    def _start_ticker(self) -> None:
        if self._thread is not None or self._tick <= 0:
            return
        self._thread = threading.Thread(target=self._ticker, name="dib-status", daemon=True)
        self._thread.start()

    def _ticker(self) -> None:
        while not self._wake.wait(self._tick):
            self.acquire()
            try:
                if self._stopped:
                    return
                self._draw()
            except (OSError, ValueError):  # the terminal went away
                return
            finally:
                self.release()


def wanted(stream: TextIO, stdout: TextIO) -> bool:
    """Draw the status line only when both standard output (the issue's condition: someone
    is watching) and the console stream it is drawn on are terminals."""
    try:
        return bool(stream.isatty() and stdout.isatty())
    except (AttributeError, ValueError):
        return False
