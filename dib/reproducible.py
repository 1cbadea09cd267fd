"""Reproducible builds: with ``SOURCE_DATE_EPOCH`` set, the same inputs give the same bytes.

What this module owns (docs/reproducibility.md has the whole picture):

* :func:`derive_epoch`: ``--reproducible`` without ``SOURCE_DATE_EPOCH`` takes the epoch from
  the newest input, the element directories' last commit (or, outside git or with
  uncommitted changes there, their newest file);
* :func:`clamp_mtimes`: no timestamp in the final tree is newer than the epoch;
* :func:`ext_times_script` and :func:`fix_ext_times`: an ext2/3/4 filesystem written by
  ``mkfs -d`` gets its inodes' change and access times (which mkfs copies from the source
  files) set to the epoch with ``debugfs``, so the filesystem's bytes depend only on the
  tree's content, names, modes and mtimes;
* :func:`release_files`: the sha256 of the apt Release files the tree's packages came from
  (for the manifest: who has them can rebuild from the same mirror state).

Each fix for build-time randomness in the tree itself (logs, caches, ids) lives in the element
that causes it, not here.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from dib import cmd
from dib.errors import DibError

log = logging.getLogger("dib.reproducible")

#: where apt keeps the package lists (and the Release files they were checked against)
APT_LISTS = "var/lib/apt/lists"


# -- the epoch ---------------------------------------------------------------------------------

def _git_time(path: Path) -> Optional[int]:
    """The time of the last commit touching ``path``, or None if ``path`` is not in a git
    work tree, or has uncommitted changes (then its files' mtimes are the truth)."""
    if not (path / ".git").exists() and not any((p / ".git").exists() for p in path.parents):
        return None
    try:
        dirty = cmd.output(["git", "-C", path, "status", "--porcelain", "--", "."])
        if dirty.strip():
            return None
        stamp = cmd.output(["git", "-C", path, "log", "-1", "--format=%ct", "--", "."])
    except DibError:
        return None
    return int(stamp) if stamp.strip().isdigit() else None


def newest_mtime(path: Path) -> int:
    """The newest mtime (whole seconds) of anything below ``path``, ``path`` included; no
    symlink is followed, ``__pycache__`` is skipped."""
    newest = int(os.lstat(path).st_mtime)
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in dirnames + filenames:
            newest = max(newest, int(os.lstat(os.path.join(dirpath, name)).st_mtime))
    return newest


def derive_epoch(paths: Iterable[Path]) -> Tuple[int, str]:
    """The epoch ``--reproducible`` uses: the newest of each element directory's last commit
    time (or newest file mtime, outside git or when it has uncommitted changes). Returns the
    epoch and a phrase naming where it came from."""
    best: Optional[Tuple[int, str]] = None
    for path in paths:
        committed = _git_time(path)
        found = (committed, f"the last commit of {path}") if committed is not None else \
            (newest_mtime(path), f"the newest file in {path}")
        if best is None or found[0] > best[0]:
            best = found
    if best is None:
        raise DibError("--reproducible: no element to take the epoch from",
                       hint="set SOURCE_DATE_EPOCH")
    return best


# -- the tree ----------------------------------------------------------------------------------

def clamp_mtimes(root: Path, epoch: int) -> int:
    """Set the access and modification time of everything below ``root`` (``root`` too)
    whose mtime is newer than ``epoch`` to ``epoch``; symlinks themselves, never their
    targets. Returns how many were changed."""
    ns = epoch * 1_000_000_000
    changed = 0

    def clamp(path: str) -> None:
        nonlocal changed
        if os.lstat(path).st_mtime_ns > ns:
            os.utime(path, ns=(ns, ns), follow_symlinks=False)
            changed += 1

    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            clamp(os.path.join(dirpath, name))
    clamp(os.fspath(root))
    return changed


def release_files(tree: Path) -> Dict[str, str]:
    """{file name: sha256} of the (In)Release files in the tree's apt lists: the mirror
    state its packages were chosen from."""
    lists = tree / APT_LISTS
    out: Dict[str, str] = {}
    if not lists.is_dir():
        return out
    for path in sorted(lists.iterdir()):
        if path.name.endswith(("_InRelease", "_Release")) and path.is_file():
            out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# -- ext2/3/4 ----------------------------------------------------------------------------------

def fake_time_env(epoch: int) -> Dict[str, str]:
    """The environment that makes e2fsprogs use ``epoch`` for "now" (superblock times, new
    inodes' creation time) and mtools / mkfs.fat for their timestamps."""
    return {"E2FSPROGS_FAKE_TIME": str(epoch), "SOURCE_DATE_EPOCH": str(epoch)}


def used_inodes(dumpe2fs: str) -> List[int]:
    """The inodes in use, from ``dumpe2fs`` output: every inode of every group but those
    its "Free inodes:" line lists, and none of the reserved inodes below the first
    ordinary one except the root directory (2)."""
    groups = re.search(r"^Inodes per group:\s+(\d+)", dumpe2fs, re.M)
    if groups is None:
        raise DibError("dumpe2fs printed no \"Inodes per group\"")
    per_group = int(groups.group(1))
    first = re.search(r"^First inode:\s+(\d+)", dumpe2fs, re.M)
    first_ino = int(first.group(1)) if first else 11
    used: List[int] = [2]
    group = -1
    for line in dumpe2fs.splitlines():
        if re.match(r"Group \d+:", line):
            group += 1
            continue
        text = line.strip()
        if group < 0 or not text.startswith("Free inodes:"):
            continue
        free: Set[int] = set()
        for part in text[len("Free inodes:"):].split(","):
            part = part.strip()
            if not part:
                continue
            lo, _, hi = part.partition("-")
            free.update(range(int(lo), int(hi or lo) + 1))
        base = group * per_group
        used.extend(i for i in range(max(base + 1, first_ino), base + per_group + 1)
                    if i not in free)
    return used


def ext_times_script(inodes: Sequence[int], epoch: int) -> str:
    """debugfs commands setting the change and access time (and their nanoseconds) of
    ``inodes`` to ``epoch``: ``mkfs -d`` copies both from the source files, where they are
    the time of the build. (Creation times are mkfs's "now", ``E2FSPROGS_FAKE_TIME``; mtimes
    are the tree's, already clamped.)"""
    lines = []
    for ino in inodes:
        for name in ("ctime", "atime"):
            lines.append(f"set_inode_field <{ino}> {name} @{epoch}")
            lines.append(f"set_inode_field <{ino}> {name}_extra 0")
    return "\n".join(lines) + "\n"


def fix_ext_times(device: Path, epoch: int, scratch: Path) -> None:
    """Run :func:`ext_times_script` for every inode in use on the (unmounted) ext
    filesystem in ``device``."""
    inodes = used_inodes(cmd.output(["dumpe2fs", device]))
    script = scratch / "debugfs-times.cmds"
    script.write_text(ext_times_script(inodes, epoch))
    cmd.run(["debugfs", "-w", "-f", script, device], env=cmd.base_env(fake_time_env(epoch)),
            capture=True)
    script.unlink()
