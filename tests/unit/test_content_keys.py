"""layer-inputs.yaml: parsing, path resolution inside a tree, digests, undeclared changes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from dib import content_keys
from dib.errors import ConfigError

PHASES = ("install.d", "post-install.d")


def _parse(text: str):
    return content_keys.parse(text, "t-el", "element t-el: layer-inputs.yaml", PHASES)


def test_parse_sorts_and_normalises_paths():
    (d,) = _parse("post-install.d/98-x:\n  reads: [/boot/, /etc//a, /boot]\n"
                  "  writes: [/tmp]\n")
    assert d.step == "post-install.d/98-x" and d.element == "t-el"
    assert d.reads == ("/boot", "/etc/a") and d.writes == ("/tmp",)


def test_beside_and_room_are_optional():
    (plain,) = _parse("install.d/10-x:\n  reads: [/boot]\n")
    assert not plain.beside and plain.room_mib is None
    (d,) = _parse("install.d/10-x:\n  reads: [/boot]\n  beside: true\n  room-mib: 96\n")
    assert d.beside and d.room_mib == 96


def test_an_empty_file_declares_nothing():
    assert _parse("# nothing yet\n") == ()


@pytest.mark.parametrize("text, culprit", [
    ("root.d/10-x:\n  reads: [/boot]\n", "root.d/10-x"),
    ("install.d:\n  reads: [/boot]\n", "'install.d'"),
    ("install.d/a/b:\n  reads: [/boot]\n", "install.d/a/b"),
    ("install.d/10-x:\n  reads: []\n", "reads"),
    ("install.d/10-x:\n  reads: [boot]\n", "reads"),
    ("install.d/10-x:\n  reads: [/boot/../etc]\n", "reads"),
    ("install.d/10-x:\n  reads: [/boot]\n  writes: /tmp\n", "writes"),
    ("install.d/10-x:\n  reads: [/boot]\n  write: [/tmp]\n", "install.d/10-x"),
    ("- install.d/10-x\n", "mapping"),
    ("install.d/10-x: [\n", "not valid YAML"),
    ("install.d/10-x:\n  reads: [/boot]\n  beside: yes please\n", "beside"),
    ("install.d/10-x:\n  reads: [/boot]\n  room-mib: -1\n", "room-mib"),
    ("install.d/10-x:\n  reads: [/boot]\n  room-mib: 1.5\n", "room-mib"),
    ("install.d/10-x:\n  reads: [/boot]\n  room-mib: true\n", "room-mib"),
])
def test_bad_declarations_name_the_file_and_key(text, culprit):
    with pytest.raises(ConfigError) as exc:
        _parse(text)
    assert "element t-el: layer-inputs.yaml" in str(exc.value)
    assert culprit in str(exc.value)


def test_load_reads_only_elements_that_have_the_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "layer-inputs.yaml").write_text("install.d/10-b:\n  reads: [/etc]\n")
    found = content_keys.load({"a": tmp_path / "a", "b": tmp_path / "b"}, PHASES)
    assert list(found) == ["install.d/10-b"] and found["install.d/10-b"].element == "b"


@pytest.fixture
def tree(tmp_path):
    """A merged-/usr tree: /lib -> usr/lib, an absolute symlink, a loop."""
    root = tmp_path / "root"
    (root / "usr/lib/modules/6.1").mkdir(parents=True)
    (root / "usr/lib/modules/6.1/m.ko").write_bytes(b"ko")
    (root / "lib").symlink_to("usr/lib")
    (root / "etc").mkdir()
    (root / "etc/abs").symlink_to("/usr/lib/modules")
    (root / "etc/loop").symlink_to("/etc/loop")
    (root / "etc/conf").write_text("x=1\n")
    return root


def test_resolve_follows_symlinks_inside_the_tree(tree):
    assert content_keys.resolve(tree, "/lib/modules") == "usr/lib/modules"
    assert content_keys.resolve(tree, "/etc/abs/6.1") == "usr/lib/modules/6.1"
    assert content_keys.resolve(tree, "/etc/conf") == "etc/conf"
    assert content_keys.resolve(tree, "/nowhere/x") == "nowhere/x"
    assert content_keys.resolve(tree, "/etc/../../etc/conf") == "etc/conf"
    content_keys.resolve(tree, "/etc/loop")  # a loop ends, it does not hang


def test_trail_names_every_path_looked_at_on_the_way(tree):
    assert content_keys.trail(tree, "/lib/modules") == (
        "usr/lib/modules", ("lib", "usr", "usr/lib", "usr/lib/modules"))
    assert content_keys.trail(tree, "/etc/abs/6.1") == (
        "usr/lib/modules/6.1", ("etc", "etc/abs", "usr", "usr/lib", "usr/lib/modules",
                                "usr/lib/modules/6.1"))


def test_a_layer_shadows_a_reading_only_by_what_it_puts_there(tmp_path):
    looked = ("lib", "usr", "usr/lib", "usr/lib/modules")
    results = ("usr/lib/modules",)
    layer = tmp_path / "layer"
    (layer / "usr/lib/python3").mkdir(parents=True)     # parents of a change elsewhere
    (layer / "etc").mkdir()
    (layer / "etc/motd").write_text("hello\n")
    assert not content_keys.shadows(layer, looked, results)
    (layer / "usr/lib/modules").mkdir()                 # anything at the result
    assert content_keys.shadows(layer, looked, results)
    (layer / "usr/lib/modules").rmdir()
    (layer / "lib").symlink_to("usr/lib64")             # a symlink on the way
    assert content_keys.shadows(layer, looked, results)
    (layer / "lib").unlink()
    (layer / "lib").write_text("")                      # a file (as a whiteout hides)
    assert content_keys.shadows(layer, looked, results)
    assert not content_keys.shadows(tmp_path / "empty", looked, results)


def test_digest_sees_contents_and_modes_and_absence(tree):
    before = content_keys.digest(tree, "usr/lib/modules")
    assert before.startswith("dir:")
    assert content_keys.digest(tree, "no/such") == "absent"
    conf = content_keys.digest(tree, "etc/conf")
    (tree / "usr/lib/modules/6.1/m.ko").write_bytes(b"ko2")
    assert content_keys.digest(tree, "usr/lib/modules") != before
    os.chmod(tree / "etc/conf", 0o600)
    assert content_keys.digest(tree, "etc/conf") != conf


def test_read_keys_inputs_by_declared_path_and_allows_resolved_paths(tree):
    decl = content_keys.Declaration("t-el", "install.d/10-x", ("/etc/conf", "/lib/modules"),
                                    ("/tmp",))
    reading = content_keys.read(tree, decl)
    assert set(reading.inputs) == {"read:/etc/conf", "read:/lib/modules"}
    assert reading.allowed == ("etc/conf", "tmp", "usr/lib/modules")
    (tree / "etc/other").write_text("unrelated\n")
    assert content_keys.read(tree, decl) == reading
    (tree / "etc/conf").write_text("x=2\n")
    assert content_keys.read(tree, decl).inputs["read:/etc/conf"] != \
        reading.inputs["read:/etc/conf"]


def _upper(tmp_path: Path, files) -> Path:
    upper = tmp_path / "upper"
    for rel in files:
        (upper / rel).parent.mkdir(parents=True, exist_ok=True)
        (upper / rel).write_text("changed\n")
    return upper


def test_undeclared_lists_changes_outside_the_declaration(tmp_path):
    upper = _upper(tmp_path, ["boot/initrd.img", "var/tmp/scratch/x", "etc/motd",
                              "usr/sbin/update-initramfs"])
    (upper / "usr/share/doc").mkdir(parents=True)  # a copied-up parent alone is no change
    allowed = ("boot", "var/tmp", "usr/sbin/update-initramfs")
    assert content_keys.undeclared(upper, allowed) == ["/etc/motd"]
    assert content_keys.undeclared(upper, allowed + ("etc/motd",)) == []


def test_undeclared_does_not_take_a_prefix_for_a_parent(tmp_path):
    upper = _upper(tmp_path, ["boot2/x", "bootloader"])
    assert content_keys.undeclared(upper, ("boot",)) == ["/boot2/x", "/bootloader"]


def test_touching_finds_changes_at_below_and_above_the_paths(tmp_path):
    upper = tmp_path / "upper"
    (upper / "var/t-out").mkdir(parents=True)
    (upper / "var/t-out/copy").write_text("x")   # below a declared path
    (upper / "opt").mkdir()
    (upper / "opt/app").write_text("x")          # unrelated
    (upper / "etc").mkdir()
    (upper / "etc/t-conf").write_text("x")       # a declared path itself
    (upper / "usr").write_text("x")              # above a declared path (/usr/lib/modules)
    paths = ("var/t-out", "etc/t-conf", "usr/lib/modules")
    assert content_keys.touching(upper, paths) == ["/etc/t-conf", "/usr", "/var/t-out/copy"]
    # parent directories copied up on the way to an unrelated change are no change
    assert content_keys.touching(upper, ("var/other", "opt/app/x")) == ["/opt/app"]
    assert content_keys.touching(upper, ("srv",)) == []
