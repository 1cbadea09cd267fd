"""The worker's side of a farm build (docs/farm.md): runs in a Dask worker process.

:func:`build` is the task: it unpacks a :class:`~dib.farmtask.Task` into a directory of its
own and runs ``python -m dib`` -- the same command-line build as on any machine, in its own
process group, with its own log and signal handling -- through the command gateway. The child
is started under ``setpriv --pdeathsig SIGTERM``: if the worker process dies, the build gets
SIGTERM and unwinds (unmounts, detaches) as it does on Ctrl-C. A build that fails returns a
failed :class:`Outcome` (retrying a failing hook elsewhere would fail again); a build that
was killed (OOM, SIGKILL) raises :class:`BuildKilled`, so Dask's ``retries=`` runs it on
another worker. A worker that dies takes its task with it, and the scheduler gives the task to
another worker.

``dask worker --preload dib.farmworker`` runs :func:`dask_setup` when the worker starts: the
stale recovery of :func:`dib.workdir.cleanup_stale` in the worker's TMP_DIR, so mounts and
loop devices of builds that died with an earlier worker process are undone before any new
build (each build also does this first).

Dask itself is imported only inside functions that run on a worker.
"""
from __future__ import annotations

import collections
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Deque, Dict, List, Mapping, Optional, Tuple

from dib import cmd, workdir
from dib.errors import DibError
from dib.farmtask import WORKER_OWNED, Task, unpack_elements

log = logging.getLogger("dib.farm")

#: the Dask event topic the worker reports progress on (the submitter subscribes)
TOPIC = "dib-farm"
#: lines of the build's output kept for the submitter
TAIL_LINES = 40


class BuildKilled(Exception):
    """The build's process was killed by a signal: Dask retries the task elsewhere."""


class Cancelled(Exception):
    """Nobody wants the task's result any more (the submitter went away)."""


@dataclass(frozen=True)
class Outcome:
    """What a farm task returns to the submitter."""

    key: str
    label: str
    worker: str
    host: str
    returncode: int
    seconds: float
    tail: str
    outputs: Tuple[str, ...] = ()
    #: steps of the build report: total, from the local cache, from the remote cache
    steps: int = 0
    hits: int = 0
    remote_hits: int = 0
    #: layers pushed to the remote cache, and the bytes moved each way
    pushed: int = 0
    bytes_pulled: int = 0
    bytes_pushed: int = 0
    error: str = ""
    report: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def tmp_dir(environ: Mapping[str, str]) -> Path:
    """The worker's TMP_DIR (as a build on this machine would use it)."""
    return Path(environ.get("TMP_DIR", "").strip() or "/tmp")


def child_env(task: Task, environ: Mapping[str, str], elements: Optional[Path],
              files: Mapping[str, Path], scheduler: Optional[str] = None) -> Dict[str, str]:
    """The build's environment: what belongs to this machine from ``environ`` (its PATH,
    cache, TMP_DIR, credentials, a remote cache of its own unless the task names one),
    then the task's variables, the shipped elements and files; never DIB_FARM; the
    ``scheduler``'s address as DIB_FARM_LAYER_LOCKS (dib.farmlock)."""
    env = {k: v for k, v in environ.items() if k in WORKER_OWNED or k == "DIB_REMOTE_CACHE"}
    env.setdefault("PATH", cmd.SAFE_PATH)
    env.update(task.env)
    env.pop("DIB_FARM", None)
    env.pop("ELEMENTS_PATH", None)
    if elements is not None:
        env["ELEMENTS_PATH"] = os.fspath(elements)
    for name, path in files.items():
        env[name] = os.fspath(path)
    env.pop("DIB_FARM_LAYER_LOCKS", None)
    if scheduler:
        env["DIB_FARM_LAYER_LOCKS"] = scheduler
    return env


def child_argv(task: Task, python: str = sys.executable) -> List[str]:
    """``python -m dib ARGV``, under setpriv so the build gets SIGTERM when we die."""
    return ["setpriv", "--pdeathsig", "SIGTERM", "--", python, "-m", "dib", *task.argv]


def report_counts(report: Mapping[str, Any]) -> Dict[str, int]:
    """What a build report says of its steps and of the remote cache: steps, hits (local or
    remote), remote_hits, pushed, bytes_pulled, bytes_pushed."""
    steps = report.get("steps") or []
    remote = report.get("remote_cache") or {}
    return {"steps": len(steps), "hits": sum(1 for s in steps if s.get("cached")),
            "remote_hits": sum(1 for s in steps if s.get("remote") == "hit"),
            "pushed": sum(1 for s in steps if s.get("remote") == "pushed"),
            "bytes_pulled": int(remote.get("bytes_pulled") or 0),
            "bytes_pushed": int(remote.get("bytes_pushed") or 0)}


