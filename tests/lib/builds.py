"""Run ``bin/disk-image-create`` as a subprocess in a sandbox below a test's ``tmp_path``.

A :class:`Dib` owns ``<tmp_path>/tmp`` (the builds' ``TMP_DIR``), ``<tmp_path>/out`` (outputs)
and ``<tmp_path>/elements`` (elements a test writes with :func:`tests.lib.elements.
make_element`). Builds get a controlled environment, not the caller's. Leaving the ``with``
block checks for leaks -- mounts, loop devices, ``dib_build.*`` work directories and processes
living below ``tmp_path`` -- cleans up whatever it found (so one failure does not poison the
next test) and then fails if there was anything::

    @pytest.fixture
    def dib(tmp_path):
        with builds.Dib(tmp_path) as d:
            yield d
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from dib import cmd, mounts
from tests.lib import leaks

REPO = Path(__file__).resolve().parents[2]
DISK_IMAGE_CREATE = REPO / "bin" / "disk-image-create"
TEST_ELEMENTS = REPO / "tests" / "elements"
HOST_PATH = cmd.SAFE_PATH
#: what a test build takes from the caller's environment: proxies and mirror overrides
PASS_THROUGH = ("http_proxy", "https_proxy", "no_proxy", "DIB_DISTRIBUTION_MIRROR",
                "DIB_DEBIAN_SECURITY_MIRROR")


def build_env(tmp_dir: Path, elements_path: Sequence[Path],
              extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment of a test build: a fixed PATH and locale, ``ELEMENTS_PATH``,
    ``TMP_DIR``, the caller's proxies and mirror overrides, then ``extra``."""
    env = {"PATH": HOST_PATH, "HOME": "/root", "LANG": "C.UTF-8",
           "ELEMENTS_PATH": ":".join(os.fspath(p) for p in elements_path),
           "TMP_DIR": os.fspath(tmp_dir)}
    env.update({k: os.environ[k] for k in PASS_THROUGH if os.environ.get(k)})
    env.update(extra or {})
    return env


def processes_under(path: Path) -> List[str]:
    """Processes whose root directory or cwd is at or below ``path``: 'pid comm'."""
    return [f"{pid} {mounts.process_name(pid)}" for pid in mounts.processes_in(path)]


def processes_running(argv: Sequence[str]) -> List[int]:
    """PIDs whose command line is exactly ``argv``."""
    want = "\0".join(argv) + "\0"
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_text(errors="replace")
        except OSError:
            continue
        if cmdline == want:
            pids.append(int(entry))
    return pids


