"""Mount primitives as context managers, and the helpers that make undo reliable.

Every mount is entered on the caller's ExitStack; leaving it unmounts. An unmount that fails
because the target is busy first kills the processes still using the tree, then tries again,
and only as a last resort detaches lazily (logged as a warning) -- never a sleep-and-retry loop.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import ContextManager, Iterator, List, Optional, Sequence

from dib import cmd
from dib.errors import CommandFailed, DibError

log = logging.getLogger("dib.mounts")


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal
    return (field.replace("\\040", " ").replace("\\011", "\t")
            .replace("\\012", "\n").replace("\\134", "\\"))


def mounts_below(path: Path) -> List[Path]:
    """Mount points at or below ``path`` (from /proc/self/mountinfo), deepest first."""
    base = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = _unescape(line.split()[4])
            if target == base or target.startswith(base.rstrip("/") + "/"):
                found.append(Path(target))
    # deepest (and, among equals, latest mounted) first
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def processes_in(root: Path) -> List[int]:
    """PIDs whose root directory or cwd is at or below ``root`` (e.g. left in a chroot)."""
    base = os.path.realpath(root).rstrip("/") + "/"
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        for link in ("root", "cwd"):
            try:
                target = os.readlink(f"/proc/{entry}/{link}")
            except OSError:
                continue
            if (target.rstrip("/") + "/").startswith(base):
                pids.append(int(entry))
                break
    return pids


def kill_processes_in(root: Path, grace: float = 3.0) -> List[int]:
    """TERM, then KILL, every process living in ``root``. Returns the PIDs found."""
    pids = processes_in(root)
    if not pids:
        return []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                log.warning("killing %s (pid %d) still running in %s",
                            process_name(pid), pid, root)
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and processes_in(root):
            time.sleep(0.1)
        if not processes_in(root):
            break
    return pids


def process_name(pid: int) -> str:
    """The command name of ``pid`` (``?`` once it is gone)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def umount(target: Path) -> None:
    """Unmount ``target``; on EBUSY kill its users and retry; lazy unmount as last resort."""
    try:
        cmd.run(["umount", target])
        return
    except CommandFailed as first:
        log.debug("umount %s failed: %s", target, first.output_tail)
    killed = kill_processes_in(target)
    try:
        cmd.run(["umount", target])
        return
    except CommandFailed as second:
        log.warning("umount %s still failing after killing %s; detaching lazily: %s",
                    target, killed or "nothing", second.output_tail.strip())
    cmd.run(["umount", "--lazy", target])


@contextlib.contextmanager
def mounted(source: str, target: Path, *, fstype: Optional[str] = None,
            options: Sequence[str] = (), bind: bool = False) -> Iterator[Path]:
    """Mount for the duration of the context; the undo is armed as soon as mount returns."""
    argv: List[str] = ["mount"]
    if bind:
        argv.append("--bind")
    if fstype:
        argv += ["-t", fstype]
    if options:
        argv += ["-o", ",".join(options)]
    argv += [source, os.fspath(target)]
    cmd.run(argv)
    try:
        yield target
    finally:
        umount(target)


def overlay(lowers: Sequence[Path], upper: Path, work: Path,
            target: Path) -> ContextManager[Path]:
    """An overlayfs at ``target``: ``lowers`` (top first) under the writable ``upper``.

    Layer paths are given relative to their common parent (the mount runs there), which keeps
    the option string short enough for many layers.
    """
    parent = upper.parent
    for p in (*lowers, work):
        if p.parent != parent:
            raise DibError(f"overlay layers must share a directory: {p} is not in {parent}")
    opts = [f"lowerdir={':'.join(p.name for p in lowers)}", f"upperdir={upper.name}",
            f"workdir={work.name}"]
    return mount_overlay(opts, target, parent)


@contextlib.contextmanager
def mount_overlay(opts: Sequence[str], target: Path, cwd: Path) -> Iterator[Path]:
    cmd.run(["mount", "-t", "overlay", "overlay", "-o", ",".join(opts),
             os.path.realpath(target)], cwd=cwd)
    try:
        yield target
    finally:
        umount(target)


def unmount_all_below(path: Path) -> List[Path]:
    """Unmount everything at or below ``path``, deepest first (for stale-state recovery)."""
    done = []
    for target in mounts_below(path):
        umount(target)
        done.append(target)
    return done