def _worker() -> Any:
    """The Dask worker running this task (ValueError outside one)."""
    import distributed

    return distributed.get_worker()


def _event(kind: str, task: Task, **data: Any) -> None:
    try:
        _worker().log_event(TOPIC, {"event": kind, "key": task.key, "label": task.label,
                                       **data})
    except Exception:  # not in a worker (tests), or the scheduler is gone: progress only
        log.debug("farm: cannot report %s for %s", kind, task.key, exc_info=True)


def _wanted(key: str) -> bool:
    """False once the scheduler has cancelled or released the task on this worker."""
    try:
        ts = _worker().state.tasks.get(key)
    except Exception:
        return True
    return ts is None or ts.state not in ("cancelled", "released", "forgotten")


def build(task: Task) -> Outcome:
    """The farm task: build ``task`` in a child process; see the module docstring."""
    started = time.monotonic()
    environ = dict(os.environ)
    worker, host = _where()
    base = tmp_dir(environ)
    base.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="dib_farm.", dir=base))
    lock = open(scratch / "lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    tail: Deque[str] = collections.deque(maxlen=TAIL_LINES)
    last_check = [time.monotonic()]

    def on_line(line: str) -> None:
        tail.append(line)
        now = time.monotonic()
        if now - last_check[0] > 2:
            last_check[0] = now
            if not _wanted(task.key):
                raise Cancelled(task.key)

    try:
        elements = None
        if task.elements:
            elements = scratch / "elements"
            unpack_elements(task.elements, elements)
        files = {}
        for name, (fname, data) in task.files.items():
            path = scratch / "files" / name / fname
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            files[name] = path
        env = child_env(task, environ, elements, files, _scheduler())
        cwd = task.cwd if os.path.isdir(task.cwd) else os.fspath(scratch)
        _event("started", task, worker=worker, host=host, pid=os.getpid())
        log.info("farm: building %s (%s)", task.label, task.key)
        result = cmd.run(child_argv(task), env=env, cwd=cwd, check=False, on_line=on_line,
                         tail=TAIL_LINES)
    except Cancelled:
        log.warning("farm: %s was cancelled; its build was stopped", task.label)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        lock.close()
    seconds = time.monotonic() - started
    rc = result.returncode
    if rc < 0 and rc != -signal.SIGTERM:
        _event("killed", task, worker=worker, signal=-rc)
        raise BuildKilled(f"{task.label}: the build on {host} was killed by "
                          f"{signal.Signals(-rc).name}")
    report: Dict[str, Any] = {}
    try:
        report = json.loads(Path(task.report).read_text())
    except (OSError, ValueError):
        pass
    counts = report_counts(report)
    outputs = tuple(o["path"] for o in report.get("outputs") or [] if "path" in o)
    error = "" if rc == 0 else (report.get("error") or (list(tail) or [f"exit {rc}"])[-1])
    outcome = Outcome(key=task.key, label=task.label, worker=worker, host=host,
                      returncode=rc, seconds=seconds, tail="\n".join(tail),
                      outputs=outputs if rc == 0 else (), steps=counts["steps"],
                      hits=counts["hits"], remote_hits=counts["remote_hits"],
                      pushed=counts["pushed"], bytes_pulled=counts["bytes_pulled"],
                      bytes_pushed=counts["bytes_pushed"], error=str(error),
                      report=task.report)
    _event("finished", task, worker=worker, returncode=rc, seconds=round(seconds, 1))
    return outcome


def _scheduler() -> Optional[str]:
    """The address of this worker's scheduler (None outside a worker)."""
    try:
        return str(_worker().scheduler.address)
    except Exception:
        return None


def _where() -> Tuple[str, str]:
    try:
        return str(_worker().address), socket.gethostname()
    except Exception:
        return "local", socket.gethostname()


def recover(environ: Mapping[str, str]) -> List[str]:
    """The stale recovery of this machine's TMP_DIR (what dead builds left mounted,
    attached or on disk), and the task directories of dead workers."""
    base = tmp_dir(environ)
    done = workdir.cleanup_stale(base)
    for scratch in sorted(base.glob("dib_farm.*")) if base.is_dir() else []:
        if not workdir.lock_held(scratch / "lock"):  # no task runs there any more
            shutil.rmtree(scratch, ignore_errors=True)
            done.append(f"removed stale farm task directory {scratch}")
    return done


def dask_setup(worker: Any) -> None:
    """``dask worker --preload dib.farmworker``: recover what died with an earlier worker."""
    try:
        for line in recover(os.environ):
            log.warning("farm worker start: %s", line)
    except DibError as exc:
        log.error("farm worker start: stale recovery failed: %s", exc)
