"""The tree's step cache (dib.steps): a step runs on a miss, is reused on a hit, says which
input changed, and a host step's writes into the hooks tree come back with its layer.

No root: mounts go to the fake command runner, the layer store is a directory in tmp_path.
This drives ``steps._step`` with a stand-in for the BuildContext (only ``store``, ``wd``,
``steps``, ``chroot`` and ``remote``), so it stays small: adapt the stand-in if the context's shape
changes, not the assertions.
"""
from __future__ import annotations

import contextlib
import shutil
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


def _element(root: Path, name: str, files: dict) -> SimpleNamespace:
    for rel, text in files.items():
        (root / name / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / name / rel).write_text(text)
    return SimpleNamespace(name=name, path=root / name)


def _base_key(tmp_path: Path, extra: dict) -> str:
    """The base layer's element input for os (with root.d) plus elements named in ``extra``."""
    elements = [_element(tmp_path / "a", "os", {"root.d/10-os": "#!/bin/sh\n",
                                                 "package-installs.yaml": "curl:\n"})]
    elements += [_element(tmp_path / "a", n, files) for n, files in extra.items()]
    b = SimpleNamespace(res=SimpleNamespace(ordered=lambda: elements))
    return steps.base_elements(b, {"os"})  # type: ignore[arg-type]


def test_the_base_layer_ignores_other_elements_data(tmp_path: Path) -> None:
    alone = _base_key(tmp_path / "1", {})
    with_app = _base_key(tmp_path / "2", {"app": {"install.d/10-app": "#!/bin/sh\n",
                                                  "package-installs.yaml": "nginx:\n",
                                                  "static/etc/app": "x\n"}})
    assert with_app == alone


def test_the_base_layer_follows_every_environment_d(tmp_path: Path) -> None:
    alone = _base_key(tmp_path / "1", {})
    env = _base_key(tmp_path / "2", {"app": {"environment.d/10-app": "export DIB_X=1\n"}})
    other = _base_key(tmp_path / "3", {"app": {"environment.d/10-app": "export DIB_X=2\n"}})
    assert len({alone, env, other}) == 3


def test_the_base_layer_follows_its_own_elements_data(tmp_path: Path) -> None:
    one = _base_key(tmp_path / "1", {})
    elements = [_element(tmp_path / "2", "os", {"root.d/10-os": "#!/bin/sh\n",
                                                 "package-installs.yaml": "wget:\n"})]
    b = SimpleNamespace(res=SimpleNamespace(ordered=lambda: elements))
    assert steps.base_elements(b, {"os"}) != one  # type: ignore[arg-type]


# -- what a declared step reads, remembered with its stack --------------------------------------

def test_a_declared_reading_is_made_once_per_stack_of_layers(build: SimpleNamespace,
                                                               tmp_path: Path,
                                                               monkeypatch) -> None:
    from dib import content_keys

    made: List[Path] = []

    def read(root: Path, decl: content_keys.Declaration) -> content_keys.Reading:
        made.append(root)
        return content_keys.Reading({"read:/boot": f"digest-{len(made)}"}, ("boot",))

    def rebuilt(layer: Path, *files: str) -> None:
        """The same key built again (pruned, then rebuilt): a new directory."""
        shutil.rmtree(layer)
        layer.mkdir()
        for rel in files:
            (layer / rel).parent.mkdir(parents=True, exist_ok=True)
            (layer / rel).write_text("x")

    monkeypatch.setattr(content_keys, "read", read)
    build.wd.built = tmp_path / "built"
    decl = content_keys.Declaration("dpkg", "post-install.d/98-x", ("/boot",), ("/tmp",))
    key = steps._step(build, new_tree(build, tmp_path), "root.d",
                      {"prev": "root", "step": "root.d"}, Body(), base=True)
    base = build.store.dir / key
    (base / "boot").mkdir()
    (base / "boot" / "vmlinuz").write_text("kernel")
    tree = new_tree(build, tmp_path)
    tree.add_layer(base)
    first = steps._read(build, tree, decl)
    assert steps._read(build, tree, decl) == first and len(made) == 1
    # another declaration of the same step (an edited layer-inputs.yaml) is read afresh
    steps._read(build, tree, content_keys.Declaration("dpkg", "post-install.d/98-x",
                                                       ("/boot", "/etc"), ("/tmp",)))
    assert len(made) == 2
    rebuilt(base, "boot/vmlinuz")
    again = steps._read(build, tree, decl)
    assert len(made) == 3 and again.inputs == {"read:/boot": "digest-3"}
    # a layer above that changes nothing the step reads (an edited script's /etc/motd, and
    # files in /tmp, where the step only writes) is no reason to read again, built or rebuilt
    key2 = steps._step(build, tree, "install.d/50-motd", {"prev": key, "step": "motd"},
                       Body())
    edited = build.store.dir / key2
    rebuilt(edited, "etc/motd", "tmp/scratch")
    assert steps._read(build, tree, decl).inputs == {"read:/boot": "digest-3"}
    rebuilt(edited, "etc/motd", "etc/issue")
    assert steps._read(build, tree, decl).inputs == {"read:/boot": "digest-3"}
    assert len(made) == 3
    # ... one that writes below /boot is
    rebuilt(edited, "etc/motd", "boot/config")
    assert steps._read(build, tree, decl).inputs == {"read:/boot": "digest-4"}
    # a stack with a layer that is not a committed one is never remembered
    with build.store.new_upper("post-install.d/97-y") as upper:
        tree.add_layer(upper)
        steps._read(build, tree, decl)
        steps._read(build, tree, decl)
    assert len(made) == 6
