"""Logging: a timestamped log file per build, a short console view, and timed steps.

The console shows INFO and above (a progress line per phase and hook); the log file gets
everything including every command's argv and output, each line timestamped. The only
process-wide state is the logging configuration itself.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, TextIO, Tuple

from dib import status
from dib.errors import DibError, report

FILE_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-5s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
#: the name of the console handler (there is one)
CONSOLE = "dib-console"


class _ConsoleFormatter(logging.Formatter):
    def __init__(self, start: float) -> None:
        super().__init__()
        self.start = start

    def format(self, record: logging.LogRecord) -> str:
        elapsed = record.created - self.start
        prefix = f"[{int(elapsed // 60):02d}:{elapsed % 60:04.1f}]"
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            msg = f"{record.levelname.lower()}: {msg}"
        return f"{prefix} {msg}"


def setup(*, verbose: int = 0, quiet: bool = False, stream: Optional[TextIO] = None,
          progress: bool = False, stdout: Optional[TextIO] = None) -> None:
    """Configure the root 'dib' logger for the console. Call once per process.

    ``progress``: draw the live status line (:mod:`dib.status`) below the log lines when
    ``stream`` and ``stdout`` are both terminals; plain lines otherwise."""
    root = logging.getLogger("dib")
    root.setLevel(logging.DEBUG)
    for h in list(root.handlers):
        if h.get_name() == CONSOLE:
            root.removeHandler(h)
            h.close()
    stream = stream or sys.stderr
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 0 else logging.INFO)
    handler: logging.Handler
    if progress and not quiet and status.wanted(stream, stdout or sys.stdout):
        handler = status.StatusHandler(stream, level)
    else:
        handler = logging.StreamHandler(stream)
        handler.setLevel(level)
        handler.addFilter(_no_events)
    handler.set_name(CONSOLE)
    handler.setFormatter(_ConsoleFormatter(time.time()))
    root.addHandler(handler)


def _no_events(record: logging.LogRecord) -> bool:
    """Leave out the status line's event records (console without it, and the log file)."""
    return not (hasattr(record, status.STEP) or hasattr(record, status.BUILD))


def build_started(report: Path) -> None:
    """Tell the status line a build starts; ``report`` is where the previous build of the
    same image left its timings."""
    logging.getLogger("dib.status").debug("build started", extra={status.BUILD: report})


def step_started(index: int, total: int, label: str, element: str = "") -> None:
    """Tell the status line step ``index`` of ``total`` starts."""
    logging.getLogger("dib.status").debug(
        "step %d of %d: %s", index, total, label,
        extra={status.STEP: status.Step(index, total, label, element)})


def end_status() -> None:
    """Erase the status line for good (before the CLI prints its results or an error)."""
    for h in logging.getLogger("dib").handlers:
        if isinstance(h, status.StatusHandler):
            h.stop()


def helper_main(body: Callable[[], int]) -> int:
    """Run ``body`` as a host helper that an element hook calls (``python -m dib.<module>``):
    plain log lines on stderr (debug ones too when DIB_DEBUG_TRACE is set), and a
    :class:`DibError` shown as the CLI shows it, with its exit code."""
    trace = (os.environ.get("DIB_DEBUG_TRACE", "0") or "0") != "0"
    logging.basicConfig(level=logging.DEBUG if trace else logging.INFO, stream=sys.stderr,
                        format="%(message)s")
    try:
        return body()
    except DibError as exc:
        sys.stderr.write(report(exc))
        return exc.exit_code


class _FileFormatter(logging.Formatter):
    """Every line of a multi-line message gets the timestamp prefix (grep-friendly)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if "\n" not in text:
            return text
        first, *rest = text.split("\n")
        prefix = (f"{self.formatTime(record, self.datefmt)}.{int(record.msecs):03d} "
                  f"{record.levelname:<5} {record.name}: ")
        return "\n".join([first] + [prefix + line for line in rest])


@contextlib.contextmanager
def logfile(path: Path) -> Iterator[Path]:
    """Append everything (DEBUG) to ``path`` while the context is open."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(_FileFormatter(FILE_FORMAT, DATE_FORMAT))
    handler.addFilter(_no_events)
    root = logging.getLogger("dib")
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()


@dataclass
class Timings:
    """Where the time went: (kind, name, seconds, extra) rows in the order they finished."""

    rows: List[Tuple[str, str, float, Dict[str, Any]]] = field(default_factory=list)

    @contextlib.contextmanager
    def measure(self, kind: str, name: str, **extra: Any) -> Iterator[Dict[str, Any]]:
        start = time.monotonic()
        info = dict(extra)
        try:
            yield info
        finally:
            self.rows.append((kind, name, time.monotonic() - start, info))

    def of(self, kind: str) -> List[Tuple[str, float, Dict[str, Any]]]:
        return [(n, s, x) for k, n, s, x in self.rows if k == kind]

    def totals(self, kind: str) -> List[Tuple[str, float]]:
        """Seconds per name (a phase measured once per script is summed), first-seen order."""
        sums: Dict[str, float] = {}
        for name, secs, _ in self.of(kind):
            sums[name] = sums.get(name, 0.0) + secs
        return list(sums.items())

    def table(self) -> str:
        """A readable table of phase and script times, slowest scripts marked."""
        lines = []
        phases = self.totals("phase")
        scripts = self.of("script")
        if phases:
            total = sum(s for _, s, _ in self.of("build")) or sum(s for _, s in phases)
            lines.append(f"{'phase':<22}{'seconds':>9}{'share':>8}")
            for name, secs in phases:
                share = f"{100 * secs / total:5.1f}%" if total else ""
                lines.append(f"{name:<22}{secs:9.1f}{share:>8}")
        if scripts:
            lines.append("")
            lines.append(f"{'script':<44}{'element':<24}{'seconds':>9}")
            for name, secs, extra in scripts:
                lines.append(f"{name:<44}{extra.get('element', ''):<24}{secs:9.1f}")
        return "\n".join(lines)


def step_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"dib.{name}")


def tail_of(path: Optional[Path], lines: int = 20) -> str:
    if path is None or not path.exists():
        return ""
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])
