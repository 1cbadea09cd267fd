"""Leak checks: what a test mounted or attached must be gone when it ends."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List


def mounts_under(path: Path) -> List[str]:
    base = os.path.realpath(path).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = line.split()[4].replace("\\040", " ")
            if (target.rstrip("/") + "/").startswith(base):
                found.append(target)
    return found


def loops_under(path: Path) -> List[str]:
    base = os.path.realpath(path).rstrip("/") + "/"
    found = []
    for dev in Path("/sys/block").glob("loop*"):
        try:
            backing = (dev / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing.startswith(base):
            found.append(f"/dev/{dev.name} -> {backing}")
    return found


def assert_clean(path: Path) -> None:
    """Nothing mounted below ``path`` and no loop device backed by a file below it."""
    assert mounts_under(path) == [], f"leaked mounts: {mounts_under(path)}"
    assert loops_under(path) == [], f"leaked loop devices: {loops_under(path)}"
