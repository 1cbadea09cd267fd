"""Image chroot (install.d): the pinned Python packages Docklet needs (pip --target into
DOCKLET_PYLIB, from local or cached wheels) and the compatibility shim."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence, Tuple

from .base import DockletError, log, tail

SITECUSTOMIZE = "sitecustomize.py"


def _pin_names(pins: Sequence[str]) -> List[Tuple[str, str]]:
    out = []
    for pin in pins:
        m = re.match(r"^([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==([A-Za-z0-9.*+!_-]+)$", pin)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def install_pylib(pylib: Path, pins: Sequence[str], *, shim: Path, wheel_cache: Path,
                  wheelhouse: str = "", index_url: str = "", offline: bool = False,
                  cert: str = "", python: str = "python3") -> None:
    """pip --target the pins into ``pylib`` from local wheels (``wheelhouse``, then the wheel
    cache); download into the cache only what is missing (never when ``offline``)."""
    if pylib.exists():
        shutil.rmtree(pylib)
    pylib.mkdir(parents=True)
    shutil.copyfile(shim, pylib / SITECUSTOMIZE)
    if sys.version_info >= (3, 13):
        # httprest.py imports cgi (unused), which Python 3.13 removed
        (pylib / "cgi.py").write_text("# dib docklet element: placeholder for the removed cgi "
                                      "module (docklet imports it, never uses it)\n")
    if not pins:
        log("DOCKLET_PY_PINS is empty: no pinned packages (the distribution's versions are "
            "used, which docklet may not work with)")
        return
    wheel_cache.mkdir(parents=True, exist_ok=True)
    links = [d for d in (wheelhouse, os.fspath(wheel_cache)) if d]
    # the build host's pip settings pass into the chroot, where their paths do not exist
    env = {k: v for k, v in os.environ.items()
           if k not in ("PIP_CERT", "PIP_FIND_LINKS", "PIP_CONFIG_FILE", "PIP_TARGET",
                        "PIP_PREFIX", "PIP_USER", "PYTHONPATH", "REQUESTS_CA_BUNDLE",
                        "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")}
    if cert:
        # pip's requests prefers REQUESTS_CA_BUNDLE over --cert/PIP_CERT: set both
        env.update(PIP_CERT=cert, REQUESTS_CA_BUNDLE=cert, SSL_CERT_FILE=cert)
        log(f"pip trusts the build host's CA bundle ({cert})")
    pip = [python, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    local = [*pip, "install", "--no-deps", "--no-index", "--no-cache-dir", "--no-compile",
             "--target", os.fspath(pylib)]
    for d in links:
        local += ["--find-links", d]
    proc = subprocess.run([*local, *pins], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        if offline:
            raise DockletError("offline build: the pinned Python packages are not all in "
                               f"{' or '.join(links)}:\n    {tail(proc.stderr)}",
                               hint="build once online (the wheels are cached), or give "
                                    "DOCKLET_PIP_WHEELHOUSE")
        log(f"downloading {' '.join(pins)} into the wheel cache {wheel_cache}")
        dl = [*pip, "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
              "--dest", os.fspath(wheel_cache)]
        if index_url:
            dl += ["--index-url", index_url]
        got = subprocess.run([*dl, *pins], capture_output=True, text=True, env=env)
        if got.returncode != 0:
            raise DockletError(f"cannot download {' '.join(pins)}:\n    {tail(got.stderr)}",
                               hint="the build's chroot needs the Python package index (or "
                                    "DOCKLET_PIP_INDEX_URL, DOCKLET_PIP_WHEELHOUSE)")
        shutil.rmtree(pylib)
        pylib.mkdir(parents=True)
        shutil.copyfile(shim, pylib / SITECUSTOMIZE)
        proc = subprocess.run([*local, *pins], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise DockletError(f"pip install --target {pylib} failed:\n    "
                               f"{tail(proc.stderr)}")
    shutil.rmtree(pylib / "bin", ignore_errors=True)
    for name, want in _pin_names(pins):
        found = _installed_version(pylib, name)
        if found != want:
            raise DockletError(f"{name} in {pylib} is {found or 'missing'}, not {want}")
    log(f"pinned into {pylib}: {' '.join(pins)}")


def _installed_version(pylib: Path, name: str) -> str:
    norm = re.sub(r"[-_.]+", "_", name).lower()
    for meta in pylib.glob("*.dist-info/METADATA"):
        stem = meta.parent.name[:-len(".dist-info")]
        dist = re.sub(r"[-_.]+", "_", stem.rsplit("-", 1)[0]).lower()
        if dist == norm:
            for line in meta.read_text(errors="replace").splitlines():
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
    return ""
