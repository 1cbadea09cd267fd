"""Parity with diskimage-builder's own resolver, run from the reference venv.

``bin/dib-host-setup --test`` (and so ``bin/dib-test``) creates it from PyPI, at the place
tests/lib/dibref.py names (``DIB_REFERENCE_VENV`` points elsewhere). Without it these tests skip
saying how to make it, and fail when ``CI`` is set: CI must run them. Our resolver runs on
dib's own elements directory and must give the same *set* (dib's order is arbitrary) for
realistic requests, fail where dib fails, and print ``--env`` text of the same shape. The
deliberate differences (argument order, repeated providers, comment lines) are pinned at the end,
against dib itself, so a change on either side shows up.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from dib.element import discover
from dib.errors import AlreadyProvided, DibError, ElementNotFound, MissingOperatingSystem
from dib.resolver import resolve
from tests.lib import dibref

PYTHON = dibref.PYTHON


@pytest.fixture(autouse=True, scope="module")
def reference_venv() -> None:
    """Skip without the reference venv, but fail in CI, where the parity checks must run."""
    if not PYTHON.exists():
        why = f"no diskimage-builder reference venv at {dibref.VENV}: {dibref.SETUP_HINT}"
        if os.environ.get("CI"):
            pytest.fail(why + " (CI is set: the parity tests must run)", pytrace=False)
        pytest.skip(why)


def run_dib(elements_path: Path, args: List[str], seed: str = "0"
            ) -> subprocess.CompletedProcess:
    env = dict(os.environ, ELEMENTS_PATH=str(elements_path), PYTHONHASHSEED=seed)
    return subprocess.run([str(PYTHON), "-m", "diskimage_builder.element_dependencies", *args],
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def dib_elements() -> Path:
    proc = subprocess.run(
        [str(PYTHON), "-c", "import diskimage_builder, os; "
                            "print(os.path.dirname(diskimage_builder.__file__))"],
        capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        pytest.fail(f"diskimage_builder does not import in {dibref.VENV}: {proc.stderr.strip()}"
                    f"\n{dibref.SETUP_HINT}", pytrace=False)
    return Path(proc.stdout.strip()) / "elements"


@pytest.fixture(scope="module")
def dib_catalogue(dib_elements):
    return discover([dib_elements])


COMBOS = [
    "vm debian-minimal block-device-mbr base",
    "vm ubuntu-minimal block-device-efi base",
    "vm debian block-device-gpt base",
    "base debian-minimal",
    "vm centos block-device-efi base",
    "ubuntu vm block-device-mbr base dhcp-all-interfaces",
    "debian-minimal vm block-device-mbr base devuser growroot",
    "fedora vm block-device-efi base",
    "vm rhel block-device-efi base",
    "vm centos-minimal block-device-gpt base",
    "vm opensuse-minimal block-device-mbr base",
    "base ubuntu-minimal vm block-device-efi cloud-init-datasources simple-init",
    "vm fedora-minimal block-device-efi base selinux-permissive",
    "vm zipl debian-minimal block-device-mbr base",  # zipl provides bootloader
    "gentoo vm block-device-efi base",
    "vm debian-minimal block-device-efi-lvm base",
]


@pytest.mark.parametrize("combo", COMBOS)
def test_same_element_set_as_diskimage_builder(combo, dib_elements, dib_catalogue):
    theirs = run_dib(dib_elements, combo.split())
    assert theirs.returncode == 0, theirs.stderr
    ours = resolve(combo.split(), dib_catalogue)
    assert set(ours.order) == set(theirs.stdout.split())
    assert len(ours.order) == len(set(ours.order))


def test_our_result_is_dibs_under_several_hash_seeds(dib_elements, dib_catalogue):
    combo = "ubuntu vm block-device-mbr base dhcp-all-interfaces".split()
    ours = set(resolve(combo, dib_catalogue).order)
    for seed in ("1", "2", "3"):
        assert set(run_dib(dib_elements, combo, seed).stdout.split()) == ours


@pytest.mark.parametrize("combo, ours, theirs", [
    ("nosuch base debian-minimal", ElementNotFound, "MissingElementException"),
    ("debian ubuntu", AlreadyProvided, "AlreadyProvidedException"),
    ("base vm block-device-mbr", MissingOperatingSystem, "MissingOSException"),
    ("vm ubuntu base", ElementNotFound, "MissingElementException"),  # no block-device
    ("vm debian-minimal zipl bootloader block-device-mbr base", AlreadyProvided,
     "AlreadyProvidedException"),
    # dib reaches 'operating-system' before its provider and reports it missing
    ("operating-system debian-minimal base", AlreadyProvided, "MissingElementException"),
])
def test_fails_where_diskimage_builder_fails(combo, ours, theirs, dib_elements, dib_catalogue):
    proc = run_dib(dib_elements, combo.split())
    assert proc.returncode != 0 and theirs in proc.stderr
    with pytest.raises(ours):
        resolve(combo.split(), dib_catalogue)


# -- --env ------------------------------------------------------------------------------

def _normalise_env(text: str) -> str:
    """Sort the words of IMAGE_ELEMENT and the pairs echoed by get_image_element_array (dib's
    order is set order); everything else must match byte for byte."""
    def sort_words(m: re.Match) -> str:
        return m.group(1) + " ".join(sorted(m.group(2).split())) + m.group(3)
    text = re.sub(r"^(export IMAGE_ELEMENT=')([^']*)(')$", sort_words, text, flags=re.M)
    return re.sub(r'^(  echo ")([^"]*?) (")$', sort_words, text, flags=re.M)


def test_env_output_has_the_same_shape_as_dibs(dib_elements, repo_root, subprocess_env):
    combo = "vm debian-minimal block-device-mbr base".split()
    theirs = run_dib(dib_elements, ["--env", *combo])
    assert theirs.returncode == 0, theirs.stderr
    # the combo names base and the block device: -n, so that element-info adds nothing
    ours = subprocess.run([sys.executable, str(repo_root / "bin" / "element-info"), "-n",
                           "--env", *combo],
                          env=dict(subprocess_env, ELEMENTS_PATH=str(dib_elements)),
                          capture_output=True, text=True, timeout=60)
    assert ours.returncode == 0, ours.stderr
    assert _normalise_env(ours.stdout) == _normalise_env(theirs.stdout)


# -- deliberate differences, pinned against dib itself --------------------------------------

OS = {"provides": ["operating-system"]}


def _outcome(elements: Path, catalogue, args: List[str]):
    proc = run_dib(elements, args)
    theirs = set(proc.stdout.split()) if proc.returncode == 0 else "error"
    try:
        ours = set(resolve(args, catalogue).order)
    except DibError:
        ours = "error"
    return ours, theirs


def test_argument_order_matters_to_dib_but_not_to_us(make_elements):
    root = make_elements({"os": OS, "a": {"deps": ["v"]}, "c": {"deps": ["b"]},
                          "b": {"provides": ["v"]}})
    cat = discover([root])
    expected = {"a", "b", "c", "os"}
    assert _outcome(root, cat, ["c", "a", "os"]) == (expected, expected)
    assert _outcome(root, cat, ["a", "c", "os"]) == (expected, "error")


@pytest.mark.parametrize("args, spec", [
    (["os", "os"], {"os": OS}),  # dib: operating-system: already provided by ['os']
    (["a", "os"], {"os": OS, "a": {"deps_text": "# a comment\nb\n"}, "b": {}}),  # '# a comment'
])
def test_where_dib_fails_and_we_do_not(make_elements, args, spec):
    root = make_elements(spec)
    ours, theirs = _outcome(root, discover([root]), args)
    assert theirs == "error" and ours == set(spec)
