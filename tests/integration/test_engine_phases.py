"""Build engine: where every phase runs, what its scripts see, and in which order they run.

One build (module scope) of fake-os + t-probe + two generated elements whose hook names
interleave, with ``-p``; every test reads what the probes wrote into the image
(see tests/elements/t-probe/README.rst). The expectations come from the contract
(docs: dib-contract §b), not from dib.phases.
"""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Dict

import pytest
import yaml

from dib.config import host_arch
from tests.lib import builds
from tests.lib.elements import make_element

OUTSIDE = ("root.d", "extra-data.d", "post-root.d", "pre-finalise.d", "cleanup.d")
IN_CHROOT = ("pre-install.d", "install.d", "post-install.d", "finalise.d")
#: the nine phases of a build without a block device, in contract order
RUN_PHASES = ("root.d", "extra-data.d", "pre-install.d", "install.d", "post-install.d",
              "post-root.d", "pre-finalise.d", "finalise.d", "cleanup.d")
WITH_TARGET_ROOT = ("root.d", "post-root.d", "pre-finalise.d", "cleanup.d")

PROBE = 'source "$(dirname "$0")/../t-probe.bash"\nt_probe\n'
MARK = 'echo "$(basename "$(dirname "$0")")/$(basename "$0")" >> /var/lib/fake-os/installed\n'
CALLER_VALUE = "a b 'c\" $HOME"

#: run-parts order: numeric prefix (none = 0), then bytes -- across both elements
EXPECTED_ORDER = [
    "root.d/05-t-order-a", "root.d/50-t-probe", "root.d/90-t-order-b",
    "extra-data.d/50-t-probe",
    "pre-install.d/50-t-probe",
    "install.d/_t-order-u", "install.d/t-order-zed", "install.d/05-t-order-a",
    "install.d/9-t-order-b", "install.d/40-t-order-link", "install.d/050-t-order-b",
    "install.d/50-T-order-a", "install.d/50-t-order-b", "install.d/50-t-probe",
    "install.d/100-t-order-late",
    "post-install.d/50-t-probe",
    "post-root.d/50-t-probe",
    "pre-finalise.d/50-t-probe",
    "finalise.d/50-t-probe",
    "cleanup.d/10-t-order-b", "cleanup.d/50-t-probe", "cleanup.d/90-t-order-a",
]


def _write_elements(parent: Path) -> None:
    make_element(parent, "t-order-a", deps=["t-probe"], hooks={
        "root.d": {"05-t-order-a": PROBE},
        "install.d": {n: PROBE for n in ("t-order-zed", "05-t-order-a", "50-T-order-a",
                                         "100-t-order-late")},
        "cleanup.d": {"90-t-order-a": PROBE},
    }, files={"t-order-linked": "#!/bin/bash\nset -eu -o pipefail\n" + PROBE})
    a = parent / "t-order-a"
    (a / "t-order-linked").chmod(0o755)
    # a symlink to an executable file counts as that file (find -xtype f)
    (a / "install.d" / "40-t-order-link").symlink_to("../t-order-linked")
    make_element(parent, "t-order-b", deps=["t-probe"], hooks={
        "root.d": {"90-t-order-b": PROBE},
        "install.d": {n: PROBE for n in ("_t-order-u", "9-t-order-b", "050-t-order-b",
                                         "50-t-order-b", "60-t-order.sh")},
        "cleanup.d": {"10-t-order-b": PROBE},
    })
    b = parent / "t-order-b"
    # never run: a dotted name (above), a non-executable file, a sub-directory
    (b / "install.d" / "70-t-order-noexec").write_text("#!/bin/bash\n" + PROBE)
    (b / "install.d" / "80-t-order-dir").mkdir()
    (b / "install.d" / "80-t-order-dir" / "90-inside").write_text("#!/bin/bash\n" + PROBE)
    (b / "install.d" / "80-t-order-dir" / "90-inside").chmod(0o755)
    make_element(parent, "t-pkgmark", hooks={
        "pre-install.d": {"50-t-pkgmark": MARK},
        "install.d": {"10-t-pkgmark": MARK, "99-t-pkgmark": MARK},
        "post-install.d": {"01-t-pkgmark": MARK},
    })


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """The probe build: (Dib, finished process)."""
    with builds.Dib(tmp_path_factory.mktemp("probe")) as dib:
        _write_elements(dib.elements)
        caller_tmpdir = dib.base / "caller-tmpdir"
        caller_tmpdir.mkdir()
        result = dib.run("t-order-a", "t-order-b", "t-pkgmark",
                         args=["-p", "foo,bar", "-p", "baz"],
                         env={"DIB_TEST_X": CALLER_VALUE, "TMPDIR": os.fspath(caller_tmpdir),
                              "VIRTUAL_ENV": "/nonexistent/venv"})
        assert result.returncode == 0, result.stderr
        yield dib, result


