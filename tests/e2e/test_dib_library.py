"""diskimage-builder's own element library runs unchanged (docs/elements.md,
"diskimage-builder's element library").

The library comes from the reference venv (tests/lib/dibref.py: diskimage-builder from PyPI).
Two images, each built once:

* ``vm debian-minimal block-device-mbr`` with every element taken from diskimage-builder's
  library -- its hooks call sudo, run its Python helpers through ``$DIB_PYTHON_EXEC`` and
  read the block-device values -- booted to a login prompt under TCG;
* ours first, diskimage-builder's for the rest: our ``vm debian`` plus elements only
  diskimage-builder has (dhcp-all-interfaces, cloud-init-nocloud, pip-and-virtualenv,
  svc-map), each element's effect checked in the image, then booted.

diskimage-builder's debian-minimal defaults to its own mirror and security archive: the
builds take both from the host's apt sources, as our debian element would.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import pytest

from dib import boottest, mirror
from tests.lib import dibref
from tests.lib.leaks import assert_clean

ROOT = Path(__file__).resolve().parents[2]
TEST_ELEMENTS = ROOT / "tests" / "elements"
CACHE = Path(os.environ.get("DIB_E2E_CACHE", "/var/tmp/dib-e2e-cache"))
MARKER = r"DIB-BOOT-MARKER state=(\S+) failed=(\d+) root=(\S+) os=(\S+)"
#: elements only diskimage-builder has, whose effects the mixed image checks
DIB_ONLY = ("dhcp-all-interfaces", "cloud-init-nocloud", "pip-and-virtualenv", "svc-map")


def library_elements() -> Path:
    """diskimage-builder's elements directory in the reference venv; skip without it (fail
    on CI, which must have it)."""
    if not dibref.PYTHON.exists():
        message = f"no diskimage-builder reference venv at {dibref.VENV}: {dibref.SETUP_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = subprocess.run([os.fspath(dibref.PYTHON), "-c", "import diskimage_builder.paths as p; "
                          "print(p.get_path('elements'))"], capture_output=True, text=True,
                         check=True).stdout.strip()
    return Path(out)


def mirror_env() -> Dict[str, str]:
    """Mirrors for diskimage-builder's debian-minimal: the caller's, else the host's."""
    choice = mirror.select_mirrors("debian", os.environ, mirror.host_os_id(),
                                   mirror.host_entries())
    env = {"DIB_RELEASE": "bookworm"}
    if choice.mirror:
        env["DIB_DISTRIBUTION_MIRROR"] = choice.mirror
    if choice.security:
        env["DIB_DEBIAN_SECURITY_MIRROR"] = choice.security
    return env