def dib_build_mounts() -> List[str]:
    """Every mount point in this namespace whose path has a ``dib_build.`` component."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = line.split()[4]
            if "/dib_build." in target:
                found.append(target)
    return found


class Dib:
    def __init__(self, tmp_path: Path) -> None:
        self.base = tmp_path
        self.tmp_dir = tmp_path / "tmp"
        self.out = tmp_path / "out"
        self.elements = tmp_path / "elements"
        for d in (self.tmp_dir, self.out, self.elements):
            d.mkdir(parents=True, exist_ok=True)

    # -- running -----------------------------------------------------------------------

    def env(self, extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
        # each test has its own cache: no layer of another test can stand in
        return build_env(self.tmp_dir, [TEST_ELEMENTS, self.elements],
                         {"DIB_IMAGE_CACHE": os.fspath(self.tmp_dir.parent / "image-cache"),
                          **(extra or {})})

    def argv(self, elements: Sequence[str], *, types: str = "tar", name: str = "img",
             args: Sequence[str] = ()) -> List[str]:
        return [sys.executable, os.fspath(DISK_IMAGE_CREATE), "-n", "-t", types,
                "-o", os.fspath(self.out / name), *args, "fake-os", *elements]

    def run(self, *elements: str, types: str = "tar", name: str = "img",
            args: Sequence[str] = (), env: Optional[Mapping[str, str]] = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        """Build ``fake-os`` plus ``elements``; returns the finished process (text)."""
        return subprocess.run(self.argv(elements, types=types, name=name, args=args),
                              env=self.env(env), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)

    def cli(self, *argv: str, env: Optional[Mapping[str, str]] = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        """Run disk-image-create with exactly ``argv``."""
        return subprocess.run([sys.executable, os.fspath(DISK_IMAGE_CREATE), *argv],
                              env=self.env(env), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)

    def start(self, *elements: str, env: Optional[Mapping[str, str]] = None,
              **kwargs) -> subprocess.Popen:
        """Start a build in the background (its own session; output in ``<tmp_path>``)."""
        out = open(self.base / "build.stdout", "w")
        err = open(self.base / "build.stderr", "w")
        try:
            return subprocess.Popen(self.argv(elements, **kwargs), env=self.env(env),
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)
        finally:
            out.close()
            err.close()

    def stderr_of_started(self) -> str:
        return (self.base / "build.stderr").read_text()

    def wait_for(self, pattern: str, proc: subprocess.Popen, timeout: float = 60) -> Path:
        """Wait until a path matching ``pattern`` (a glob below TMP_DIR) exists."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = sorted(self.tmp_dir.glob(pattern))
            if found:
                return found[0]
            if proc.poll() is not None:
                raise AssertionError(f"the build exited ({proc.returncode}) before "
                                     f"{pattern} appeared:\n{self.stderr_of_started()}")
            time.sleep(0.05)
        raise AssertionError(f"{pattern} did not appear within {timeout}s:\n"
                             f"{self.stderr_of_started()}")

    # -- results -----------------------------------------------------------------------

    def image(self, name: str = "img", fmt: str = "tar") -> Path:
        return self.out / f"{name}.{fmt}"

    def report(self, name: str = "img") -> dict:
        return json.loads((self.out / f"{name}.d" / "build-report.json").read_text())

    def logfile(self, name: str = "img") -> Path:
        return self.out / f"{name}.d" / "build.log"

    def members(self, name: str = "img", fmt: str = "tar") -> Dict[str, tarfile.TarInfo]:
        """The archive's members by name, without the leading ``./``."""
        with tarfile.open(self.image(name, fmt)) as tar:
            return {_strip(m.name): m for m in tar.getmembers()}

    def read(self, member: str, name: str = "img", fmt: str = "tar") -> bytes:
        with tarfile.open(self.image(name, fmt)) as tar:
            f = tar.extractfile("./" + member)
            assert f is not None, f"{member} is not a regular file"
            return f.read()

    def workdirs(self) -> List[Path]:
        return sorted(self.tmp_dir.glob("dib_build.*"))

    # -- leaks -------------------------------------------------------------------------

    def leaks(self) -> List[str]:
        problems = [f"mount {m}" for m in leaks.mounts_under(self.base)]
        problems += [f"loop {x}" for x in leaks.loops_under(self.base)]
        problems += [f"work dir {p}" for p in self.workdirs()]
        problems += [f"process {p}" for p in processes_under(self.base)]
        # any dib_build mount of this test session (pytest's base temp), not only ours
        session = os.path.realpath(self.base.parent).rstrip("/") + "/"
        problems += [f"mount {m} (another test's)" for m in dib_build_mounts()
                     if m.startswith(session) and not m.startswith(os.path.realpath(self.base))]
        return problems

    def cleanup(self) -> subprocess.CompletedProcess:
        return self.cli("--cleanup")

    def __enter__(self) -> "Dib":
        return self

    def __exit__(self, *exc) -> None:
        problems = self.leaks()
        if problems:
            self.cleanup()
            for line in processes_under(self.base):
                os.kill(int(line.split()[0]), signal.SIGKILL)
        if exc[0] is None:
            assert problems == [], f"the test left: {problems}"
            leaks.assert_clean(self.base)


def _strip(name: str) -> str:
    name = name[2:] if name.startswith("./") else name
    return "." if name in ("", ".") else name.rstrip("/")


def tar_members(path: Path) -> Dict[str, Tuple]:
    """An archive's members: path -> (type, mode, uid, gid, link target, content digest);
    not the times, which differ between any two builds without SOURCE_DATE_EPOCH."""
    out = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m).read() if m.isfile() else b""
            out[m.name] = (m.type, m.mode, m.uid, m.gid, m.linkname,
                           hashlib.sha256(data).hexdigest())
    return out
