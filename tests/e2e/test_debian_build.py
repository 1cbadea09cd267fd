"""`-t tar debian-minimal` and `-t tar debian`, with t-pkgs, built once per session.

Checked on the extracted trees: os-release, every package-installs feature (via t-pkgs), the
hygiene the image must have, networking, the apt-update and initramfs counts; then a second
debian-minimal build with --offline inside a network namespace with no interfaces, and
--offline on an empty cache, which must fail at once with a clear message.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.lib import caps

PKGS = ["t-pkgs"]
#: t-pkgs' expectations on amd64 with T_PKGS_FLAG=on (see its README)
PRESENT = ["ed", "hello", "bc", "psmisc", "figlet", "jq"]
ABSENT = ["tree", "pv", "dos2unix", "lsof", "units", "toilet", "cowsay", "sl"]


@pytest.fixture(scope="module")
def minimal(builder):
    b = builder.build("debian-minimal", ["debian-minimal", *PKGS])
    assert b.ok, b.proc.stderr[-5000:]
    return b


@pytest.fixture(scope="module")
def full(builder):
    b = builder.build("debian", ["debian", *PKGS])
    assert b.ok, b.proc.stderr[-5000:]
    return b


@pytest.fixture(scope="module")
def offline(builder, minimal):
    """The same debian-minimal build again, offline, with no network interfaces at all."""
    b = builder.build("debian-minimal-offline", ["debian-minimal", *PKGS],
                      args=["--offline"], netns=True)
    assert b.ok, b.proc.stderr[-5000:]
    return b


def status(tree: Path, *pkgs: str) -> dict:
    """package -> dpkg status, read from the tree's dpkg database (no chroot needed)."""
    out = subprocess.run(["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W",
                          "-f", "${Package} ${db:Status-Abbrev}\n", *pkgs],
                         capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        name, _, st = line.partition(" ")
        found[name] = st.strip()
    return {p: found.get(p, "") for p in pkgs}


def installed(tree: Path, pkg: str) -> bool:
    return status(tree, pkg)[pkg].startswith("ii")


def updates(log: str) -> int:
    return log.count("install-packages: dib apt-get update")


# -- both images ---------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["minimal", "full"])
def image(request):
    return request.getfixturevalue(request.param)


def test_os_release(image):
    text = (image.tree() / "etc/os-release").read_text()
    assert "ID=debian" in text and "VERSION_CODENAME=bookworm" in text


def test_package_installs_features(image):
    tree = image.tree()
    for pkg in PRESENT:
        assert installed(tree, pkg), f"{pkg} should be installed"
    for pkg in ABSENT:
        assert not installed(tree, pkg), f"{pkg} should not be installed"
    seen = (tree / "var/lib/t-pkgs/install.d-status").read_text()
    assert "tree install ok installed" in seen  # build-only: there during install.d
    assert "pv install ok installed" in seen    # pre-install.d, removed in post-install.d
    # base's package-installs.yaml names iscsi_package, which its pkg-map maps for Debian
    assert installed(tree, "open-iscsi")


def test_kernel_and_one_initramfs(image):
    tree = image.tree()
    assert installed(tree, "linux-image-amd64")
    initrds = list((tree / "boot").glob("initrd.img-*"))
    assert len(initrds) == 1 and initrds[0].stat().st_size > 1_000_000
    assert image.log.count("update-initramfs: Generating") == 1
    assert "deferred by dib" in image.log
    # zstd is installed, so initramfs-tools uses its default compression, not the gzip fallback
    assert installed(tree, "zstd") and "No zstd" not in image.log
    diversions = (tree / "var/lib/dpkg/diversions").read_text() \
        if (tree / "var/lib/dpkg/diversions").exists() else ""
    assert "dib-real" not in diversions
    assert not (tree / "usr/sbin/update-initramfs.dib-real").exists()
    assert "deferred by dib" not in (tree / "usr/sbin/update-initramfs").read_text()


def test_hygiene(image):
    tree = image.tree()
    assert not (tree / "usr/sbin/policy-rc.d").exists()
    assert not (tree / "etc/apt/apt.conf.d/99zz-dib-build").exists()
    conf = "".join(p.read_text() for p in (tree / "etc/apt/apt.conf.d").iterdir())
    assert "Proxy" not in conf and "dib-cache" not in conf
    assert "Install-Recommends \"0\"" in conf
    assert not (tree / "var/lib/dib-build").exists()
    assert (tree / "etc/machine-id").read_text() == "uninitialized\n"
    assert not list((tree / "etc/ssh").glob("ssh_host_*")) if (tree / "etc/ssh").exists() \
        else True
    assert list((tree / "tmp").iterdir()) == []
    logs = [p for p in (tree / "var/log").rglob("*")
            if p.is_file() and not p.is_symlink() and p.stat().st_size]
    assert logs == []
    assert [p.name for p in (tree / "var/lib/apt/lists").iterdir()] in ([], ["partial"])
    assert not list((tree / "var/cache/apt").rglob("*.deb"))
    assert not list((tree / "var/cache/apt").glob("*.bin"))
    resolv = tree / "etc/resolv.conf"
    host = Path("/etc/resolv.conf").read_text() if Path("/etc/resolv.conf").exists() else None
    assert not resolv.exists() or resolv.is_symlink() or resolv.read_text() != host
    assert not (tree / "etc/resolv.conf.ORIG").exists()
    assert (tree / "etc/hostname").read_text().strip() == "debian"


def test_apt_sources_from_host_mirror(image):
    text = "".join(p.read_text() for p in sorted((image.tree() / "etc/apt/sources.list.d")
                                                   .glob("*.list")))
    mirror = caps.host_mirror().rstrip("/")
    assert f"deb {mirror} bookworm main" in text
    assert f"deb {mirror} bookworm-updates main" in text
    assert "bookworm-security" in text


def test_networking_on_any_nic(image):
    tree = image.tree()
    net = (tree / "etc/systemd/network/80-dib-dhcp.network").read_text()
    assert "Name=en* eth*" in net and "DHCP=yes" in net
    assert (tree / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service") \
        .is_symlink()


def test_at_most_one_apt_update(image):
    # a bootstrap made in this build brought fresh lists: no update at all; one from a cache
    fresh = "bootstrap cache miss" in image.log
    assert updates(image.log) == (0 if fresh else 1)


# -- debian only ---------------------------------------------------------------------------

def test_debian_cloud_packages_and_ssh(full):
    tree = full.tree()
    for pkg in ("cloud-init", "openssh-server", "curl", "netplan.io", "cloud-initramfs-growroot"):
        assert installed(tree, pkg), pkg
    wants = tree / "etc/systemd/system/multi-user.target.wants"
    assert (wants / "ssh.service").is_symlink() and (wants / "ssh-keygen.service").is_symlink()
    assert not list((tree / "etc/ssh").glob("ssh_host_*"))
    assert "Ciphers" in (tree / "etc/ssh/sshd_config.d/50-dib-hardening.conf").read_text()
    assert (tree / "usr/local/sbin/runtime-ssh-host-keys.sh").stat().st_mode & 0o111


def test_debian_minimal_is_smaller(minimal, full):
    assert not installed(minimal.tree(), "cloud-init")
    assert not installed(minimal.tree(), "openssh-server")


# -- offline -------------------------------------------------------------------------------

def test_offline_rebuild_without_network(offline):
    log = offline.log
    assert "bootstrap cache hit" in log
    assert updates(log) == 0
    assert "offline: using the cached package lists" in log
    assert not re.search(r"\bGet:\d+ ", log), "nothing may be downloaded offline"
    tree = offline.tree()
    for pkg in PRESENT:
        assert installed(tree, pkg), pkg
    for pkg in ABSENT:
        assert not installed(tree, pkg), pkg
    assert installed(tree, "linux-image-amd64")


def test_offline_on_empty_cache_fails_fast_and_clearly(builder, tmp_path):
    b = builder.build("offline-cold", ["debian-minimal", *PKGS], args=["--offline"],
                      cache=tmp_path / "empty-cache", netns=True, timeout=120)
    assert not b.ok
    assert b.seconds < 30
    err = b.proc.stderr
    assert "offline build: no cached bootstrap for debian bookworm amd64" in err
    assert "run the same build once without --offline" in err


def test_report_timings(minimal, full, offline, record_property):
    """Not an assertion of speed: the numbers go to the JUnit report / -rA output."""
    for b in (minimal, full, offline):
        m = re.search(r"bootstrap ready in ([\d.]+) s \(([^)]*)\)", b.log)
        record_property(f"{b.name}_seconds", round(b.seconds, 1))
        if m:
            record_property(f"{b.name}_bootstrap_seconds", float(m.group(1)))
            record_property(f"{b.name}_bootstrap_from", m.group(2))
        print(f"{b.name}: {b.seconds:.1f} s total; bootstrap {m.group(1) if m else '?'} s "
              f"({m.group(2) if m else '?'})")