def build(tmp: Path, name: str, elements_path: Sequence[Path], args: Sequence[str],
          env: Optional[Dict[str, str]] = None) -> Path:
    full_env = dict(os.environ, ELEMENTS_PATH=":".join(map(os.fspath, elements_path)),
                    TMP_DIR=os.fspath(tmp / "tmp"), DIB_IMAGE_CACHE=os.fspath(CACHE),
                    OVERWRITE_OLD_IMAGE="1", **mirror_env(), **(env or {}))
    (tmp / "tmp").mkdir(parents=True, exist_ok=True)
    out = tmp / name
    # --no-cache: the library's hooks really run each time (a warm layer or image cache
    # would hide a change of the hook environment, which is no part of the cache keys)
    proc = subprocess.run([sys.executable, os.fspath(ROOT / "bin" / "disk-image-create"),
                           "--no-cache", "-o", os.fspath(out), *args], env=full_env,
                          capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_clean(tmp)
    return out


def resolution(elements_path: Sequence[Path], *names: str) -> Dict[str, Path]:
    """{element: directory} as ``element-info --json`` resolves ``names``."""
    env = dict(os.environ, ELEMENTS_PATH=":".join(map(os.fspath, elements_path)))
    out = subprocess.run([sys.executable, os.fspath(ROOT / "bin" / "element-info"), "--json",
                          *names], env=env, capture_output=True, text=True, check=True).stdout
    return {e["name"]: Path(e["path"]) for e in json.loads(out)["elements"]}


def builtin_path() -> Path:
    out = subprocess.run([sys.executable, os.fspath(ROOT / "bin" / "element-info"),
                          "--builtin-path"], capture_output=True, text=True, check=True).stdout
    return Path(out.strip())


def boot(image: Path, tmp: Path, expect: List[str]) -> str:
    result = boottest.boot(image, tmp / "boot", expect=expect, timeout=900)
    assert result.passed, result.failure + "\n" + result.serial_text()[-3000:]
    return result.serial_text()


@contextlib.contextmanager
def root_filesystem(raw: Path) -> Iterator[Callable[[str], Optional[str]]]:
    """``read(path)`` of files in the first partition of ``raw`` (debugfs, read-only)."""
    table = json.loads(subprocess.run(["sfdisk", "--json", os.fspath(raw)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    start = table["partitions"][0]["start"] * table.get("sectorsize", 512)
    loop = subprocess.run(["losetup", "--show", "-f", "-r", "--offset", str(start),
                           os.fspath(raw)], capture_output=True, text=True,
                          check=True).stdout.strip()

    def read(path: str) -> Optional[str]:
        r = subprocess.run(["debugfs", "-R", f"cat {path}", loop], capture_output=True,
                           text=True, errors="replace")
        return None if "File not found" in r.stderr else r.stdout

    try:
        yield read
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)


def installed(status: str) -> Dict[str, str]:
    """{package: Status} from /var/lib/dpkg/status."""
    found = {}
    for stanza in status.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, re.M))
        if "Package" in fields:
            found[fields["Package"]] = fields.get("Status", "")
    return found


# -- every element from diskimage-builder's library --------------------------------------------

@pytest.fixture(scope="module")
def dib_only_image(scratch) -> Path:
    lib = library_elements()
    tmp = scratch("dib-library")
    return build(tmp, "dibonly", [lib], ["-t", "qcow2", "vm", "debian-minimal",
                                         "block-device-mbr"])


def test_every_element_comes_from_the_library():
    lib = library_elements()
    found = resolution([lib], "base", "vm", "debian-minimal", "block-device-mbr")
    assert {"debootstrap", "dpkg", "package-installs", "bootloader"} <= set(found)
    assert all(path.parent == lib for path in found.values()), found


def test_dib_library_image_builds_and_boots_to_login(dib_only_image, tmp_path):
    log = (dib_only_image.parent / f"{dib_only_image.name}.d" / "build.log").read_text()
    # diskimage-builder's own helpers ran with the reference venv's interpreter
    assert re.search(r"DIB_PYTHON_EXEC=\S+ \(the environment of ", log)
    for hook in ("08-debootstrap", "99-squash-package-install", "50-bootloader"):
        assert f"/{hook}  (element " in log
    boot(Path(f"{dib_only_image}.qcow2"), tmp_path, [r"login: "])


# -- ours first, diskimage-builder's for the rest ---------------------------------------------

def mixed_path() -> List[Path]:
    return [builtin_path(), library_elements(), TEST_ELEMENTS]


MIXED = ("vm", "debian", *DIB_ONLY, "t-svc-map", "t-boot-marker")


@pytest.fixture(scope="module")
def mixed_image(scratch) -> Path:
    path = mixed_path()
    tmp = scratch("dib-library-mixed")
    # pip-and-virtualenv's default (source) fetches get-pip.py from outside the mirror
    return build(tmp, "mixed", path, ["-t", "qcow2,raw", *MIXED],
                 env={"DIB_INSTALLTYPE_pip_and_virtualenv": "package"})


def test_ours_first_and_diskimage_builders_for_the_rest():
    path = mixed_path()
    found = resolution(path, "base", "block-device-mbr", *MIXED)
    for name in ("vm", "debian", "debian-minimal", "dpkg", "package-installs", "bootloader",
                 "base"):
        assert found[name].parent == path[0], name
    for name in (*DIB_ONLY, "dib-python"):
        assert found[name].parent == path[1], name


@pytest.fixture(scope="module")
def mixed_files(mixed_image) -> Iterator[Callable[[str], Optional[str]]]:
    with root_filesystem(Path(f"{mixed_image}.raw")) as read:
        yield read


def test_dhcp_all_interfaces_is_installed(mixed_files):
    script = mixed_files("/usr/local/sbin/dhcp-all-interfaces.sh")
    assert script and script.startswith("#!/bin/bash")
    unit = mixed_files("/usr/lib/systemd/system/dhcp-interface@.service")
    assert unit and "TimeoutStartSec=60s" in unit  # DIB_DHCP_TIMEOUT (30) doubled
    rule = mixed_files("/etc/udev/rules.d/99-dhcp-all-interfaces.rules")
    assert rule and "dhcp-interface@$name.service" in rule
    packages = installed(mixed_files("/var/lib/dpkg/status") or "")
    for pkg in ("ifupdown", "isc-dhcp-client"):
        assert packages.get(pkg) == "install ok installed", pkg


def test_cloud_init_nocloud_seeds_and_selects_the_datasource(mixed_files):
    assert mixed_files("/var/lib/cloud/seed/nocloud/meta-data") == ""
    assert mixed_files("/var/lib/cloud/seed/nocloud/user-data") == ""
    # its environment.d sets DIB_CLOUD_INIT_DATASOURCES for our cloud-init-datasources
    cfg = mixed_files("/etc/cloud/cloud.cfg.d/91-dib-cloud-init-datasources.cfg")
    assert cfg and "datasource_list: [ NoCloud, None ]" in cfg


def test_pip_and_virtualenv_packages_are_installed(mixed_files):
    packages = installed(mixed_files("/var/lib/dpkg/status") or "")
    for pkg in ("python3-pip", "python3-virtualenv", "python3-venv"):
        assert packages.get(pkg) == "install ok installed", pkg
    # dib-python's build-time interpreter link is gone again (its cleanup.d)
    assert mixed_files("/usr/local/bin/dib-python") is None


def test_svc_map_maps_the_service_for_debian(mixed_files):
    services = mixed_files("/usr/share/svc-map/services")
    assert services and "t-svc: t-svc-debian" in services
    assert (mixed_files("/etc/t-svc-map") or "").strip() == "t-svc-debian"


def test_mixed_image_boots_with_no_failed_unit(mixed_image, tmp_path):
    text = boot(Path(f"{mixed_image}.qcow2"), tmp_path, [r"login: ", MARKER])
    state, failed, root, os_id = re.search(MARKER, text).groups()
    assert (state, failed) == ("running", "0"), text[-3000:]
    assert os_id == "debian-12"
