"""The layer store and its keys (dib.layers), without root: plain directories in tmp_path.

These are what decide whether a rebuild reuses a step, so each test changes one thing and
checks that the key (or the lookup) follows it -- and does not follow what must not matter.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict

import pytest

from dib import layers


def write(root: Path, files: Dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


# -- tree_digest -------------------------------------------------------------------------------

def test_tree_digest_is_the_content_not_the_place_or_the_time(tmp_path: Path) -> None:
    a = write(tmp_path / "a", {"x": "1", "d/y": "2"})
    b = write(tmp_path / "elsewhere" / "b", {"d/y": "2", "x": "1"})
    os.utime(b / "x", (0, 0))
    assert layers.tree_digest(a) == layers.tree_digest(b)


@pytest.mark.parametrize("change", ["content", "name", "mode", "new file", "symlink target"])
def test_tree_digest_follows_every_change_a_hook_could_see(tmp_path: Path, change: str) -> None:
    root = write(tmp_path / "e", {"install.d/10-x": "echo hi\n", "data": "d"})
    (root / "link").symlink_to("data")
    before = layers.tree_digest(root)
    if change == "content":
        (root / "data").write_text("e")
    elif change == "name":
        (root / "data").rename(root / "data2")
    elif change == "mode":
        (root / "install.d" / "10-x").chmod(0o755)
    elif change == "new file":
        (root / "install.d" / "20-y").write_text("")
    else:
        (root / "link").unlink()
        (root / "link").symlink_to("install.d")
    assert layers.tree_digest(root) != before


def test_tree_digest_skips_the_named_top_entries_and_pycache(tmp_path: Path) -> None:
    root = write(tmp_path / "e", {"element-deps": "a\n", "install.d/10-x": "x",
                                  "lib/m.py": ""})
    before = layers.tree_digest(root, skip_top=("install.d", "README.rst"))
    write(root, {"install.d/10-x": "changed", "README.rst": "docs",
                 "lib/__pycache__/m.pyc": "bytes"})
    assert layers.tree_digest(root, skip_top=("install.d", "README.rst")) == before
    write(root, {"element-deps": "b\n"})
    assert layers.tree_digest(root, skip_top=("install.d", "README.rst")) != before


def test_tree_digest_of_a_missing_directory_is_stable(tmp_path: Path) -> None:
    assert layers.tree_digest(tmp_path / "no") == layers.tree_digest(tmp_path / "nor")


# -- step keys -----------------------------------------------------------------------------------

def test_step_key_depends_on_every_input_and_nothing_else() -> None:
    inputs = {"prev": "root", "step": "install.d/10-x", "build": "b", "elements": "e"}
    key = layers.step_key(inputs)
    assert key == layers.step_key(dict(reversed(list(inputs.items()))))
    assert len(key) == layers.KEY_CHARS
    for name in inputs:
        assert layers.step_key({**inputs, name: inputs[name] + "'"}) != key, name


def test_changed_inputs_names_what_differs() -> None:
    old = {"prev": "k1", "step": "s", "gone": 1}
    assert layers.changed_inputs(None, old) == ["(never built)"]
    assert layers.changed_inputs(old, dict(old)) == []
    assert layers.changed_inputs(old, {"prev": "k2", "step": "s", "new": 2}) == \
        ["gone", "new", "prev"]


def test_build_inputs_ignore_variables_that_cannot_change_the_tree() -> None:
    env = {"DIB_RELEASE": "bookworm", "HOME": "/root"}
    base = layers.build_inputs("amd64", env, ["vim"])
    harmless = {"HOME": "/elsewhere", "DIB_DEBUG_TRACE": "1", "DIB_IMAGE_CACHE": "/c",
                "DIB_BOOT_TEST_ACCEL": "tcg", "DIB_QCOW2_COMPAT": "1.1",
                "DIB_IMAGE_EXTRA_SIZE": "100", "DIB_CHECKSUM": "sha256", "DIB_NO_TMPFS": "1",
                "DIB_MIN_TMPFS": "4", "DIB_REMOTE_CACHE": "oci://r/x",
                "DIB_FARM_LAYER_LOCKS": "tcp://s:8786"}
    assert layers.build_inputs("amd64", {**env, **harmless}, ["vim"]) == base
    assert layers.build_inputs("amd64", {**env, "DIB_RELEASE": "trixie"}, ["vim"]) != base
    assert layers.build_inputs("arm64", env, ["vim"]) != base
    assert layers.build_inputs("amd64", env, ["vim", "curl"]) != base


# -- the store ----------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> layers.LayerStore:
    s = layers.LayerStore(tmp_path / "cache", tmp_path / "scratch", enabled=True)
    yield s
    s.close()


def test_a_committed_layer_is_found_by_its_key_with_its_inputs(store: layers.LayerStore) -> None:
    inputs = {"prev": "root", "step": "install.d/10-x"}
    key = layers.step_key(inputs)
    assert store.lookup(key) is None and store.last_inputs("install.d/10-x") is None
    with store.new_upper("install.d/10-x") as upper:
        (upper / "marker").write_text("made by the step")
        layer = store.commit(key, upper, "install.d/10-x", inputs)
    assert layer == store.dir / key and not upper.exists()
    assert store.lookup(key) == layer
    assert (layer / "marker").read_text() == "made by the step"
    assert store.last_inputs("install.d/10-x") == inputs


def test_a_failed_step_leaves_no_upper_and_no_entry(store: layers.LayerStore) -> None:
    with pytest.raises(RuntimeError), store.new_upper("install.d/10-x") as upper:
        (upper / "half").write_text("")
        raise RuntimeError("the hook failed")
    assert not upper.exists() and not store.work_dir(upper).exists()
    assert [p for p in store.dir.iterdir() if p.name.startswith("tmp-")] == []


def test_close_removes_uncommitted_uppers_only(store: layers.LayerStore) -> None:
    with store.new_upper("a") as kept:
        store.commit("k" * layers.KEY_CHARS, kept, "a", {"step": "a"})
    with store.new_upper("b") as dropped:
        pass
    assert dropped.exists()
    store.close()
    assert not dropped.exists() and store.lookup("k" * layers.KEY_CHARS) is not None


def test_a_second_commit_of_the_same_key_keeps_the_first_layer(store: layers.LayerStore) -> None:
    key = "f" * layers.KEY_CHARS
    for text in ("first", "second"):
        with store.new_upper("s") as upper:
            (upper / "who").write_text(text)
            store.commit(key, upper, "s", {"step": "s"})
    assert (store.dir / key / "who").read_text() == "first"


def test_hooks_written_by_a_host_step_come_back_with_its_layer(store: layers.LayerStore,
                                                                 tmp_path: Path) -> None:
    hooks = write(tmp_path / "hooks", {"environment.d/10-old": "A=1\n"})
    before = layers.snapshot(hooks)
    write(hooks, {"environment.d/50-new": "B=2\n"})
    (hooks / "environment.d" / "50-new").chmod(0o750)
    store.save_hooks_delta("key1", hooks, before)

    fresh = write(tmp_path / "hooks2", {"environment.d/10-old": "A=1\n"})
    store.restore_hooks_delta("key1", fresh)
    restored = fresh / "environment.d" / "50-new"
    assert restored.read_text() == "B=2\n" and (restored.stat().st_mode & 0o777) == 0o750
    assert sorted(p.name for p in (fresh / "environment.d").iterdir()) == ["10-old", "50-new"]


def test_a_disabled_store_never_reuses(tmp_path: Path) -> None:
    store = layers.LayerStore(tmp_path / "cache", tmp_path / "scratch", enabled=False)
    assert store.dir == tmp_path / "scratch"
    with store.new_upper("s") as upper:
        assert store.commit("k", upper, "s", {"step": "s"}) == upper
    assert store.lookup("k") is None and store.last_inputs("s") is None
    assert not (tmp_path / "cache").exists()
