"""The phase table and the one phase runner, through a fake command runner (no root).

A hooks tree with a few host-side scripts in tmp_path; the fake runner records every command
(a script, the environment.d sourcing, a break shell), so the tests check what runs in which
order, where break points open a shell, and that a phase run in parts (the tree's one-script
steps) behaves like the phase run whole.
"""
from __future__ import annotations

from pathlib import Path
from typing import AbstractSet, Any, List, Optional, Sequence

import pytest

from dib import cmd, phases
from dib.errors import HookFailed
from dib.hooks import HooksTree
from dib.log import Timings
from dib.runparts import SOURCE_ENV, Breaks, PhaseContext, Runner

SHELL = "fake-shell"


class FakeRunner:
    """Records commands; scripts named in ``fail`` exit 3; the sourcing prints ``env``."""

    def __init__(self, fail: AbstractSet[str] = frozenset(), env: str = "FROM_ENV_D=1\0") -> None:
        self.calls: List[List[str]] = []
        self.fail = fail
        self.env = env

    def __call__(self, argv: Sequence[str], **kwargs: Any) -> cmd.Result:
        argv = list(argv)
        self.calls.append(argv)
        if SOURCE_ENV in argv:
            return cmd.Result(tuple(argv), 0, self.env, "")
        code = 3 if Path(argv[0]).name in self.fail else 0
        return cmd.Result(tuple(argv), code, "", "boom" if code else "")

    def names(self) -> List[str]:
        """Each call shortened: a script's name, ``env`` for the sourcing, the shell."""
        return ["env" if SOURCE_ENV in c else Path(c[0]).name for c in self.calls]


def _hooks(tmp_path: Path, phase: str, names: Sequence[str], env_d: bool = False) -> HooksTree:
    d = tmp_path / "hooks" / phase
    d.mkdir(parents=True)
    for n in names:
        (d / n).write_text("#!/bin/sh\n")
        (d / n).chmod(0o755)
    if env_d:
        (tmp_path / "hooks" / "environment.d").mkdir()
        (tmp_path / "hooks" / "environment.d" / "10-x.bash").write_text("export X=1\n")
    return HooksTree(tmp_path / "hooks", {(phase, n): "el" for n in names})


def _runner(hooks: HooksTree, points: Sequence[str] = (), phase: str = "post-root.d",
            timings: Optional[Timings] = None) -> Runner:
    ctx = PhaseContext(phases.BY_NAME[phase], hooks, {"PATH": "/usr/bin"},
                       breaks=Breaks(tuple(points), SHELL, False, hooks.root))
    return Runner(ctx, timings or Timings())


def test_phase_table_stages_cover_every_phase_in_order() -> None:
    staged = phases.of_stage(*phases.STAGES)
    assert staged == phases.PHASES
    assert [p.name for p in phases.of_stage("disk")] == ["block-device.d"]
    # only tree phases are cut into one-script steps; root.d and extra-data.d are not
    assert {p.stage for p in phases.PHASES if p.script_steps} == {"tree"}
    assert not phases.BY_NAME["root.d"].script_steps
    assert not phases.BY_NAME["extra-data.d"].script_steps


def test_whole_phase_runs_scripts_in_order_between_its_break_shells(tmp_path: Path) -> None:
    hooks = _hooks(tmp_path, "post-root.d", ["20-b", "10-a"])
    fake = FakeRunner()
    with cmd.use_runner(fake):
        _runner(hooks, ["before-post-root", "after-post-root"]).run()
    assert fake.names() == [SHELL, "10-a", "20-b", SHELL]


def test_no_break_point_no_shell(tmp_path: Path) -> None:
    hooks = _hooks(tmp_path, "post-root.d", ["10-a"])
    fake = FakeRunner()
    with cmd.use_runner(fake):
        # break points of other phases do not open here
        _runner(hooks, ["before-install", "after-root"]).run()
    assert fake.names() == ["10-a"]


def test_phase_in_parts_runs_like_the_whole_phase(tmp_path: Path) -> None:
    hooks = _hooks(tmp_path, "post-root.d", ["10-a", "20-b", "30-c"], env_d=True)
    points = ["before-post-root", "after-post-root"]
    whole, parts = FakeRunner(), FakeRunner()
    with cmd.use_runner(whole):
        _runner(hooks, points).run()
    scripts = hooks.scripts("post-root.d")
    runner = _runner(hooks, points)
    with cmd.use_runner(parts):
        for i, s in enumerate(scripts):
            runner.run((s,), before=i == 0, after=i == len(scripts) - 1)
    assert parts.names() == whole.names()
    # environment.d sourced once for the scripts (and once more for each shell)
    assert whole.names() == ["env", SHELL, "env", "10-a", "20-b", "30-c", "env", SHELL]


def test_scripts_get_the_environment_d_result(tmp_path: Path) -> None:
    hooks = _hooks(tmp_path, "post-root.d", ["10-a"], env_d=True)
    seen: List[Any] = []

    def runner(argv: Sequence[str], **kwargs: Any) -> cmd.Result:
        seen.append(kwargs["env"])
        out = "FROM_ENV_D=yes\0" if SOURCE_ENV in argv else ""
        return cmd.Result(tuple(argv), 0, out, "")

    with cmd.use_runner(runner):
        _runner(hooks).run()
    assert seen[0]["PATH"] == "/usr/bin"          # the sourcing starts from the phase env
    assert seen[1] == {"FROM_ENV_D": "yes"}       # the script gets what it exported


@pytest.mark.parametrize("after_error", [True, False])
def test_failure_stops_the_phase_after_error_shell_only_when_asked(
        tmp_path: Path, after_error: bool) -> None:
    hooks = _hooks(tmp_path, "post-root.d", ["10-a", "20-bad", "30-c"])
    fake = FakeRunner(fail={"20-bad"})
    points = ["after-post-root"] + (["after-error"] if after_error else [])
    with cmd.use_runner(fake), pytest.raises(HookFailed) as err:
        _runner(hooks, points).run()
    assert (err.value.element, err.value.phase, err.value.script) == \
        ("el", "post-root.d", "20-bad")
    assert err.value.returncode == 3
    # the after- point of a failed phase does not open
    assert fake.names() == ["10-a", "20-bad"] + ([SHELL] if after_error else [])


def test_phase_timing_recorded_only_when_scripts_ran(tmp_path: Path) -> None:
    hooks = _hooks(tmp_path, "post-root.d", ["10-a"])
    empty = HooksTree(tmp_path / "hooks", {})
    timings = Timings()
    with cmd.use_runner(FakeRunner()):
        _runner(hooks, timings=timings).run()
        _runner(empty, phase="cleanup.d", timings=timings).run()
    assert [n for n, _ in timings.totals("phase")] == ["post-root.d"]
    assert [n for n, _, _ in timings.of("script")] == ["post-root.d/10-a"]
