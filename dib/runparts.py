"""Run a phase's hook scripts by diskimage-builder's run-parts rules: the one phase runner.

Before a phase's first script, ``environment.d`` is sourced once -- in the chroot for
in-chroot phases, on the host otherwise -- by a three-line bash program; what it exports is
the environment every script of the phase gets (as in dib, scripts see only exported
variables). Each script then runs as its own process, timed, its output streamed to the log.
The first failure stops the phase with a :class:`~dib.errors.HookFailed` naming element,
phase and script.

A :class:`Runner` serves both ways a phase runs: whole (the disk and final phases, root.d,
extra-data.d) and one script at a time (the tree's cached steps, :mod:`dib.steps`). The
``break=`` points (``before-<phase>``, ``after-<phase>``, ``after-error``) are taken in
:meth:`Runner.run` alone.
"""
from __future__ import annotations

import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Literal, Mapping, Optional, Sequence, Tuple

from dib import chroot, cmd
from dib.errors import CommandFailed, DibError, HookFailed
from dib.hooks import HooksTree, Script
from dib.log import Timings
from dib.phases import Phase

log = logging.getLogger("dib.hooks")

#: sources the given environment.d files and prints the resulting environment, NUL separated
SOURCE_ENV = 'set -eu -o pipefail; for f in "$@"; do source "$f"; done; exec env -0'
SHELL_INTERNAL = {"_", "SHLVL", "PWD", "OLDPWD"}

When = Literal["before", "after"]


@dataclass(frozen=True)
class Breaks:
    """The ``break=`` settings: where a debug shell opens, and which shell."""

    points: Tuple[str, ...] = ()
    shell: str = "bash"
    #: open in-chroot phases' shells on the host instead (``break_outside_target``)
    outside_target: bool = False
    #: where a host-side shell starts
    cwd: Optional[Path] = None

    def at(self, phase: Phase, when: When) -> bool:
        return f"{when}-{phase.short}" in self.points

    def around(self, phase: Phase) -> bool:
        """A shell opens before or after ``phase``."""
        return self.at(phase, "before") or self.at(phase, "after")


@dataclass(frozen=True)
class PhaseContext:
    """Where and how a phase's scripts run."""

    phase: Phase
    hooks: HooksTree
    env: Mapping[str, str]
    #: the chroot root for in-chroot phases
    root: Optional[Path] = None
    logfile: Optional[Path] = None
    breaks: Breaks = Breaks()


def _script_argv(ctx: PhaseContext, script: Script) -> List[str]:
    if ctx.phase.in_chroot:
        assert ctx.root is not None
        return chroot.chroot_argv(ctx.root, [f"/{chroot.IN_TARGET}/{script.phase}/{script.name}"])
    return [os.fspath(script.path)]


def phase_environment(ctx: PhaseContext) -> Dict[str, str]:
    """``ctx.env`` plus whatever the element set's environment.d files export."""
    files = ctx.hooks.environment_files()
    if not files:
        return dict(ctx.env)
    if ctx.phase.in_chroot:
        assert ctx.root is not None
        if not (ctx.root / "bin" / "bash").exists():
            raise DibError(f"{ctx.phase.name} runs in the chroot, but the tree has no /bin/bash",
                           hint="the operating-system element must install bash")
        paths = [f"/{chroot.IN_TARGET}/environment.d/{f}" for f in files]
        argv = chroot.chroot_argv(ctx.root, ["/bin/bash", "-c", SOURCE_ENV, "dib-env", *paths])
    else:
        paths = [os.fspath(ctx.hooks.root / "environment.d" / f) for f in files]
        argv = ["bash", "-c", SOURCE_ENV, "dib-env", *paths]
    try:
        out = cmd.run(argv, env=ctx.env, capture=True).stdout
    except CommandFailed as exc:
        raise DibError(f"sourcing environment.d for {ctx.phase.name} failed "
                       f"(exit status {exc.returncode})\n{exc.output_tail}",
                       hint="files: " + ", ".join(
                           f"{f} (element {ctx.hooks.origin.get(('environment.d', f), '?')})"
                           for f in files)) from None
    env: Dict[str, str] = {}
    for item in out.split("\0"):
        if "=" in item:
            k, v = item.split("=", 1)
            if k not in SHELL_INTERNAL:
                env[k] = v
    return env


def open_shell(ctx: PhaseContext, why: str) -> None:
    """A debug shell at a break point: in the chroot for in-chroot phases (unless
    ``break_outside_target``), else on the host; with the phase's environment."""
    breaks = ctx.breaks
    inside = ctx.phase.in_chroot and not breaks.outside_target
    log.warning("break (%s): starting %s %s; exit the shell to continue", why, breaks.shell,
                f"in the chroot {ctx.root}" if inside else f"in {breaks.cwd}")
    env = phase_environment(ctx)
    argv = shlex.split(breaks.shell)
    if inside:
        assert ctx.root is not None
        argv = chroot.chroot_argv(ctx.root, argv)
    cmd.run(argv, env=env, interactive=True, check=False, cwd=None if inside else breaks.cwd)


class Runner:
    """Runs the scripts of one phase on one root, whole or a few at a time.

    environment.d is sourced on the first script run, and that environment serves every
    later script of the phase run through this runner.
    """

    def __init__(self, ctx: PhaseContext, timings: Timings) -> None:
        self.ctx = ctx
        self.timings = timings
        self._env: Optional[Dict[str, str]] = None

    @property
    def phase(self) -> Phase:
        return self.ctx.phase

    def environment(self) -> Dict[str, str]:
        if self._env is None:
            self._env = phase_environment(self.ctx)
        return self._env

    def run(self, scripts: Optional[Sequence[Script]] = None, *, before: bool = True,
            after: bool = True) -> None:
        """Run ``scripts`` (default: the whole phase) in order, raising HookFailed on the
        first failure. ``before``/``after``: take the phase's ``before-``/``after-`` break
        points here (a caller running the phase in parts takes each in one part only)."""
        if scripts is None:
            scripts = self.ctx.hooks.scripts(self.phase.name)
            if not scripts:
                log.debug("%s: no scripts", self.phase.name)
        if before:
            self._break("before")
        if scripts:
            with self.timings.measure("phase", self.phase.name):
                env = self.environment()
                for script in scripts:
                    self._run_script(script, env)
        if after:
            self._break("after")

    def _break(self, when: When) -> None:
        if self.ctx.breaks.at(self.phase, when):
            open_shell(self.ctx, f"{when}-{self.phase.short}")

    def _run_script(self, script: Script, env: Mapping[str, str]) -> None:
        log.info("%s/%s  (element %s)", script.phase, script.name, script.element)
        with self.timings.measure("script", f"{script.phase}/{script.name}",
                                  element=script.element):
            result = cmd.run(_script_argv(self.ctx, script), env=env, check=False)
        if result.returncode != 0:
            if "after-error" in self.ctx.breaks.points:
                open_shell(self.ctx, f"after-error in {script.phase}/{script.name}")
            logfile = self.ctx.logfile
            raise HookFailed(script.element, script.phase, script.name, result.returncode,
                             result.tail, os.fspath(logfile) if logfile else None)
