"""dib.dibcompat: what diskimage-builder's own elements get from the engine -- the sudo shim,
an interpreter that imports diskimage_builder (``DIB_PYTHON_EXEC``, ``_LIB``), the
block-device values and ``dib-block-device getval``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dib import blockdev, cli, dibcompat, element
from dib.errors import DibError
from tests.lib import dibref

SUDO = dibcompat.HOOKBIN / "sudo"
BLOCK_DEVICE = dibcompat.HOOKBIN / "dib-block-device"
REPO = Path(__file__).resolve().parents[2]


def _fake_library(site: Path, elements=("t-lib",), needs_python=True) -> Path:
    """A diskimage_builder package below ``site`` with elements; returns the package."""
    pkg = dibref.fake_package(site)
    for name in elements:
        hook = pkg / "elements" / name / "extra-data.d" / f"10-{name}"
        hook.parent.mkdir(parents=True)
        hook.write_text("#!/bin/bash\n" + ("$DIB_PYTHON_EXEC -c 'import diskimage_builder'\n"
                                           if needs_python else "true\n"))
    return pkg


def _fake_python(path: Path, lib: Path = None) -> Path:
    """An executable that answers the probe like a Python with (or without) diskimage_builder."""
    body = (f"echo {lib}\n" if lib is not None
            else "echo 'No module named diskimage_builder' >&2\nexit 1\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


# -- finding diskimage-builder's library and interpreter -------------------------------------

def test_library_package_recognises_elements_of_the_package(tmp_path):
    pkg = _fake_library(tmp_path / "lib" / "python3.11" / "site-packages")
    assert dibcompat.library_package(pkg / "elements" / "t-lib") == pkg
    assert dibcompat.library_package(REPO / "elements" / "vm") is None
    # an "elements" directory inside some other package is not diskimage-builder's
    other = tmp_path / "other" / "elements" / "x"
    other.mkdir(parents=True)
    assert dibcompat.library_package(other) is None


def test_venv_python_of_an_installed_library(tmp_path):
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    pkg = _fake_library(site)
    python = _fake_python(tmp_path / "venv" / "bin" / "python3.11", pkg / "lib")
    assert dibcompat.venv_pythons(pkg)[0] == python
    found = dibcompat.find_library_python({}, [pkg], engine_python="/nonexistent/python")
    assert (found.python, found.lib) == (os.fspath(python), pkg / "lib")


def test_a_source_checkout_has_no_venv_python(tmp_path):
    pkg = _fake_library(tmp_path / "diskimage-builder")
    assert dibcompat.venv_pythons(pkg) == []


def test_the_callers_dib_python_exec_wins(tmp_path):
    pkg = _fake_library(tmp_path / "venv" / "lib" / "python3.11" / "site-packages")
    _fake_python(tmp_path / "venv" / "bin" / "python3", pkg / "lib")
    mine = _fake_python(tmp_path / "mine" / "python", tmp_path / "venv")
    found = dibcompat.find_library_python({"DIB_PYTHON_EXEC": os.fspath(mine)}, [pkg])
    assert found.python == os.fspath(mine)
    assert found.lib == tmp_path / "venv"


def test_engine_python_when_it_imports_diskimage_builder(tmp_path):
    engine = _fake_python(tmp_path / "engine" / "python3", tmp_path)
    found = dibcompat.find_library_python({}, [], engine_python=os.fspath(engine))
    assert (found.python, found.lib) == (os.fspath(engine), tmp_path)


def test_hook_env_sets_python_lib_and_engine_python(tmp_path):
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    pkg = _fake_library(site)
    python = _fake_python(tmp_path / "venv" / "bin" / "python3", pkg / "lib")
    env = dibcompat.hook_env({}, [("t-lib", pkg / "elements" / "t-lib")],
                             engine_python="/engine/python3")
    assert env == {"DIB_PYTHON_EXEC": os.fspath(python), "_LIB": os.fspath(pkg / "lib"),
                   "DIB_ENGINE_PYTHON": "/engine/python3"}


def test_missing_package_is_an_error_naming_the_element(tmp_path):
    pkg = _fake_library(tmp_path / "checkout", elements=("t-needs",))
    engine = _fake_python(tmp_path / "engine" / "python3")  # cannot import it either
    with pytest.raises(DibError) as exc:
        dibcompat.hook_env({}, [("t-needs", pkg / "elements" / "t-needs")],
                           engine_python=os.fspath(engine))
    assert "t-needs" in str(exc.value)
    assert "pip install diskimage-builder" in exc.value.hint
    assert "dib[dib-elements]" in exc.value.hint


def test_a_bad_dib_python_exec_is_named(tmp_path):
    pkg = _fake_library(tmp_path / "checkout", elements=("t-needs",))
    bad = _fake_python(tmp_path / "bad" / "python")
    with pytest.raises(DibError) as exc:
        dibcompat.hook_env({"DIB_PYTHON_EXEC": os.fspath(bad)},
                           [("t-needs", pkg / "elements" / "t-needs")])
    assert f"DIB_PYTHON_EXEC={bad}" in str(exc.value)


def test_no_error_when_no_element_needs_the_package(tmp_path):
    pkg = _fake_library(tmp_path / "checkout", elements=("t-plain",), needs_python=False)
    engine = _fake_python(tmp_path / "engine" / "python3")
    env = dibcompat.hook_env({}, [("t-plain", pkg / "elements" / "t-plain"),
                                  ("vm", REPO / "elements" / "vm")],
                             engine_python=os.fspath(engine))
    assert env["DIB_PYTHON_EXEC"] == os.fspath(engine)
    assert "_LIB" not in env


def test_winners_dir_links_each_resolved_element(tmp_path):
    a = tmp_path / "one" / "a"
    b = tmp_path / "two" / "b"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    d = dibcompat.winners_dir(tmp_path / "elements", [("a", a), ("b", b)])
    assert sorted(p.name for p in d.iterdir()) == ["a", "b"]
    assert (d / "a").resolve() == a and (d / "b").resolve() == b


# -- the sudo shim ---------------------------------------------------------------------------

def _sudo(*argv: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([os.fspath(SUDO), *argv], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd="/")


@pytest.mark.parametrize("options", [
    [], ["-E"], ["-n", "-H"], ["-EH"], ["-u", "root"], ["-uroot"], ["--user=root", "-E"],
    ["--preserve-env=http_proxy,T_SUDO"], ["--preserve-env"], ["-n", "--"],
])
def test_sudo_drops_its_options_and_keeps_the_environment(options):
    r = _sudo(*options, "sh", "-c", 'echo "$T_SUDO:$#:$1"', "x", "arg",
              env={"T_SUDO": "kept"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == "kept:1:arg\n"


def test_sudo_passes_the_exit_status_and_assignments():
    assert _sudo("sh", "-c", "exit 7").returncode == 7
    r = _sudo("-E", "T_A=1", "T_B=two words", "sh", "-c", 'echo "$T_A/$T_B"')
    assert r.stdout == "1/two words\n"


def test_sudo_chdir_shell_and_self_queries(tmp_path):
    assert _sudo("-D", os.fspath(tmp_path), "pwd").stdout.strip() == os.fspath(tmp_path)
    assert _sudo("-s", "echo a; echo b").stdout == "a\nb\n"
    for query in (["-v"], ["-k"], ["-n", "-v"]):
        r = _sudo(*query)
        assert (r.returncode, r.stdout) == (0, "")


# -- the block-device values -------------------------------------------------------------------

CONFIG = """
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: mbr
    partitions:
      - name: boot
        size: 100MiB
        mkfs:
          type: ext4
          label: t-boot
          mount:
            mount_point: /boot
      - name: root
        size: 100%
        mkfs:
          name: mkfs_root
          type: xfs
          label: t-root
          mount:
            mount_point: /