def _facts(dib: builds.Dib, phase: str, script: str = "50-t-probe") -> Dict[str, str]:
    text = dib.read(f"t-probe/{phase}/{script}.facts").decode()
    return dict(line.split("=", 1) for line in text.splitlines())


def _env(dib: builds.Dib, phase: str, script: str = "50-t-probe") -> Dict[str, str]:
    raw = dib.read(f"t-probe/{phase}/{script}.env").decode()
    return dict(item.split("=", 1) for item in raw.split("\0") if item)


def test_build_prints_its_output(probe):
    dib, result = probe
    assert result.stdout.split() == [os.fspath(dib.image())]
    assert dib.workdirs() == []


def test_phases_and_scripts_run_in_contract_order(probe):
    dib, _ = probe
    order = dib.read("t-probe/order").decode().split()
    assert order == EXPECTED_ORDER
    phases_seen = list(dict.fromkeys(line.split("/")[0] for line in order))
    assert phases_seen == list(RUN_PHASES)


def test_block_device_phase_is_skipped_without_a_disk_output(probe):
    dib, _ = probe
    members = dib.members()
    assert "t-probe/block-device.d" not in members
    assert not any(m.startswith("t-probe/block-device.d/") for m in members)
    assert "block-device.d skipped" in dib.logfile().read_text()
    phases = [p["phase"] for p in dib.report()["phases"] if p["phase"].endswith(".d")]
    assert phases == list(RUN_PHASES)


def test_run_parts_skips_dotted_unexecutable_and_nested_names(probe):
    dib, _ = probe
    log = dib.logfile().read_text()
    for name in ("60-t-order.sh", "70-t-order-noexec", "80-t-order-dir", "90-inside"):
        assert name not in dib.read("t-probe/order").decode()
        assert f"install.d/{name}  (element" not in log


@pytest.mark.parametrize("phase", RUN_PHASES)
def test_phase_runs_in_or_out_of_the_chroot(probe, phase):
    dib, _ = probe
    facts = _facts(dib, phase)
    host = os.stat("/")
    host_root = f"{host.st_dev}:{host.st_ino}"
    if phase in IN_CHROOT:
        assert facts["root"] != host_root
        assert facts["os"] == "fake-os"
        # the hooks tree, read-only, holding this very script
        assert facts["in_target"] == "ro"
        assert facts["in_target_hook"] == "yes"
        # what extra-data.d put into TMP_HOOKS_PATH
        assert facts["extra_data"] == "from extra-data.d"
    else:
        assert facts["root"] == host_root
        assert facts["os"] != "fake-os"
        assert facts["hooks_dir"] == "yes"


