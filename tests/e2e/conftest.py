"""e2e fixtures: real builds from the Debian mirror, each image built once per session.

Builds share one image cache (``DIB_E2E_CACHE``, default /var/tmp/dib-e2e-cache) that lives
across sessions, so a second run (CI's) is warm: the bootstrap tarball, the .deb cache and
the apt lists come from it. tests/conftest.py skips this directory without root or mirror.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import pytest

from tests.lib.builds import TEST_ELEMENTS, build_env
from tests.lib.leaks import assert_clean

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("DIB_E2E_CACHE", "/var/tmp/dib-e2e-cache"))


@dataclass
class Built:
    """One finished (or failed) build."""

    name: str
    proc: subprocess.CompletedProcess
    seconds: float
    out: Path

    @property
    def ok(self) -> bool:
        return self.proc.returncode == 0

    @property
    def tar(self) -> Path:
        return self.out / f"{self.name}.tar"

    @property
    def log(self) -> str:
        f = self.out / f"{self.name}.d" / "build.log"
        return f.read_text(errors="replace") if f.exists() else ""

    def tree(self) -> Path:
        """The image extracted (once) next to it."""
        dest = self.out / f"{self.name}.tree"
        if not dest.exists():
            dest.mkdir()
            with tarfile.open(self.tar) as t:
                t.extractall(dest, numeric_owner=True)
        return dest


def _supports_no_cache() -> bool:
    out = subprocess.run([sys.executable, str(ROOT / "bin" / "disk-image-create"), "--help"],
                         capture_output=True, text=True).stdout
    return "--no-cache" in out


class Builder:
    """Runs disk-image-create. The engine's layer cache is bypassed (``--no-cache``) so
    that every build really runs the elements' steps -- bootstrap, apt, initramfs -- whose
    own caches (bootstrap tarball, .deb files, package lists) are what these tests check."""

    def __init__(self, base: Path, cache: Path) -> None:
        self.base = base
        self.cache = cache
        self.no_cache = ["--no-cache"] if _supports_no_cache() else []

    def env(self, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        return build_env(self.base / "tmp", [TEST_ELEMENTS],
                         {"OVERWRITE_OLD_IMAGE": "1", **(extra or {})})

    def build(self, name: str, elements: Sequence[str], *, args: Sequence[str] = (),
              cache: Optional[Path] = None, env: Optional[Dict[str, str]] = None,
              netns: bool = False, timeout: float = 1200) -> Built:
        out = self.base / "out"
        out.mkdir(parents=True, exist_ok=True)
        (self.base / "tmp").mkdir(exist_ok=True)
        argv = [sys.executable, str(ROOT / "bin" / "disk-image-create"), "-t", "tar",
                "-o", str(out / name), "--image-cache", str(cache or self.cache), *self.no_cache,
                *args, *elements]
        if netns:
            argv = ["unshare", "--net", *argv]
        started = time.monotonic()
        proc = subprocess.run(argv, env=self.env(env), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
        built = Built(name, proc, time.monotonic() - started, out)
        assert_clean(self.base)
        return built


@pytest.fixture(scope="session")
def e2e_cache() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    return CACHE


@pytest.fixture(scope="module")
def scratch(request, tmp_path_factory) -> Iterator[Callable[[str], Path]]:
    """``mktemp`` for a module's builds. What it made is deleted when the module's tests are
    done (images take GiBs), unless a test has failed: pytest then keeps the session's
    directories to look at (tmp_path_retention_policy in setup.cfg)."""
    made: List[Path] = []

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]
    yield mktemp
    if request.session.testsfailed == 0:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def builder(scratch, e2e_cache) -> Builder:
    return Builder(scratch("e2e-builds"), e2e_cache)
