"""diskimage-builder's own functional tests, run by dib: every ``<element>/test-elements/<test>``
of its library, built the way its ``run_functests.sh`` builds them.

For each test element: ``disk-image-create -n -t tar[,qcow2] <element> <test>`` with
``ELEMENTS_PATH=<element>/test-elements:<library>``; a qcow2 only when the set makes a disk
(``vm``), since tar is all the check needs. The build must succeed and the tree must not
hold ``/tmp/dib-test-should-fail``; a test element whose hooks create that file is an
expected failure, which must fail in one of the test element's own scripts.

Most cannot run on this machine: only the Debian mirror is reachable (no Ubuntu, CentOS,
Fedora, openSUSE, Gentoo or openEuler mirror, no container registry), and the host has no
qemu-user/binfmt_misc for foreign architectures. :func:`cannot_run_here` gives the reason,
which the skip shows; docs/dib-library.md lists them all.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import List, Optional

import pytest

from dib import element, errors, mirror, resolver
from tests.e2e.test_dib_library import CACHE, ROOT, library_elements
from tests.lib import dibref
from tests.lib.leaks import assert_clean

#: operating-system elements that need something this machine cannot reach
NO_MIRROR = {
    "ubuntu": "the Ubuntu archive and cloud images", "ubuntu-minimal": "the Ubuntu archive",
    "ubuntu-systemd-container": "the Ubuntu archive", "centos": "CentOS cloud images",
    "centos-minimal": "a CentOS mirror", "fedora": "Fedora cloud images",
    "fedora-minimal": "a Fedora mirror", "opensuse": "openSUSE images",
    "opensuse-minimal": "an openSUSE mirror", "gentoo": "a Gentoo stage3 mirror",
    "openeuler-minimal": "an openEuler mirror",
    "containerfile": "a container registry and podman or docker",
}
FOREIGN = ("arm64", "aarch64")


def functest_cases() -> List[str]:
    """``<element>/<test>`` for every test element of the reference library."""
    if not dibref.PYTHON.exists():
        return ["(no reference venv)"]
    lib = Path(subprocess.run([os.fspath(dibref.PYTHON), "-c", "import diskimage_builder.paths "
                               "as p; print(p.get_path('elements'))"], capture_output=True,
                              text=True, check=True).stdout.strip())
    return sorted(f"{t.parent.parent.name}/{t.name}" for t in lib.glob("*/test-elements/*")
                  if t.is_dir())


def _discover_quietly(path: str) -> element.Catalogue:
    """The catalogue of ``path`` without its "overrides" warnings (expected here); the
    logger is restored, so tests that check those warnings still see them."""
    quiet = logging.getLogger("dib.element")
    was, quiet.disabled = quiet.disabled, True
    try:
        return element.discover(element.search_path(path))
    finally:
        quiet.disabled = was


def cannot_run_here(lib: Path, elem: str, test: str) -> Optional[str]:
    """Why ``elem/test`` cannot build on this machine, or None."""
    cat = _discover_quietly(f"{lib / elem / 'test-elements'}:{lib}")
    try:
        res = resolver.resolve(resolver.implicit_elements([elem, test], skip_base=True,
                                                          arch="amd64"), cat)
    except errors.DibError as exc:
        return f"does not resolve (as in diskimage-builder, which adds a block-device " \
               f"element only for a literal 'vm' argument): {exc}"
    os_elements = [n for n in res.order if "operating-system" in res.elements[n].provides]
    os_name = os_elements[0] if os_elements else "none"
    if os_name in NO_MIRROR:
        return f"{os_name}: needs {NO_MIRROR[os_name]}; only the Debian mirror is reachable here"
    if any(word in test for word in FOREIGN):
        return ("foreign architecture (arm64): needs qemu-user-static and binfmt_misc on the "
                "build host, which this machine lacks")
    if os_name != "debian-minimal":
        return f"operating system {os_name}: not a Debian build"
    return None


@pytest.mark.parametrize("case", functest_cases())
def test_functional_test_element(case, tmp_path):
    lib = library_elements()
    elem, test = case.split("/")
    reason = cannot_run_here(lib, elem, test)
    if reason:
        pytest.skip(reason)
    test_dir = lib / elem / "test-elements" / test
    should_fail = any("dib-test-should-fail" in f.read_text(errors="replace")
                      for f in test_dir.rglob("*") if f.is_file())
    cat = element.discover(element.search_path(f"{test_dir.parent}:{lib}"))
    res = resolver.resolve([elem, test], cat)
    types = "tar,qcow2" if "vm" in res.order else "tar"
    choice = mirror.select_mirrors("debian", os.environ, mirror.host_os_id(),
                                   mirror.host_entries())
    env = dict(os.environ, ELEMENTS_PATH=f"{test_dir.parent}:{lib}",
               TMP_DIR=os.fspath(tmp_path / "tmp"), DIB_IMAGE_CACHE=os.fspath(CACHE),
               OVERWRITE_OLD_IMAGE="1")
    if choice.mirror:
        env["DIB_DISTRIBUTION_MIRROR"] = choice.mirror
    if choice.security:
        env["DIB_DEBIAN_SECURITY_MIRROR"] = choice.security
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "image"
    proc = subprocess.run([sys.executable, os.fspath(ROOT / "bin" / "disk-image-create"), "-n",
                           "--no-cache", "-t", types, "-o", os.fspath(out), elem, test],
                          env=env, capture_output=True, text=True, timeout=2400)
    assert_clean(tmp_path)
    if should_fail:
        assert proc.returncode != 0, "expected to fail"
        assert f"element '{test}'" in proc.stderr, proc.stderr[-3000:]
        return
    assert proc.returncode == 0, proc.stderr[-4000:]
    with tarfile.open(f"{out}.tar") as tar:
        names = {n[2:] if n.startswith("./") else n for n in tar.getnames()}
    assert "tmp/dib-test-should-fail" not in names
    assert {"etc/os-release", "boot"} <= names  # a whole system, with its kernel's directory
    if "vm" in res.order:
        assert Path(f"{out}.qcow2").stat().st_size > 0
