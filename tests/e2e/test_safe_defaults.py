"""The quickstart's image is safe by default (issue #11, item 4).

One real build of the quickstart's element set, ``vm debian growroot devuser``, the way
bin/dib-quickstart makes it when the builder has no ssh key: a random password made here,
handed to the build as a hash (DIB_DEV_USER_PASSWORD_HASH), passwordless sudo, no keys. It is
built with ``-x`` (hook traces in the log) and then:

* neither the password nor its hash appears in the build log, the manifest, the build report
  or anything else the build wrote next to the image;
* one boot under QEMU TCG, with a user-mode NIC whose port 22 is forwarded to 127.0.0.1 only:
  sshd refuses password logins (it offers ``publickey`` alone), and the console login with
  the password works, with devuser's sudo;
* one boot with a NIC that no DHCP server answers (issue #16, item 3): the login prompt does
  not wait for network-online.target (base's iSCSI generator), and cloud-init, finding no
  datasource, is disabled for the boot.
"""
from __future__ import annotations

import os
import secrets
import socket
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dib import boottest
from tests.lib.builds import build_env
from tests.lib.console import SerialConsole, ssh_offered_methods
from tests.lib.leaks import assert_clean

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("DIB_E2E_CACHE", "/var/tmp/dib-e2e-cache"))
USER = "debian"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def password() -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(20))


@pytest.fixture(scope="module")
def password_hash(password) -> str:
    return subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password,
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def image(scratch, password_hash) -> Path:
    tmp = scratch("safe-defaults")
    (tmp / "tmp").mkdir()
    no_keys = tmp / "no-keys"
    no_keys.write_text("")
    env = build_env(tmp / "tmp", [ROOT / "tests" / "elements"], {
        "DIB_IMAGE_CACHE": str(CACHE), "OVERWRITE_OLD_IMAGE": "1", "DIB_RELEASE": "bookworm",
        "DIB_DEV_USER_USERNAME": USER, "DIB_DEV_USER_PASSWORD_HASH": password_hash,
        "DIB_DEV_USER_PWDLESS_SUDO": "yes", "DIB_DEV_USER_AUTHORIZED_KEYS": str(no_keys)})
    out = tmp / "out" / "debian"
    # --no-cache: with a password of its own, no layer of this build is ever reused
    proc = subprocess.run([sys.executable, str(ROOT / "bin" / "disk-image-create"), "-x",
                           "--no-tmpfs", "--no-cache", "-t", "qcow2", "-o", str(out),
                           "vm", "debian", "growroot", "devuser"],
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=2400)
    (tmp / "out" / "stdout+stderr").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_clean(tmp)
    return out


def test_no_output_of_the_build_holds_the_password_or_its_hash(image, password,
                                                                password_hash):
    files = [p for p in image.parent.rglob("*") if p.is_file() and p.suffix != ".qcow2"]
    names = {p.name for p in files}
    # the places a secret could leak to are really there (and -x traced the hooks)
    assert {"build.log", "manifest.json", "build-report.json", "stdout+stderr"} <= names, names
    log = (image.parent / f"{image.name}.d" / "build.log").read_text(errors="replace")
    assert "install.d/50-devuser" in log and "+ useradd" in log
    for f in files:
        data = f.read_bytes()
        for secret in (password, password_hash, password_hash.rsplit("$", 1)[-1]):
            assert secret.encode() not in data, f"{f} holds the password or its hash"


def test_password_ssh_is_refused_and_the_console_login_works(image, password, tmp_path):
    port = _free_port()
    found = {}

    def check(sock: Path) -> None:
        deadline = time.monotonic() + 300
        methods = ""
        while not methods and time.monotonic() < deadline:  # sshd may still be starting
            methods = ssh_offered_methods(port, USER, password)
            if not methods:
                time.sleep(5)
        found["ssh"] = methods
        with SerialConsole(sock) as console:
            console.login(USER, password)
            found["id"] = console.run("id -un")
            found["sudo"] = console.run("sudo -n id -u")
            found["sshd"] = console.run("sudo -n sshd -T | grep -Ei "
                                        "'^(passwordauthentication|kbdinteractiveauthentication) '")

    result = boottest.boot(
        Path(f"{image}.qcow2"), tmp_path, timeout=900, interact=check,
        extra_args=["-nic", f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:22"])
    assert result.passed, f"{result.failure}\n{result.serial_text()[-3000:]}"
    out, status = found["id"]
    assert (out.split(), status) == ([USER], 0)
    out, status = found["sudo"]  # devuser's passwordless sudo
    assert (out.split(), status) == (["0"], 0)
    out, status = found["sshd"]
    assert "passwordauthentication no" in out and "kbdinteractiveauthentication no" in out, out
    # sshd answers, and password (or keyboard-interactive) is not among what it offers
    assert found["ssh"] == "publickey", found["ssh"]


def test_a_nic_without_dhcp_does_not_hold_the_login_prompt(image, password, tmp_path):
    """Issue #16, item 3: a VM with a NIC that no DHCP server answers gets its login prompt
    without waiting for network-online.target. base's open-iscsi.service (ordered after
    network-online and before remote-fs-pre, so before systemd-user-sessions and the getty)
    is masked for the boot by base's generator, as no iSCSI node is configured; cloud-init's
    ds-identify finds no datasource on a bare QEMU and disables cloud-init for the boot."""
    found = {}

    def check(sock: Path) -> None:
        with SerialConsole(sock) as console:
            console.login(USER, password)
            found["iscsi"] = console.run("systemctl show -p LoadState --value open-iscsi")
            for unit in ("serial-getty@ttyS0.service", "network-online.target"):
                found[unit] = console.run(
                    f"systemctl show -p ActiveEnterTimestampMonotonic --value {unit}")
            found["cloud-init"] = console.run("cloud-init status --long")

    # a virtio NIC with no backend: a link the guest sees, where no DHCP answer ever comes
    result = boottest.boot(Path(f"{image}.qcow2"), tmp_path, timeout=900, interact=check,
                           extra_args=["-device", "virtio-net-pci"])
    assert result.passed, f"{result.failure}\n{result.serial_text()[-3000:]}"
    out, status = found["iscsi"]
    assert (out.split(), status) == (["masked"], 0)
    entered = {}
    for unit in ("serial-getty@ttyS0.service", "network-online.target"):
        out, status = found[unit]
        assert status == 0 and out.split()[-1].isdigit(), out
        entered[unit] = int(out.split()[-1])
    getty, online = entered["serial-getty@ttyS0.service"], entered["network-online.target"]
    assert getty > 0, entered
    # network-online is either not reached at all (nothing wants it) or reached after the
    # getty came up: the prompt did not wait for it (systemd-networkd-wait-online's 20 s)
    assert online == 0 or online > getty, entered
    out, status = found["cloud-init"]
    assert "status: disabled" in out and "disabled-by-generator" in out, out
