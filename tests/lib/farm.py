"""A Dask cluster on 127.0.0.1 for the farm tests: a scheduler (free port, scheduler file)
and worker processes as docs/farm.md starts them (``--nworkers 1 --nthreads 1 --resources
dib=1 --preload dib.farmworker``), each with its own TMP_DIR and image cache, as if on a
machine of its own. Everything runs in its own session and is stopped when the ``with``
block ends; nothing is left running.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from dib import cmd

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Worker:
    name: str
    tmp_dir: Path
    cache: Path
    log: Path
    proc: Optional[subprocess.Popen] = None


@dataclass
class Cluster:
    base: Path
    n_workers: int = 2
    env: Mapping[str, str] = field(default_factory=dict)
    scheduler: Optional[subprocess.Popen] = None
    workers: List[Worker] = field(default_factory=list)
    address: str = ""

    def _env(self, extra: Mapping[str, str]) -> Dict[str, str]:
        env = {"PATH": cmd.SAFE_PATH, "HOME": "/root", "LANG": "C.UTF-8",
               "PYTHONPATH": os.fspath(REPO)}
        env.update({k: os.environ[k] for k in ("DIB_DISTRIBUTION_MIRROR",)
                    if os.environ.get(k)})
        env.update(self.env)
        env.update(extra)
        return env

    def _start(self, argv: List[str], log: Path, env: Mapping[str, str]) -> subprocess.Popen:
        with open(log, "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "dask", *argv], env=dict(env),
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=self.base)

    def __enter__(self) -> "Cluster":
        self.base.mkdir(parents=True, exist_ok=True)
        sched_file = self.base / "scheduler.json"
        self.scheduler = self._start(
            ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", os.fspath(sched_file)],
            self.base / "scheduler.log", self._env({}))
        try:
            deadline = time.monotonic() + 60
            while not sched_file.exists():
                if self.scheduler.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("the Dask scheduler did not start:\n"
                                         + (self.base / "scheduler.log").read_text())
                time.sleep(0.1)
            self.address = json.loads(sched_file.read_text())["address"]
            for i in range(self.n_workers):
                w = Worker(f"w{i + 1}", self.base / f"w{i + 1}" / "tmp",
                           self.base / f"w{i + 1}" / "cache", self.base / f"w{i + 1}.log")
                w.tmp_dir.mkdir(parents=True)
                self.workers.append(w)
                self.start_worker(w)
            self.wait_for_workers(self.n_workers)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def start_worker(self, w: Worker) -> None:
        w.proc = self._start(
            ["worker", self.address, "--name", w.name, "--nworkers", "1", "--nthreads", "1",
             "--resources", "dib=1", "--preload", "dib.farmworker", "--host", "127.0.0.1",
             "--no-dashboard", "--local-directory", os.fspath(w.tmp_dir.parent / "dask")],
            w.log, self._env({"TMP_DIR": os.fspath(w.tmp_dir),
                              "DIB_IMAGE_CACHE": os.fspath(w.cache)}))

    def wait_for_workers(self, n: int, timeout: float = 90) -> None:
        from distributed import Client

        with Client(self.address, timeout="30s") as client:
            client.wait_for_workers(n, timeout=timeout)

    def worker_info(self) -> Dict[str, str]:
        """worker name -> address, as the scheduler knows them now."""
        from distributed import Client

        with Client(self.address, timeout="30s") as client:
            return {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}

    def __exit__(self, *exc) -> None:
        procs = [p for p in [w.proc for w in self.workers] + [self.scheduler] if p is not None]
        # the nannies' worker processes, and whatever those started, die with them
        family = {pid for p in procs for pid in descendants(p.pid)}
        for p in procs:
            if p.poll() is None:
                _signal_group(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(p.pid, signal.SIGKILL)
            p.wait()
        for pid in family:
            _kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in family) and time.monotonic() < deadline:
            time.sleep(0.1)


def descendants(pid: int) -> List[int]:
    """Every process below ``pid`` (from /proc's parent links)."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
