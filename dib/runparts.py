"""Run one phase's hook scripts by diskimage-builder's run-parts rules.

Before a phase, ``environment.d`` is sourced once -- in the chroot for in-chroot phases, on
the host otherwise -- by a three-line bash program; what it exports is the environment every
script of the phase gets (as in dib, scripts see only exported variables). Each script then
runs as its own process, timed, its output streamed to the log. The first failure stops the
phase with a :class:`~dib.errors.HookFailed` naming element, phase and script.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence

from dib import chroot, cmd
from dib.errors import CommandFailed, DibError, HookFailed
from dib.hooks import HooksTree, Script
from dib.log import Timings
from dib.phases import Phase

log = logging.getLogger("dib.hooks")

#: sources the given environment.d files and prints the resulting environment, NUL separated
SOURCE_ENV = 'set -eu -o pipefail; for f in "$@"; do source "$f"; done; exec env -0'
SHELL_INTERNAL = {"_", "SHLVL", "PWD", "OLDPWD"}


@dataclass(frozen=True)
class PhaseContext:
    """Where and how a phase's scripts run."""

    phase: Phase
    hooks: HooksTree
    env: Mapping[str, str]
    #: the chroot root for in-chroot phases
    root: Optional[Path] = None
    logfile: Optional[Path] = None
    break_points: Sequence[str] = ()


def _script_argv(ctx: PhaseContext, script: Script) -> list:
    if ctx.phase.in_chroot:
        assert ctx.root is not None
        return chroot.chroot_argv(ctx.root, [f"/{chroot.IN_TARGET}/{script.phase}/{script.name}"])
    return [script.path]


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


def run_script(ctx: PhaseContext, script: Script, env: Mapping[str, str], timings: Timings,
               open_shell: Callable[[str], None]) -> None:
    """Run one hook script; raise HookFailed (after an ``after-error`` shell) if it fails."""
    log.info("%s/%s  (element %s)", script.phase, script.name, script.element)
    with timings.measure("script", f"{script.phase}/{script.name}", element=script.element):
        result = cmd.run(_script_argv(ctx, script), env=env, check=False)
    if result.returncode != 0:
        if "after-error" in ctx.break_points:
            open_shell(f"after-error in {script.phase}/{script.name}")
        raise HookFailed(script.element, script.phase, script.name, result.returncode,
                         result.tail, os.fspath(ctx.logfile) if ctx.logfile else None)


def run_phase(ctx: PhaseContext, timings: Timings,
              open_shell: Callable[[str], None]) -> None:
    """Run every script of ``ctx.phase``; raise HookFailed on the first failure."""
    scripts = ctx.hooks.scripts(ctx.phase.name)
    if not scripts:
        log.debug("%s: no scripts", ctx.phase.name)
        return
    env = phase_environment(ctx)
    for script in scripts:
        run_script(ctx, script, env, timings, open_shell)
