"""Steps that run beside the steps after them (docs/caching.md, "Steps beside").

A tree step that an element declares in ``layer-inputs.yaml`` (:mod:`dib.content_keys`) with
``beside: true`` -- the steps after it do not read what it writes -- and that runs in the
chroot does not hold up the steps after it on a cache miss: it runs in a
thread, in an overlay branch of its own (the layers so far below, its own upper directory,
its own mount point and chroot mounts), while the build goes on. Its layer takes its own
place in the stack -- the order is the order in sequence -- when the build first needs it:

* when a later step changed a path it declares (``reads`` or ``writes``): before that step's
  layer is kept, the branch joins and the later step runs again on top of it (a later step
  taken from the cache is only put above it);
* at the end of the tree, unless a disk follows that can be sized without it;
* on a disk, when it declares ``room-mib`` (or ``--image-size`` fixes the size): after the
  tree is copied into the disk's filesystems, its upper directory is laid over them.

Such a step's layer is never measured for the disk's size: ``room-mib`` counts in its place,
whether it ran, ran beside, or came from the cache, so every way of building makes the same
disk. What cannot be checked is a later step *reading* what it writes; that is the promise
an element makes with ``beside: true``. What it changes outside its declaration is caught
when it joins: the build then starts again with it in sequence (the steps before it come
from the cache), and a failure in the branch stops the build at the next step as a failure
in sequence would.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, FrozenSet, List, Mapping, Optional, Tuple, Type

from dib import cmd, content_keys, layers, mounts
from dib import log as dlog
from dib.context import BuildContext
from dib.layers import StepRecord
from dib.tree import LayeredTree

log = logging.getLogger("dib.build")

#: what a branch runs: its own view of the build (own timings) and its mount point
Body = Callable[[BuildContext, Path], None]


class RunInSequence(Exception):
    """A step that ran beside others changed paths it did not declare: the build starts again
    with ``step`` in sequence."""

    def __init__(self, step: str) -> None:
        super().__init__(step)
        self.step = step


@dataclass
class _Branch:
    step_id: str
    decl: content_keys.Declaration
    reading: content_keys.Reading
    #: the key and inputs its layer is kept under, and the chain's (if it strays)
    key: str
    inputs: Mapping[str, Any]
    chained: Mapping[str, Any]
    changed: Tuple[str, ...]
    upper: Path
    mnt: Path
    #: its place in the layer stack and in the report's steps
    layer_index: int
    step_index: int
    timings: dlog.Timings
    stack: contextlib.ExitStack
    started: float = field(default_factory=time.monotonic)
    ended: float = 0.0
    thread: Optional[threading.Thread] = None
    #: set when the thread has unwound (a signal in Thread.join can make a live thread look
    #: finished, so this is what the main thread waits for)
    done: threading.Event = field(default_factory=threading.Event)
    error: Optional[BaseException] = None
    #: the steps that ran beside it (for the log)
    beside: List[str] = field(default_factory=list)


class Beside:
    """The build's branch (at most one at a time) and the disk's room for declared steps.

    A context manager: leaving it normally joins what is still out; leaving it on an error
    stops the branch (its processes killed, its mounts undone) before the caller unwinds."""

    def __init__(self, b: BuildContext, tree: LayeredTree,
                 sequential: FrozenSet[str] = frozenset()) -> None:
        self.b = b
        self.tree = tree
        #: steps that strayed in an earlier attempt of this build: in sequence now
        self.sequential = sequential
        self.branch: Optional[_Branch] = None
        #: layers of steps with ``room-mib`` in the tree (not measured for the disk) ...
        self.room_layers: List[Path] = []
        #: ... and what counts for them instead
        self.room_bytes = 0
        self._n = 0

    def __enter__(self) -> "Beside":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        if exc_type is None:
            self.join()
        else:
            self.cancel()

    # -- deciding ----------------------------------------------------------------------

    def allowed(self, decl: content_keys.Declaration, in_chroot: bool) -> bool:
        """May the declared step run beside the steps after it?"""
        cfg, step_id = self.b.cfg, decl.step
        if not (decl.beside and cfg.steps_beside and in_chroot) or cfg.break_points \
                or step_id in self.sequential:
            return False
        last = self.b.store.last_inputs(step_id)
        if last and "prev" in last:
            log.info("%s changed undeclared paths when it last ran: it runs in sequence",
                     step_id)
            return False
        return True

    def note_room(self, decl: content_keys.Declaration, layer: Optional[Path]) -> None:
        """A declared step is done (``layer`` in the tree) or out (None): count its room."""
        if decl.room_mib is None:
            return
        self.room_bytes += decl.room_mib << 20
        if layer is not None:
            self.room_layers.append(layer)

    @property
    def waits_for_disk(self) -> bool:
        """The branch out can join after the tree is copied into the disk."""
        br = self.branch
        return br is not None and self.b.cfg.needs_block_device and (
            br.decl.room_mib is not None or self.b.cfg.image_size_gib is not None)

    # -- running -----------------------------------------------------------------------

    def start(self, step_id: str, decl: content_keys.Declaration,
              reading: content_keys.Reading, key: str, inputs: Mapping[str, Any],
              chained: Mapping[str, Any], changed: Tuple[str, ...], body: Body) -> None:
        """Run ``body`` for ``step_id`` in a branch on the tree so far."""
        self.join()  # one branch at a time
        b = self.b
        stack = contextlib.ExitStack()
        try:
            upper = stack.enter_context(b.store.new_upper(step_id))
            self._n += 1
            mnt = b.wd.base / f"beside-{self._n}"
            mnt.mkdir()
            stack.callback(mnt.rmdir)
        except BaseException:
            stack.close()
            raise
        br = _Branch(step_id, decl, reading, key, inputs, chained, changed, upper, mnt,
                     len(self.tree.layers), len(b.steps), dlog.Timings(), stack)
        own = dataclasses.replace(b, timings=br.timings)
        below, work = list(self.tree.layers), b.store.work_dir(upper)

        def run() -> None:
            try:
                with self.tree.write_step(upper, work, at=mnt, below=below), own.chroot(mnt):
                    body(own, mnt)
            except BaseException as exc:  # handed to the main thread when it joins
                br.error = exc
            finally:
                br.ended = time.monotonic()
                br.done.set()

        log.info("%s (element %s) runs beside the steps after it", step_id, decl.element)
        self.note_room(decl, None)
        br.thread = threading.Thread(target=run, name=f"dib-beside-{self._n}", daemon=True)
        self.branch = br
        br.thread.start()

    def poll(self) -> None:
        """Between steps: a branch that failed stops the build now."""
        br = self.branch
        if br is not None and br.done.is_set() and br.error is not None:
            self.join()

    def collides(self, step_id: str, changes: Path, *, again: bool) -> bool:
        """A later step's changes (its upper directory, or its cached layer) are about to be
        kept: if they touch what the branch declares, the branch joins first. Returns True
        then (``again``: the step runs again, on top of the branch's layer)."""
        br = self.branch
        if br is None:
            return False
        self.poll()
        hits = content_keys.touching(changes, br.reading.allowed)
        if not hits:
            br.beside.append(step_id)
            return False
        log.warning("%s changed %s, which %s (element %s, running beside it) declares%s",
                    step_id, ", ".join(hits), br.step_id, br.decl.element,
                    ": it runs again after that step" if again else
                    ": its cached layer goes above that step's")
        self.join()
        return True

    # -- joining -----------------------------------------------------------------------

    def join(self) -> None:
        """The branch's layer into the tree, at its own place."""
        br = self.branch
        if br is None:
            return
        layer = self._finish(br)
        self.tree.insert_layer(br.layer_index, layer)
        if br.decl.room_mib is not None:
            self.room_layers.append(layer)

    def join_onto(self, root: Path) -> None:
        """The branch's layer laid over ``root``, the disk's filesystems with the tree copied
        in (the layers below and above it: none of them touches its paths)."""
        br = self.branch
        if br is None:
            return
        layer = self._finish(br)
        with self.b.timings.measure("phase", "(steps beside onto the disk)"):
            lay_onto(layer, root, self.b.wd.base)
        used = layers.disk_usage(layer)
        if br.decl.room_mib is not None and used > br.decl.room_mib << 20:
            log.warning("%s (element %s) added %d MiB, more than its room-mib: %d; the disk's "
                        "margin took the rest (raise room-mib in %s)", br.step_id,
                        br.decl.element, used >> 20, br.decl.room_mib, content_keys.FILE_NAME)

    def _finish(self, br: _Branch) -> Path:
        """Wait for the branch; keep its layer (raising its error, or RunInSequence)."""
        b = self.b
        self.branch = None
        try:
            if not br.done.is_set():
                with b.timings.measure("phase", "(waiting for a step beside)"):
                    try:
                        br.done.wait()
                    except BaseException:  # a signal while waiting: stop it, then unwind
                        _stop(br)
                        raise
            b.timings.rows.extend(br.timings.rows)
            if br.error is not None:
                raise br.error
            key, inputs = br.key, br.inputs
            stray = content_keys.undeclared(br.upper, br.reading.allowed)
            if stray:
                log.warning("%s (element %s) changed %s, which its %s does not declare; the "
                            "build starts again with it in sequence", br.step_id,
                            br.decl.element, ", ".join(stray), content_keys.FILE_NAME)
                # kept under the chain's key, as in sequence: the next attempt reuses it
                b.store.commit(layers.step_key(br.chained), br.upper, br.step_id, br.chained)
                raise RunInSequence(br.step_id)
            layer = b.store.commit(key, br.upper, br.step_id, inputs)
        finally:
            br.stack.close()
        remote = ""
        if b.remote is not None:
            remote = "pushed" if b.remote.push(key, layer, br.step_id) else "push failed"
        b.steps.insert(br.step_index, StepRecord(
            br.step_id, key, False, round(br.ended - br.started, 3), br.changed, remote))
        if br.beside:
            log.info("%s ran beside %s", br.step_id, ", ".join(br.beside))
        return layer

    def cancel(self) -> None:
        """Stop the branch: kill what runs in it until its thread has unwound its mounts."""
        br = self.branch
        if br is None:
            return
        self.branch = None
        _stop(br)
        br.stack.close()


def _stop(br: _Branch) -> None:
    """Kill what runs in the branch until its thread has unwound its mounts."""
    while not br.done.is_set():
        mounts.kill_processes_in(br.mnt, grace=1.0)
        br.done.wait(timeout=0.2)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def lay_onto(layer: Path, root: Path, scratch: Path) -> None:
    """What an overlay upper directory ``layer`` changed, applied to the plain copy ``root``
    of the layers below it: whiteouts delete, opaque directories and entries of another
    type replace, everything else is copied over (through a read-only overlay of the layer
    alone, which shows neither whiteouts nor overlayfs's own attributes)."""
    for dirpath, dirnames, filenames in os.walk(layer):
        rel_dir = Path(dirpath).relative_to(layer)
        for name in list(dirnames) + filenames:
            src, dest = Path(dirpath, name), root / rel_dir / name
            st = src.lstat()
            if not (dest.exists() or dest.is_symlink()):
                continue
            whiteout = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
            is_dir = stat.S_ISDIR(st.st_mode)
            dest_dir = dest.is_dir() and not dest.is_symlink()
            if whiteout or is_dir != dest_dir or (is_dir and content_keys.is_opaque(str(src))):
                _remove(dest)
    empty = scratch / "beside-empty"
    view = scratch / "beside-view"
    empty.mkdir(exist_ok=True)
    view.mkdir(exist_ok=True)
    with mounts.mount_overlay([f"lowerdir={layer}:{empty}"], view, scratch):
        cmd.run(["cp", "-a", "--remove-destination", "--sparse=always", f"{view}/.",
                 f"{root}/"], tail=5)
    view.rmdir()
    empty.rmdir()
