"""Elements from a diskimage-builder library get diskimage-builder's hook environment.

A stand-in for ``pip install diskimage-builder``: a real venv (no pip) whose site-packages
hold a small ``diskimage_builder`` package with two elements, one of which overrides an
element of the same name further down ELEMENTS_PATH. Built on fake-os (seconds); the hooks
record what they found: ``sudo`` on the host and in a chroot without sudo,
``DIB_PYTHON_EXEC`` importing diskimage_builder, ``_LIB``, ``dib-block-device getval``, the
block-device variables, and ELEMENTS_PATH holding only the copies that won.
"""
from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest

from tests.lib import builds, dibref
from tests.lib.elements import make_element

HOST_HOOK = """
out="$TMP_MOUNT_PATH/t-dibl"
mkdir -p "$out"
sudo -E sh -c 'echo "$T_DIBL_VAR"' > "$out/sudo-host"
sudo -n -u root -H true
$DIB_PYTHON_EXEC -c 'import diskimage_builder, sys; print(sys.prefix)' > "$out/python-prefix"
echo "$_LIB" > "$out/lib"
[ -f "$_LIB/disk-image-create" ] && echo yes > "$out/lib-ok"
dib-block-device getval root-label > "$out/getval-root-label"
echo "$DIB_MOUNTPOINTS" > "$out/mountpoints"
echo "${DIB_BOOT_LABEL-unset}" > "$out/boot-label"
readlink -f "$ELEMENTS_PATH/t-dup" > "$out/t-dup"
ls "$ELEMENTS_PATH" > "$out/elements-path"
"""

CHROOT_HOOK = """
command -v sudo > /t-dibl/sudo-which
sudo -E sh -c 'echo "$T_DIBL_VAR"' > /t-dibl/sudo-chroot
"""


def _library(base: Path) -> Path:
    """A venv with a fake diskimage_builder package; returns its elements directory."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(base / "venv")
    out = subprocess.run([os.fspath(base / "venv" / "bin" / "python3"), "-c",
                          "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    pkg = dibref.fake_package(Path(out))
    elements = pkg / "elements"
    make_element(elements, "t-dibl", deps=["t-dup"],
                 hooks={"extra-data.d": {"50-t-dibl": HOST_HOOK},
                        "install.d": {"50-t-dibl": CHROOT_HOOK}})
    make_element(elements, "t-dup", files={"t-dup-from": "library\n"})
    return elements


@pytest.fixture(scope="module")
def library_build(tmp_path_factory):
    with builds.Dib(tmp_path_factory.mktemp("dibcompat")) as dib:
        lib_elements = _library(dib.base)
        # a losing copy of t-dup after the library on ELEMENTS_PATH
        make_element(dib.elements, "t-dup", files={"t-dup-from": "later\n"})
        path = f"{lib_elements}:{builds.TEST_ELEMENTS}:{dib.elements}"
        result = dib.run("t-dibl", env={"ELEMENTS_PATH": path, "T_DIBL_VAR": "kept"})
        assert result.returncode == 0, result.stderr
        yield dib, lib_elements


def _read(dib: builds.Dib, name: str) -> str:
    return dib.read(f"t-dibl/{name}").decode().strip()


def test_sudo_runs_the_command_on_the_host_and_in_a_chroot_without_sudo(library_build):
    dib, _ = library_build
    assert _read(dib, "sudo-host") == "kept"
    assert _read(dib, "sudo-chroot") == "kept"
    assert _read(dib, "sudo-which") == "/tmp/in_target.d/dib-hookbin/sudo"


def test_python_exec_is_the_librarys_venv_and_lib_its_lib_dir(library_build):
    dib, lib_elements = library_build
    venv_dir = dib.base / "venv"
    assert Path(_read(dib, "python-prefix")).resolve() == venv_dir.resolve()
    assert Path(_read(dib, "lib")) == lib_elements.parent / "lib"
    assert _read(dib, "lib-ok") == "yes"


def test_block_device_values(library_build):
    dib, _ = library_build
    assert _read(dib, "getval-root-label") == "cloudimg-rootfs"
    assert _read(dib, "mountpoints") == "/"
    assert _read(dib, "boot-label") == ""


def test_elements_path_holds_only_the_winning_copies(library_build):
    dib, lib_elements = library_build
    assert Path(_read(dib, "t-dup")) == (lib_elements / "t-dup").resolve()
    assert _read(dib, "elements-path").split() == ["fake-os", "t-dibl", "t-dup"]


def test_missing_diskimage_builder_is_a_clear_error(tmp_path):
    with builds.Dib(tmp_path) as dib:
        lib_elements = _library(dib.base)
        path = f"{lib_elements}:{builds.TEST_ELEMENTS}"
        result = dib.run("t-dibl", env={"ELEMENTS_PATH": path, "DIB_PYTHON_EXEC": "/bin/false"})
    assert result.returncode != 0
    assert "t-dibl" in result.stderr
    assert "pip install diskimage-builder" in result.stderr
    assert "Traceback" not in result.stderr
