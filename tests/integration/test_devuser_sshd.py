"""devuser's post-install.d/60-devuser-sshd-password-auth: what it does to sshd's config.

The hook works on /etc/ssh of the system it runs on (the chroot, in a build). Here it runs in
a private mount namespace with a scratch directory bind-mounted over the host's /etc/ssh,
so each case gets the sshd_config it needs and the host's stays untouched.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Optional

import pytest

HOOK = (Path(__file__).resolve().parents[2] / "elements" / "devuser" / "post-install.d"
        / "60-devuser-sshd-password-auth")
DROP_IN = Path("sshd_config.d") / "60-dib-devuser.conf"
DEBIAN_HEAD = "Include /etc/ssh/sshd_config.d/*.conf\n\n#PasswordAuthentication yes\n"

pytestmark = pytest.mark.skipif(
    shutil.which("unshare") is None or not Path("/etc/ssh").is_dir(),
    reason="needs unshare (util-linux) and an /etc/ssh directory to mount over")


def _run(etc_ssh: Path, value: Optional[str]) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    if value is not None:
        env["DIB_DEV_USER_SSH_PASSWORD_AUTH"] = value
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           'mount --bind "$1" /etc/ssh && exec "$2"', "sh", str(etc_ssh),
                           str(HOOK)], env=env, capture_output=True, text=True)


@pytest.fixture
def etc_ssh(tmp_path: Path) -> Path:
    d = tmp_path / "etc-ssh"
    d.mkdir()
    return d


@pytest.mark.parametrize("value, expected", [("", "no"), ("no", "no"), ("yes", "yes")])
def test_a_drop_in_when_sshd_config_includes_the_directory(etc_ssh, value, expected):
    (etc_ssh / "sshd_config").write_text(DEBIAN_HEAD)
    proc = _run(etc_ssh, value)
    assert proc.returncode == 0, proc.stderr
    lines = (etc_ssh / DROP_IN).read_text().splitlines()
    assert f"PasswordAuthentication {expected}" in lines
    assert f"KbdInteractiveAuthentication {expected}" in lines
    assert (etc_ssh / "sshd_config").read_text() == DEBIAN_HEAD


def test_no_sshd_yet_still_gets_the_drop_in(etc_ssh):
    """A later apt-get install openssh-server ships the Include and reads it."""
    proc = _run(etc_ssh, None)
    assert proc.returncode == 0, proc.stderr
    assert "PasswordAuthentication no" in (etc_ssh / DROP_IN).read_text()


def test_without_the_include_the_setting_goes_first_in_sshd_config(etc_ssh):
    (etc_ssh / "sshd_config").write_text(
        "Port 22\nPasswordAuthentication yes\n  ChallengeResponseAuthentication yes\n"
        "Match User backup\n    PasswordAuthentication yes\n")
    proc = _run(etc_ssh, "no")
    assert proc.returncode == 0, proc.stderr
    lines = (etc_ssh / "sshd_config").read_text().splitlines()
    # sshd keeps the first value it reads, and Match blocks must stay last
    assert lines[1:3] == ["PasswordAuthentication no", "KbdInteractiveAuthentication no"]
    assert "PasswordAuthentication yes" not in lines
    assert lines[-2:] == ["Match User backup", "    PasswordAuthentication yes"]
    assert not (etc_ssh / "sshd_config.d").exists()


def test_any_other_value_is_an_error_naming_the_variable(etc_ssh):
    (etc_ssh / "sshd_config").write_text(DEBIAN_HEAD)
    proc = _run(etc_ssh, "true")
    assert proc.returncode != 0
    assert "DIB_DEV_USER_SSH_PASSWORD_AUTH" in proc.stderr and "'true'" in proc.stderr
    assert not (etc_ssh / "sshd_config.d").exists()
