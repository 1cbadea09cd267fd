"""Recipes: the YAML schema (errors name the file, the image and the key), merging, the
arguments each image becomes, and the checks made before anything is built."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dib import cli, recipe
from dib.errors import ConfigError, DibError

ROOT = Path(__file__).resolve().parents[2]
TEST_ELEMENTS = ROOT / "tests" / "elements"


def write(tmp_path: Path, doc, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


def error_of(doc, tmp_path) -> str:
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError) as err:
        recipe.validate(recipe.load(path), str(path))
    return err.value.message


# -- the document ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,match", [
    ("", "the file is empty"),
    ("imagename: x\nelements: [a]\n", "the top level is a mapping, not a list"),
    ("just a string\n", "must be a list of image definitions, not str"),
    ("- elements: [a\n", r"not valid YAML \(line \d+, column \d+\)"),
    ("[]\n", "no image definitions"),
])
def test_document_errors(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as err:
        recipe.validate(recipe.load(path), str(path))
    assert str(path) in err.value.message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read it"):
        recipe.load(tmp_path / "nope.yaml")


# -- keys -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry,message", [
    ({"imagename": "web", "elements": ["vm"], "size": 4},
     "image 1 ('web'): unknown key 'size' (did you mean 'image-size'?)"),
    ({"imagename": "web", "elements": ["vm"], "formats": ["qcow2"]},
     "image 1 ('web'): unknown key 'formats' (did you mean 'types'?)"),
    ({"imagename": "web", "elements": ["vm"], "typse": ["qcow2"]},
     "image 1 ('web'): unknown key 'typse' (did you mean 'types'?)"),
    ({"imagename": "web", "elements": "vm"},
     "image 1 ('web'): 'elements' must be a list of strings, not 'vm'"),
    ({"imagename": "web", "elements": ["vm"], "checksum": "yes"},
     "image 1 ('web'): 'checksum' must be true or false, not 'yes'"),
    ({"imagename": "web", "elements": ["vm"], "image-size": "4G"},
     "image 1 ('web'): 'image-size' must be a number, not '4G'"),
    ({"imagename": "web", "elements": ["vm"], "image-extra-size": 0},
     "image 1 ('web'): 'image-extra-size' must be a positive whole number, not 0"),
    ({"imagename": "web", "elements": ["vm"], "debug-trace": 3},
     "image 1 ('web'): 'debug-trace' must be 0, 1 or 2, not 3"),
    ({"imagename": "web", "elements": ["vm"], "arch": "sparc"},
     "image 1 ('web'): 'arch' must be one of amd64, arm64"),
    ({"imagename": "web", "elements": ["vm"], "environment": {"DIB_X": True}},
     "image 1 ('web'): 'environment' DIB_X: the value must be a string, not True"),
    ({"imagename": "web", "elements": ["vm"], "environment": ["DIB_X=1"]},
     "image 1 ('web'): 'environment' must be a mapping of names to strings, not list"),
    ({"imagename": "web", "elements": ["vm"], "ramdisk": True},
     "image 1 ('web'): 'ramdisk' ramdisk images are not supported"),
    ({"imagename": "web"}, "image 1 ('web'): 'elements' is missing or empty"),
    ({"imagename": "web", "elements": []}, "image 1 ('web'): 'elements' is missing or empty"),
])
def test_schema_errors_name_image_and_key(tmp_path, entry, message):
    assert message in error_of([entry], tmp_path)


def test_every_problem_is_listed(tmp_path):
    msg = error_of([{"imagename": "a", "elements": ["x"], "sise": 1},
                    {"imagename": "b", "elements": ["y"], "types": 5},
                    "not a mapping"], tmp_path)
    assert "image 1 ('a'): unknown key 'sise'" in msg
    assert "image 2 ('b'): 'types' must be a list of strings, not 5" in msg
    assert "image 3: a definition must be a mapping of keys, not str" in msg


def test_second_image_named_by_position(tmp_path):
    msg = error_of([{"imagename": "a", "elements": ["x"]},
                    {"imagename": "b", "elements": ["y"], "clear": "no"}], tmp_path)
    assert msg.endswith("image 2 ('b'): 'clear' must be true or false, not 'no'")


# -- merging (diskimage-builder's rules) ----------------------------------------------------------

def test_merging_by_imagename(tmp_path):
    doc = [{"imagename": "a", "elements": ["vm"], "types": ["qcow2"],
            "environment": {"X": "1", "Y": "1"}, "image-size": 2},
           {"imagename": "b", "elements": ["debian-minimal"]},
           {"imagename": "a", "elements": ["debian"], "environment": {"Y": "2"},
            "image-size": 3},
           {"types": ["raw"]}]  # no imagename: continues 'a'
    images = recipe.validate(doc, "r.yaml")
    assert [i.name for i in images] == ["a", "b"]
    a = images[0].entry
    assert a["elements"] == ["vm", "debian"]
    assert a["types"] == ["qcow2", "raw"]
    assert a["environment"] == {"X": "1", "Y": "2"}
    assert a["image-size"] == 3


def test_first_image_defaults_to_image(tmp_path):
    [img] = recipe.validate([{"elements": ["x"]}], "r.yaml")
    assert img.name == "image" and img.label == "image 1 ('image')"


# -- arguments and environment ---------------------------------------------------------------------

def test_image_argv():
    entry = {"imagename": "out/web", "elements": ["vm", "debian"], "types": ["qcow2", "vagrant"],
             "packages": ["vim", "curl"], "debug-trace": 2, "checksum": True, "no-tmpfs": False,
             "image-size": 4.5, "qemu-img-options": {"compat": "1.1", "lazy_refcounts": "on"},
             "docker-target": "x/y:1", "skip-base": True, "environment": {"A": "1"},
             "clear": True, "arch": "amd64", "boot-test": True}
    assert recipe.image_argv(entry) == [
        "-o", "out/web", "-t", "qcow2,vagrant", "-p", "vim,curl", "-x", "-x", "--checksum",
        "--image-size", "4.5", "--qemu-img-options", "compat=1.1,lazy_refcounts=on",
        "--docker-target", "x/y:1", "-n", "-a", "amd64", "--boot-test", "vm", "debian"]


def test_image_env():
    env = {"PATH": "/bin", "DIB_RELEASE": "bookworm"}
    assert recipe.image_env({"environment": {"DIB_X": 1}}, env) == {
        "PATH": "/bin", "DIB_RELEASE": "bookworm", "DIB_X": "1"}
    assert recipe.image_env({"environment": {"DIB_X": "1"}, "clear": True}, env) == {
        "DIB_X": "1"}


def test_split_argv():
    files, stop, rest = recipe.split_argv(["--recipe", "a.yaml", "-x", "--recipe=b.yaml",
                                           "--stop-on-failure", "--no-cache"])
    assert (files, stop, rest) == (["a.yaml", "b.yaml"], True, ["-x", "--no-cache"])
    with pytest.raises(ConfigError, match="--recipe needs a FILE"):
        recipe.split_argv(["--recipe"])


def test_plan(tmp_path):
    path = write(tmp_path, [{"imagename": str(tmp_path / "a"), "elements": ["fake-os"],
                             "types": ["tar"], "environment": {"DIB_X": "1"}},
                            {"imagename": str(tmp_path / "b"), "elements": ["fake-os"],
                             "types": ["docker"], "skip-base": True}])
    images, stop = recipe.plan(["--recipe", str(path), "--no-cache"], {"HOME": "/root"})
    assert not stop
    # (safe_dump sorts the keys: the options follow the definition's key order)
    assert images[0].argv == ["--no-cache", "-o", str(tmp_path / "a"), "-t", "tar", "fake-os"]
    assert images[0].env == {"HOME": "/root", "DIB_X": "1"}
    assert images[1].argv == ["--no-cache", "-o", str(tmp_path / "b"), "-n", "-t", "docker",
                              "fake-os"]


def test_plan_refuses_elements_on_the_command_line(tmp_path):
    path = write(tmp_path, [{"elements": ["fake-os"]}])
    with pytest.raises(ConfigError, match="the elements come from the recipe"):
        recipe.plan(["--recipe", str(path), "vm"], {})


def test_plan_refuses_two_images_with_one_output(tmp_path):
    a = write(tmp_path, [{"imagename": "x", "elements": ["fake-os"]}], "a.yaml")
    b = write(tmp_path, [{"imagename": "x", "elements": ["fake-os"]}], "b.yaml")
    with pytest.raises(ConfigError, match="same imagename as image 1 \\('x'\\)"):
        recipe.plan(["--recipe", str(a), "--recipe", str(b)], {})


# -- the checks before building (every image, before the first build) ---------------------------

def check_all(tmp_path, doc, env=None):
    path = write(tmp_path, doc)
    images, _ = recipe.plan(["--recipe", str(path)],
                            {"ELEMENTS_PATH": str(TEST_ELEMENTS), **(env or {})})
    return [recipe._check(i) for i in images]


def test_check_passes_and_makes_one_config_per_image(tmp_path):
    cfgs = check_all(tmp_path, [
        {"imagename": str(tmp_path / "a"), "elements": ["fake-os"], "types": ["tar"],
         "skip-base": True},
        {"imagename": str(tmp_path / "b"), "elements": ["fake-os"], "types": ["docker", "oci"],
         "skip-base": True, "docker-target": "dibtest/b:2",
         "environment": {"DIB_CONTAINER_CMD": "/bin/sh"}}])
    assert [c.image_name for c in cfgs] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert [f.value for f in cfgs[1].formats] == ["docker", "oci"]
    assert cfgs[1].docker_target == "dibtest/b:2"
    assert cfgs[1].env["DIB_CONTAINER_CMD"] == "/bin/sh"
    assert cfgs[0].image_cache == cfgs[1].image_cache  # one cache for every image


@pytest.mark.parametrize("extra,match", [
    ({"types": ["qcow3"]}, "image 2 \\('b'\\): 'types': unknown output type 'qcow3'"),
    ({"elements": ["no-such-element"]}, "image 2 \\('b'\\): .*no-such-element"),
    ({"types": ["docker"], "docker-target": "Bad:Name"},
     "image 2 \\('b'\\): 'docker-target': 'Bad:Name' is not a valid image name"),
    ({"types": ["qcow2"], "environment": {"DIB_LIBVIRT_MEMORY": "lots"}},
     "image 2 \\('b'\\): DIB_LIBVIRT_MEMORY: must be a positive whole number"),
    ({"types": ["vagrant"], "environment": {"DIB_VAGRANT_LIBVIRT_DRIVER": "xen"}},
     "image 2 \\('b'\\): DIB_VAGRANT_LIBVIRT_DRIVER: must be one of kvm, qemu"),
])
def test_check_errors_name_the_image(tmp_path, extra, match):
    entry = {"imagename": "b", "elements": ["fake-os"], "skip-base": True, **extra}
    if "elements" in extra:
        entry["elements"] = extra["elements"]
    with pytest.raises(DibError) as err:
        check_all(tmp_path, [{"imagename": "a", "elements": ["fake-os"], "skip-base": True},
                             entry])
    import re
    assert re.search(match, err.value.message), err.value.message
    assert "r.yaml" in err.value.message


# -- the command line -----------------------------------------------------------------------------

def test_cli_reports_a_schema_error_and_builds_nothing(tmp_path, capsys):
    path = write(tmp_path, [{"imagename": str(tmp_path / "x"), "elements": ["fake-os"],
                             "size": 3}])
    code = cli.disk_image_create(["--recipe", str(path)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"error: recipe {path}: image 1 ('{tmp_path / 'x'}'): unknown key 'size'" in err
    assert "hint: keys: " in err
    assert not (tmp_path / "x.d").exists()


def test_cli_help_mentions_recipe(capsys):
    with pytest.raises(SystemExit):
        cli.disk_image_create(["--help"])
    out = capsys.readouterr().out
    assert "--recipe FILE" in out and "vagrant" in out and "oci" in out