@pytest.mark.parametrize("phase", RUN_PHASES)
def test_phase_environment(probe, phase):
    dib, _ = probe
    env = _env(dib, phase)
    build_dirs = [Path(env[k]) for k in ("TMP_HOOKS_PATH", "TMP_MOUNT_PATH")]
    for d in build_dirs:
        assert d.parent.parent.parent == dib.tmp_dir
        assert d.parent.parent.name.startswith("dib_build.")
    if phase in WITH_TARGET_ROOT:
        assert env["TARGET_ROOT"] == env["TMP_MOUNT_PATH"]
    else:
        assert "TARGET_ROOT" not in env
    if phase in IN_CHROOT:
        assert env["HOME"] == "/root"
    assert env["ARCH"] == host_arch()
    assert env["IMAGE_NAME"] == os.fspath(dib.out / "img")
    order = env["IMAGE_ELEMENT"].split()
    assert sorted(order) == ["fake-os", "t-order-a", "t-order-b", "t-pkgmark", "t-probe"]
    assert order.index("t-probe") < min(order.index("t-order-a"), order.index("t-order-b"))
    paths = yaml.safe_load(env["IMAGE_ELEMENT_YAML"])
    assert paths["t-probe"] == os.fspath(builds.TEST_ELEMENTS / "t-probe")
    assert paths["t-order-a"] == os.fspath(dib.elements / "t-order-a")
    assert set(paths) == set(env["IMAGE_ELEMENT"].split())
    assert _facts(dib, phase)["array"] == paths["t-probe"]
    assert env["DIB_TEST_X"] == CALLER_VALUE
    assert f"export DIB_TEST_X={shlex.quote(CALLER_VALUE)}" in env["DIB_ENV"]
    for dropped in ("TMPDIR", "VIRTUAL_ENV"):
        assert dropped not in env


def test_build_paths_are_the_same_in_every_phase(probe):
    dib, _ = probe
    seen = {k: {_env(dib, p)[k] for p in RUN_PHASES}
            for k in ("TMP_HOOKS_PATH", "TMP_MOUNT_PATH", "TMP_BUILD_DIR")}
    assert all(len(v) == 1 for v in seen.values()), seen


@pytest.mark.parametrize("phase", RUN_PHASES)
def test_environment_d_is_sourced_where_the_phase_runs(probe, phase):
    dib, _ = probe
    env = _env(dib, phase)
    where = "chroot" if phase in IN_CHROOT else "host"
    assert env["T_PROBE_ENV_WHERE"] == where
    assert env["T_PROBE_ENV_EXPORTED"] == "exported"
    # the files share one shell, in order; only what they export reaches the scripts
    assert env["T_PROBE_ENV_CHAIN"] == f"{where}+not-exported"
    assert "T_PROBE_ENV_LOCAL" not in env


def test_environment_d_files_need_not_be_executable():
    env_dir = builds.TEST_ELEMENTS / "t-probe" / "environment.d"
    files = sorted(env_dir.iterdir())
    assert files and not any(os.access(f, os.X_OK) for f in files)


def test_extra_packages_install_after_install_d(probe):
    dib, _ = probe
    installed = dib.read("var/lib/fake-os/installed").decode().split()
    assert installed == ["pre-install.d/50-t-pkgmark", "install.d/10-t-pkgmark",
                         "install.d/99-t-pkgmark", "foo", "bar", "baz",
                         "post-install.d/01-t-pkgmark"]


def test_log_names_every_script_with_its_element(probe):
    dib, _ = probe
    log = dib.logfile().read_text()
    owners = {"t-order-a": ("05-t-order-a", "t-order-zed", "50-T-order-a", "100-t-order-late",
                            "40-t-order-link", "90-t-order-a"),
              "t-order-b": ("_t-order-u", "9-t-order-b", "050-t-order-b", "50-t-order-b",
                            "90-t-order-b", "10-t-order-b")}
    for line in EXPECTED_ORDER:
        script = line.split("/")[1]
        element = next((e for e, names in owners.items() if script in names), "t-probe")
        assert re.search(rf"^\S+ \S+ INFO .*{re.escape(line)}  \(element {element}\)$", log,
                         re.M), line
    assert re.search(r"root\.d/10-fake-os  \(element fake-os\)", log)