"""


def _params(tmp_path: Path) -> blockdev.Params:
    return blockdev.Params(image_dir=tmp_path / "image", mount_base=tmp_path / "mnt",
                           root_fs_type="ext4", root_label="cloudimg-rootfs")


def test_block_device_env_comes_from_the_config(tmp_path):
    env = dibcompat.block_device_env(tmp_path, CONFIG, _params(tmp_path))
    assert env["DIB_ROOT_LABEL"] == "t-root"
    assert env["DIB_ROOT_FSTYPE"] == "xfs"
    assert env["DIB_BOOT_LABEL"] == "t-boot"
    assert env["DIB_MOUNTPOINTS"] == "/|/boot"
    params = yaml.safe_load(Path(env["DIB_BLOCK_DEVICE_PARAMS_YAML"]).read_text())
    assert params["build-dir"] == os.fspath(tmp_path)
    assert params["mount-base"] == os.fspath(tmp_path / "mnt")
    assert Path(params["config"]).read_text() == CONFIG


def test_default_config_has_no_boot_label(tmp_path):
    env = dibcompat.block_device_env(tmp_path, blockdev.default_config_text(),
                                     _params(tmp_path))
    assert (env["DIB_BOOT_LABEL"], env["DIB_MOUNTPOINTS"]) == ("", "/")
    assert env["DIB_ROOT_LABEL"] == "cloudimg-rootfs"


def _getval(tmp_path: Path, symbol: str, params_yaml: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DIB_ENGINE_PYTHON": sys.executable, "PYTHONPATH": os.fspath(REPO),
           "DIB_BLOCK_DEVICE_PARAMS_YAML": params_yaml}
    return subprocess.run([os.fspath(BLOCK_DEVICE), "getval", symbol], capture_output=True,
                          text=True, env=env)


def test_dib_block_device_getval_before_and_after_the_disk(tmp_path):
    env = dibcompat.block_device_env(tmp_path, CONFIG, _params(tmp_path))
    params = env["DIB_BLOCK_DEVICE_PARAMS_YAML"]
    assert _getval(tmp_path, "root-fstype", params).stdout == "xfs\n"
    assert _getval(tmp_path, "mount-points", params).stdout == "/|/boot\n"
    early = _getval(tmp_path, "image-block-device", params)
    assert early.returncode != 0 and "does not exist yet" in early.stderr
    created = dibcompat.disk_created(
        tmp_path, image_path=tmp_path / "image" / "image0.raw", image_block_device="/dev/loop9",
        image_block_devices={"image0": "/dev/loop9", "root": "/dev/loop9p2"},
        image_size=3 << 30)
    assert created["DIB_IMAGE_SIZE"] == str(3 << 20)  # KiB, as diskimage-builder exports it
    assert _getval(tmp_path, "image-block-device", params).stdout == "/dev/loop9\n"
    assert _getval(tmp_path, "image-path", params).stdout.strip().endswith("image0.raw")
    devices = _getval(tmp_path, "image-block-devices", params).stdout
    r = subprocess.run(["bash", "-c", f'declare -A d; eval "d=( {devices.strip()} )"; '
                                      'echo "${d[root]}"'], capture_output=True, text=True)
    assert r.stdout == "/dev/loop9p2\n"
    unknown = _getval(tmp_path, "no-such-thing", params)
    assert unknown.returncode != 0 and "unknown symbol" in unknown.stderr


def test_dib_block_device_refuses_to_create(tmp_path):
    env = dibcompat.block_device_env(tmp_path, CONFIG, _params(tmp_path))
    r = subprocess.run([os.fspath(BLOCK_DEVICE), "create"], capture_output=True, text=True,
                       env={**os.environ, "DIB_ENGINE_PYTHON": sys.executable,
                            "PYTHONPATH": os.fspath(REPO), **env})
    assert r.returncode != 0 and "getval" in r.stderr


# -- element-info --builtin-path --------------------------------------------------------------

def test_element_info_builtin_path(capsys):
    assert cli.element_info(["--builtin-path"]) == 0
    assert Path(capsys.readouterr().out.strip()) == element.builtin_elements_dir()
