"""`-t tar ubuntu-minimal` through the shared debootstrap machinery.

Runs only when ``DIB_TEST_UBUNTU_MIRROR`` names an Ubuntu mirror this machine can reach (the
usual test machine reaches only the Debian archive). The host also needs Ubuntu's archive
keyring (package ubuntu-keyring) or ``DIB_APT_KEYRING``.
"""
from __future__ import annotations

import os
import subprocess

import pytest

MIRROR = os.environ.get("DIB_TEST_UBUNTU_MIRROR", "")

pytestmark = pytest.mark.skipif(not MIRROR, reason="no Ubuntu mirror configured: set "
                                "DIB_TEST_UBUNTU_MIRROR to one this machine reaches")


@pytest.fixture(scope="module")
def ubuntu(builder):
    b = builder.build("ubuntu-minimal", ["ubuntu-minimal"],
                      env={"DIB_DISTRIBUTION_MIRROR": MIRROR})
    assert b.ok, b.proc.stderr[-5000:]
    return b


def test_ubuntu_minimal(ubuntu):
    tree = ubuntu.tree()
    assert "ID=ubuntu" in (tree / "etc/os-release").read_text()
    assert "VERSION_CODENAME=noble" in (tree / "etc/os-release").read_text()
    out = subprocess.run(["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W",
                          "-f", "${Package} ${db:Status-Abbrev}\n", "linux-image-generic"],
                         capture_output=True, text=True).stdout
    assert "linux-image-generic ii" in out
    sources = "".join(p.read_text() for p in (tree / "etc/apt/sources.list.d").glob("*.list"))
    assert f"deb {MIRROR.rstrip('/')} noble main universe" in sources
    assert "noble-security" in sources
    assert ubuntu.log.count("update-initramfs: Generating") == 1
    assert (tree / "etc/machine-id").read_text() == "uninitialized\n"
