"""bin/dib-host-setup and bin/dib-test: what each mode installs, when pip runs again, and what
the README's test command hands to pytest. Nothing here installs anything."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(script: str) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(script.replace("-", "_"),
                                                  str(ROOT / "bin" / script))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup() -> ModuleType:
    return load("dib-host-setup")


def nothing(_: str) -> bool:
    return False


def test_the_main_job_installs_no_test_client(setup):
    main = set(setup.missing_packages(False, nothing, nothing))
    test = set(setup.missing_packages(True, nothing, nothing))
    clients = set(setup.TEST_TOOLS.values()) | set(setup.TEST_PACKAGES)
    assert clients and not main & clients
    assert test == main | clients
    assert {"debootstrap", "qemu-utils", "grub-pc-bin"} <= main


def test_only_what_is_missing_is_installed(setup):
    present = set(setup.HOST_PACKAGES) | set(setup.TEST_PACKAGES)
    got = setup.missing_packages(True, lambda tool: tool != "skopeo", present.__contains__,
                                 extra=["python3.11-venv"])
    assert got == ["python3.11-venv", "skopeo"]
    assert setup.missing_packages(False, lambda tool: True, lambda pkg: True) == []


def test_debians_python_gets_its_venv_package(setup, tmp_path):
    system = tmp_path / "python3"
    system.symlink_to("/usr/bin/python3.11")  # resolved, as /usr/bin/python3 is
    assert setup.venv_packages(str(system), (3, 11), has_ensurepip=False) == ["python3.11-venv"]
    assert setup.venv_packages(str(system), (3, 11), has_ensurepip=True) == []
    # another interpreter (pyenv, a venv): apt has nothing for it
    assert setup.venv_packages("/root/.pyenv/versions/3.12.1/bin/python3", (3, 12),
                               has_ensurepip=False) == []


@pytest.fixture
def checkout(tmp_path) -> Path:
    (tmp_path / "setup.cfg").write_text("[options]\ninstall_requires = pyyaml\n")
    (tmp_path / "pyproject.toml").write_text("[build-system]\n")
    (tmp_path / ".venv").mkdir()
    return tmp_path


def record(setup, checkout: Path, extras: str) -> None:
    setup.stamp_file(checkout / ".venv", extras).write_text(
        setup.install_stamp(checkout, extras) + "\n")


def test_pip_runs_until_the_install_is_recorded(setup, checkout):
    venv = checkout / ".venv"
    assert setup.pip_needed(venv, checkout, "")
    record(setup, checkout, "")
    assert not setup.pip_needed(venv, checkout, "")
    assert setup.pip_needed(venv, checkout, "test")  # the main install lacks pytest


def test_a_test_install_serves_the_main_job(setup, checkout):
    record(setup, checkout, "test")
    assert not setup.pip_needed(checkout / ".venv", checkout, "")
    assert not setup.pip_needed(checkout / ".venv", checkout, "test")


@pytest.mark.parametrize("changed", ["setup.cfg", "pyproject.toml"])
def test_changed_packaging_installs_again(setup, checkout, changed):
    record(setup, checkout, "test")
    with open(checkout / changed, "a") as f:
        f.write("# new dependency\n")
    assert setup.pip_needed(checkout / ".venv", checkout, "test")
    assert setup.pip_needed(checkout / ".venv", checkout, "")


def test_dib_test_runs_the_suite_in_the_checkouts_venv():
    dib_test = load("dib-test")
    python = ROOT / ".venv" / "bin" / "python"
    assert dib_test.pytest_argv(python, [], ROOT) == [str(python), "-m", "pytest", "-q", "-rs",
                                                      "tests"]
    elsewhere = dib_test.pytest_argv(python, [], ROOT / "docs")
    assert os.path.normpath(ROOT / "docs" / elsewhere[-1]) == str(ROOT / "tests")
    assert dib_test.pytest_argv(python, ["tests/unit", "-x"], ROOT)[3:] == ["tests/unit", "-x"]
