"""The layered tree (dib.tree) through the fake command runner: which mounts each step makes,
in which order, and that every mount is undone -- also when the step fails. No root."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Tuple

import pytest

from dib import cmd
from dib.errors import DibError
from dib.tree import LayeredTree


class FakeRunner:
    """Records (argv, cwd) of every command and answers success."""

    def __init__(self) -> None:
        self.calls: List[Tuple[List[str], Optional[str]]] = []

    def __call__(self, argv: List[str], **kwargs: Any) -> cmd.Result:
        self.calls.append((list(argv), kwargs.get("cwd")))
        return cmd.Result(tuple(argv), 0, "", "")

    @property
    def argvs(self) -> List[List[str]]:
        return [a for a, _ in self.calls]


@pytest.fixture
def fake() -> FakeRunner:
    runner = FakeRunner()
    with cmd.use_runner(runner):
        yield runner


@pytest.fixture
def tree(tmp_path: Path) -> LayeredTree:
    (tmp_path / "layers").mkdir()
    (tmp_path / "mnt").mkdir()
    return LayeredTree(tmp_path / "layers", tmp_path / "mnt")


def layer(tree: LayeredTree, name: str) -> Path:
    path = tree.layers_dir / name
    path.mkdir()
    return path


def test_the_base_layer_is_bind_mounted_and_released(fake: FakeRunner,
                                                      tree: LayeredTree) -> None:
    base = layer(tree, "base")
    with tree.write_base(base) as mnt:
        assert mnt == tree.mnt
        assert fake.argvs == [["mount", "--bind", os.fspath(base), os.fspath(tree.mnt)]]
    assert fake.argvs[-1] == ["umount", os.fspath(tree.mnt)]


def test_a_step_mounts_every_layer_so_far_topmost_first(fake: FakeRunner,
                                                         tree: LayeredTree) -> None:
    for name in ("l1", "l2", "l3"):
        tree.add_layer(layer(tree, name))
    upper, work = layer(tree, "up"), layer(tree, "up.work")
    with tree.write_step(upper, work):
        pass
    (mount, cwd), (umount, _) = fake.calls
    assert mount[:5] == ["mount", "-t", "overlay", "overlay", "-o"]
    assert mount[5] == "lowerdir=l3:l2:l1,upperdir=up,workdir=up.work"
    assert mount[6] == os.path.realpath(tree.mnt)
    assert cwd == os.fspath(tree.layers_dir)  # names relative to it keep the options short
    assert umount == ["umount", os.fspath(tree.mnt)]


def test_a_failing_step_still_unmounts(fake: FakeRunner, tree: LayeredTree) -> None:
    tree.add_layer(layer(tree, "base"))
    with pytest.raises(RuntimeError), tree.write_step(layer(tree, "up"), layer(tree, "w")):
        raise RuntimeError("hook failed")
    assert [a[0] for a in fake.argvs] == ["mount", "umount"]


def test_the_view_is_read_only(fake: FakeRunner, tree: LayeredTree, tmp_path: Path) -> None:
    target = tmp_path / "view"
    tree.add_layer(layer(tree, "base"))
    with tree.view(target):
        pass
    assert fake.argvs[0] == ["mount", "--bind", "-o", "ro",
                             os.fspath(tree.layers_dir / "base"), os.fspath(target)]
    fake.calls.clear()
    tree.add_layer(layer(tree, "next"))
    with tree.view(target):
        pass
    # an overlay with no upper directory is read-only by construction
    assert fake.argvs[0][5] == "lowerdir=next:base"
    assert fake.argvs[-1] == ["umount", os.fspath(target)]


def test_misuse_is_refused_before_anything_is_mounted(fake: FakeRunner, tree: LayeredTree,
                                                      tmp_path: Path) -> None:
    with pytest.raises(DibError, match="needs the base layer"):
        with tree.write_step(layer(tree, "up"), layer(tree, "w")):
            pass
    with pytest.raises(DibError, match="is not in"):
        tree.add_layer(tmp_path / "stray")
    tree.add_layer(layer(tree, "base"))
    with pytest.raises(DibError, match="exists already"):
        with tree.write_base(layer(tree, "again")):
            pass
    assert fake.calls == []
