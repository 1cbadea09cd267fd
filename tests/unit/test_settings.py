"""The settings table (dib.config.SETTINGS): every entry refuses its bad example with a
ConfigError naming where the value came from and what it takes, and accepts its good one;
the CLI, the recipe keys and docs/cli.md follow the table. Then the five bad inputs of
issue #11 through the real ``bin/disk-image-create``: an error, no traceback, no work done.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dib import config, recipe
from dib.config import SETTINGS, Setting, parse_args
from dib.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
#: entries whose every value is fine (declared so: accepts "any text" and no bad example)
FREE_TEXT = {s.name for s in SETTINGS if s.accepts == "any text"}
#: options that take no value (a bare flag) or are the element list
NO_VALUE = {s.name for s in SETTINGS if not s.takes_value}


def ids(settings):
    return [s.name for s in settings]


def test_every_entry_declares_examples():
    """A new entry must come with a value it refuses and one it takes (or say it takes any
    text / no value), so this test covers it."""
    for s in SETTINGS:
        assert s.kind in config.KINDS, s.name
        assert s.help, s.name
        assert s.flags or s.env or s.kind == "positional", s.name
        if s.name in NO_VALUE:
            continue
        assert s.good is not None, f"{s.name}: no good example"
        assert s.bad is not None or s.name in FREE_TEXT, f"{s.name}: no bad example"
        assert s.accepted, f"{s.name}: says nothing about what it accepts"


def test_names_flags_variables_and_recipe_keys_are_unique():
    for attr in ("name", "recipe"):
        values = [getattr(s, attr) for s in SETTINGS if getattr(s, attr)]
        assert len(values) == len(set(values)), attr
    flags = [f for s in SETTINGS for f in s.flags]
    env = [v for s in SETTINGS for v in s.env]
    assert len(flags) == len(set(flags)) and len(env) == len(set(env))


def _argv(s: Setting, value: str):
    flag = s.flags[0]
    return [f"{flag}={value}"] if flag.startswith("--") else [flag, value]


def _given(s: Setting, value: str):
    """(argv, env) giving ``value`` to ``s``: by its flag when it takes a value there,
    else by its first variable."""
    if s.flags and s.kind not in ("flag", "count"):
        return _argv(s, value), {}
    return [], {s.env[0]: value}


WITH_BAD = [s for s in SETTINGS if s.bad is not None]


@pytest.mark.parametrize("s", WITH_BAD, ids=ids(WITH_BAD))
def test_a_bad_value_is_refused_naming_the_option_and_what_it_takes(s, tmp_path):
    argv, env = _given(s, s.bad)
    with pytest.raises(ConfigError) as err:
        parse_args(["-o", str(tmp_path / "img")] + argv + ["fake-os"], env)
    e = err.value
    source = argv[0].split("=")[0] if argv else s.env[0]
    assert e.message.startswith(f"{source}: "), e.message
    assert getattr(e, "setting", None) is s
    text = f"{e.message}\n{e.hint}"
    for choice in s.choices:
        assert choice in text
    assert s.accepted in (e.hint or "")


@pytest.mark.parametrize("s", WITH_BAD, ids=ids(WITH_BAD))
def test_every_variable_of_an_entry_is_checked(s, tmp_path):
    out = [] if s.name == "image_name" else ["-o", str(tmp_path / "img")]
    for name in s.env:
        with pytest.raises(ConfigError, match=f"^{name}: "):
            parse_args(out + ["fake-os"], {name: s.bad})


WITH_GOOD = [s for s in SETTINGS if s.good is not None and s.kind != "positional"]


@pytest.mark.parametrize("s", WITH_GOOD, ids=ids(WITH_GOOD))
def test_a_good_value_parses(s, tmp_path):
    if s.name == "recipe":  # --recipe takes over the whole command line: see test_recipe
        assert recipe.split_argv(["--recipe", s.good])[0] == [s.good]
        return
    if s.name == "logfile":
        good = str(tmp_path / s.good)
    else:
        good = s.good
    argv, env = _given(s, good)
    cfg = parse_args(["-o", str(tmp_path / "img")] + argv + ["fake-os"], env)
    default = parse_args(["-o", str(tmp_path / "img"), "fake-os"], {})
    assert cfg != default, f"{s.name}={good!r} changed nothing"


@pytest.mark.parametrize("s", [s for s in SETTINGS if s.default is not None],
                         ids=ids([s for s in SETTINGS if s.default is not None]))
def test_defaults_are_valid_values(s):
    s.value(s.default, "default")


def test_cli_flags_come_from_the_table():
    parser = config._parser()
    flags = {o for a in parser._actions for o in a.option_strings}
    for s in SETTINGS:
        assert set(s.flags) <= flags, s.name
    assert flags - {f for s in SETTINGS for f in s.flags} == {"-h", "--help", "--version"}


def test_recipe_keys_come_from_the_table():
    table = {s.recipe for s in SETTINGS if s.recipe}
    assert table <= set(recipe.KEYS)
    assert set(recipe.KEYS) - table == {"environment", "ramdisk", "ramdisk-element"}
    for s in SETTINGS:
        if s.recipe and s.flags:
            assert recipe.KEYS[s.recipe].option == s.flags[0]


def test_docs_reference_matches_the_table():
    """docs/cli.md holds config.reference_markdown() verbatim: regenerate it with
    python3 -c 'import dib.config as c; print(c.reference_markdown(), end="")'."""
    doc = (ROOT / "docs" / "cli.md").read_text()
    begin, end = "<!-- settings table: begin -->\n", "<!-- settings table: end -->"
    assert begin in doc and end in doc
    assert doc.split(begin, 1)[1].split(end, 1)[0] == config.reference_markdown()


def test_cli_then_variable_then_default():
    s = config.BY_NAME["min_tmpfs"]
    assert config.setting_value(s, "3", {"DIB_MIN_TMPFS": "4"}) == 3.0
    assert config.setting_value(s, None, {"DIB_MIN_TMPFS": "4"}) == 4.0
    assert config.setting_value(s, None, {"DIB_MIN_TMPFS": ""}) == 2.0
    trace = config.BY_NAME["trace"]
    assert config.setting_value(trace, 1, {"DIB_DEBUG_TRACE": "2"}) == 2


def test_ext_mkfs_options_from_their_flags():
    cfg = parse_args(["--max-online-resize", "1000", "--mkfs-journal-size", "32",
                      "--mkfs-options", "-i 4096", "x"], {})
    assert cfg.root_mkfs_options == "-i 4096 -E resize=1000 -J size=32"
    with pytest.raises(ConfigError, match="--mkfs-journal-size applies to an ext3/ext4"):
        parse_args(["--mkfs-journal-size", "32", "x"], {"FS_TYPE": "xfs"})


def test_preflight_names_an_unwritable_output_directory(tmp_path):
    (tmp_path / "file").write_text("")
    cfg = parse_args(["-o", str(tmp_path / "file" / "img"), "x"], {"TMP_DIR": str(tmp_path)})
    with pytest.raises(ConfigError, match="-o .*cannot write the output directory"):
        config.preflight(cfg)
    ok = parse_args(["-o", str(tmp_path / "new" / "dir" / "img"), "x"],
                    {"TMP_DIR": str(tmp_path), "DIB_IMAGE_CACHE": str(tmp_path / "c")})
    config.preflight(ok)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing left behind


# -- the reported inputs, through the real command --------------------------------------------

REPORTED = [
    (["-a", "sparc99", "fake-os"], {}, "-a: 'sparc99'"),
    (["-o", "/proc/img", "fake-os"], {}, "-o /proc/img: cannot write the output directory"),
    (["no-such-element"], {}, "ELEMENTS_PATH"),
    (["fake-os"], {"DIB_DEBUG_TRACE": "yes"}, "DIB_DEBUG_TRACE: must be a whole number"),
    (["-t", "raw", "--boot-test", "fake-os"], {"DIB_BOOT_TEST_TIMEOUT": "soon"},
     "DIB_BOOT_TEST_TIMEOUT: must be a number, not 'soon'"),
]


@pytest.mark.parametrize("argv,env,expected", REPORTED, ids=[r[2] for r in REPORTED])
def test_reported_bad_inputs_fail_before_any_work(argv, env, expected, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    if "-o" not in argv:
        argv = ["-o", str(out / "img")] + argv
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("DIB_") and k not in ("ELEMENTS_PATH", "TMP_DIR")}
    environ.update(env, TMP_DIR=str(work), DIB_IMAGE_CACHE=str(tmp_path / "cache"),
                   ELEMENTS_PATH=str(ROOT / "tests" / "elements"))
    proc = subprocess.run([sys.executable, str(ROOT / "bin" / "disk-image-create"), *argv],
                          env=environ, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "\nhint: " in proc.stderr, proc.stderr
    assert expected in proc.stderr, proc.stderr
    # nothing started: no work directory, no report directory, no cache
    assert list(work.iterdir()) == [] and list(out.iterdir()) == []
    assert not (tmp_path / "cache").exists()


# -- --dry-run --------------------------------------------------------------------------------

def _run(argv, tmp_path, **env):
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("DIB_") and k not in ("ELEMENTS_PATH", "TMP_DIR")}
    environ.update(env, TMP_DIR=str(tmp_path / "work"), DIB_IMAGE_CACHE=str(tmp_path / "c"),
                   ELEMENTS_PATH=str(ROOT / "tests" / "elements"))
    return subprocess.run([sys.executable, str(ROOT / "bin" / "disk-image-create"), *argv],
                          env=environ, capture_output=True, text=True, cwd=tmp_path)


def test_dry_run_prints_the_resolved_build_and_builds_nothing(tmp_path):
    proc = _run(["--dry-run", "-o", str(tmp_path / "out" / "web"), "-t", "raw,tar",
                 "--checksum", "--no-tmpfs", "fake-os", "vm"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.strip().split(": ", 1) for line in proc.stdout.splitlines()[1:])
    assert lines["added"] == "base block-device-mbr"  # base unless -n; vm's block device
    assert "fake-os" in lines["elements (resolved, in order)"].split()
    out = tmp_path / "out" / "web"
    assert lines["outputs"].split(", ") == [
        f"{out}.raw", f"{out}.tar", f"{out}.raw.md5", f"{out}.raw.sha256", f"{out}.tar.md5",
        f"{out}.tar.sha256", f"{out}.xml"]
    assert lines["image cache"] == str(tmp_path / "c")
    assert lines["work directory"] == (f"on disk under {tmp_path / 'work'} "
                                       "(--no-tmpfs / DIB_NO_TMPFS)")
    assert lines["block device"].startswith("block-device-default.yaml of element "
                                            "block-device-mbr")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing made, not even out/


def test_dry_run_with_n_adds_nothing_and_still_checks(tmp_path):
    proc = _run(["--dry-run", "-n", "-o", str(tmp_path / "img"), "-t", "tar", "fake-os"],
                tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "  added: (none)\n" in proc.stdout
    bad = _run(["--dry-run", "-o", str(tmp_path / "img"), "fake-os"], tmp_path,
               DIB_QCOW2_COMPRESSION_TYPE="gzip")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("error: DIB_QCOW2_COMPRESSION_TYPE: must be one of zstd, zlib")


def test_a_bad_block_device_layout_fails_before_the_build(tmp_path):
    proc = _run(["--dry-run", "-o", str(tmp_path / "img"), "-t", "raw", "fake-os"], tmp_path,
                DIB_BLOCK_DEVICE_CONFIG="- local_loop: {name: image0, size: lots}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: DIB_BLOCK_DEVICE_CONFIG: block-device node 'image0', "
                                  "key 'size': 'lots' is not a size"), proc.stderr
