"""The tree's step cache (dib.steps): a step runs on a miss, is reused on a hit, says which
input changed, and a host step's writes into the hooks tree come back with its layer.

No root: mounts go to the fake command runner, the layer store is a directory in tmp_path.
This drives ``steps._step`` with a stand-in for the BuildContext (only ``store``, ``wd``,
``steps``, ``chroot`` and ``remote``), so it stays small: adapt the stand-in if the context's shape
changes, not the assertions.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, List

import pytest

from dib import cmd, layers, steps
from dib.tree import LayeredTree


@pytest.fixture(autouse=True)
def fake_runner() -> Iterator[None]:
    def runner(argv: List[str], **kwargs: Any) -> cmd.Result:
        return cmd.Result(tuple(argv), 0, "", "")
    with cmd.use_runner(runner):
        yield


@pytest.fixture
def build(tmp_path: Path) -> Iterator[SimpleNamespace]:
    store = layers.LayerStore(tmp_path / "cache", tmp_path / "scratch", enabled=True)
    hooks = tmp_path / "hooks"
    hooks.mkdir()

    @contextlib.contextmanager
    def chroot(mnt: Path) -> Iterator[Path]:
        yield mnt

    yield SimpleNamespace(store=store, wd=SimpleNamespace(hooks=hooks), steps=[],
                          chroot=chroot, remote=None)
    store.close()


def new_tree(b: SimpleNamespace, tmp_path: Path) -> LayeredTree:
    (tmp_path / "mnt").mkdir(exist_ok=True)
    return LayeredTree(b.store.dir, tmp_path / "mnt")


class Body:
    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, mnt: Path) -> None:
        self.runs += 1


def test_a_step_runs_once_and_is_reused(build: SimpleNamespace, tmp_path: Path) -> None:
    inputs = {"prev": "root", "step": "root.d"}
    body = Body()
    key = steps._step(build, new_tree(build, tmp_path), "root.d", inputs, body, base=True)
    tree = new_tree(build, tmp_path)
    assert steps._step(build, tree, "root.d", inputs, body, base=True) == key
    assert body.runs == 1
    assert tree.layers == [build.store.dir / key]
    first, second = build.steps
    assert (first.hit, first.changed) == (False, ("(never built)",))
    assert second.hit


def test_a_changed_input_runs_the_step_and_is_named(build: SimpleNamespace,
                                                     tmp_path: Path) -> None:
    body = Body()
    inputs = {"prev": "root", "step": "root.d", "build": "b1"}
    steps._step(build, new_tree(build, tmp_path), "root.d", inputs, body, base=True)
    steps._step(build, new_tree(build, tmp_path), "root.d", {**inputs, "build": "b2"}, body,
                base=True)
    assert body.runs == 2
    assert build.steps[-1].changed == ("build",) and not build.steps[-1].hit


def test_a_failed_step_is_not_cached(build: SimpleNamespace, tmp_path: Path) -> None:
    inputs = {"prev": "root", "step": "root.d"}

    def fail(mnt: Path) -> None:
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError):
        steps._step(build, new_tree(build, tmp_path), "root.d", inputs, fail, base=True)
    assert build.store.lookup(layers.step_key(inputs)) is None
    body = Body()
    steps._step(build, new_tree(build, tmp_path), "root.d", inputs, body, base=True)
    assert body.runs == 1


def test_a_host_steps_hooks_come_back_on_a_hit(build: SimpleNamespace, tmp_path: Path) -> None:
    hooks = build.wd.hooks

    def writes_hooks(mnt: Path) -> None:
        (hooks / "environment.d").mkdir(exist_ok=True)
        (hooks / "environment.d" / "50-from-root").write_text("export X=1\n")

    inputs = {"prev": "root", "step": "root.d"}
    steps._step(build, new_tree(build, tmp_path), "root.d", inputs, writes_hooks, base=True,
                host=True)
    (hooks / "environment.d" / "50-from-root").unlink()  # a new build's fresh hooks tree
    body = Body()
    steps._step(build, new_tree(build, tmp_path), "root.d", inputs, body, base=True, host=True)
    assert body.runs == 0
    assert (hooks / "environment.d" / "50-from-root").read_text() == "export X=1\n"


def test_a_later_step_sits_on_the_layers_before_it(build: SimpleNamespace,
                                                    tmp_path: Path) -> None:
    tree = new_tree(build, tmp_path)
    base = steps._step(build, tree, "root.d", {"prev": "root"}, Body(), base=True)
    nxt = steps._step(build, tree, "install.d/10-x", {"prev": base}, Body())
    assert [p.name for p in tree.layers] == [base, nxt]
