"""Capability probes: root-only tests skip by what the machine can do, not by uid."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True)


@functools.lru_cache(maxsize=None)
def can_mount() -> bool:
    """Can we mount a tmpfs (and unmount it again)?"""
    if shutil.which("mount") is None:
        return False
    with tempfile.TemporaryDirectory() as d:
        if _run("mount", "-t", "tmpfs", "tmpfs", d).returncode != 0:
            return False
        _run("umount", d)
        return True


@functools.lru_cache(maxsize=None)
def can_loop() -> bool:
    """Can we attach (and detach) a loop device?"""
    if shutil.which("losetup") is None:
        return False
    with tempfile.NamedTemporaryFile() as f:
        f.truncate(1 << 20)
        r = _run("losetup", "--show", "-f", f.name)
        if r.returncode != 0:
            return False
        _run("losetup", "-d", r.stdout.strip())
        return True


@functools.lru_cache(maxsize=None)
def can_chroot() -> bool:
    return can_mount() and shutil.which("chroot") is not None and os.path.exists("/bin/busybox")


def host_mirror() -> str:
    """The Debian mirror from the host's apt sources (or DIB_DISTRIBUTION_MIRROR)."""
    if os.environ.get("DIB_DISTRIBUTION_MIRROR"):
        return os.environ["DIB_DISTRIBUTION_MIRROR"]
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in f.read_text().splitlines():
            if line.startswith("URIs:"):
                uri = line.split()[1]
                if "security" not in uri:
                    return uri
    return ""


@functools.lru_cache(maxsize=None)
def can_reach_mirror() -> bool:
    """Does the Debian mirror answer? (e2e tests need it.)"""
    mirror = host_mirror()
    if not mirror:
        return False
    url = urllib.parse.urljoin(mirror.rstrip("/") + "/", "dists/bookworm/Release")
    r = _run("python3", "-c", f"import urllib.request;urllib.request.urlopen({url!r}, timeout=10)")
    return r.returncode == 0
