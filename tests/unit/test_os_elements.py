"""The OS and base elements as data: resolution, environment, package lists, hook hygiene.

No root, no network: environment.d files are sourced with bash, package-installs files are
evaluated with dib.package_installs, bootstrap settings with dib.bootstrap.config_from_env.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest

from dib import bootstrap, element, mirror, package_installs, resolver

ROOT = Path(__file__).resolve().parents[2]
ELEMENTS = ROOT / "elements"
MINE = ("apt-sources", "base", "cache-url", "cloud-init-datasources", "debian", "debian-minimal",
        "debootstrap", "devuser", "dib-init-system", "dpkg", "install-bin", "install-static",
        "install-types", "openssh-server", "package-installs", "pkg-map",
        "runtime-ssh-host-keys", "source-repositories", "sysprep", "ubuntu", "ubuntu-common",
        "ubuntu-minimal")
PHASE_DIRS = ("root.d", "extra-data.d", "pre-install.d", "install.d", "post-install.d",
              "post-root.d", "block-device.d", "pre-finalise.d", "finalise.d", "cleanup.d")
MIRROR = "http://mirror.example.test/ubuntu"


def resolved(*names: str) -> List[str]:
    cat = element.discover([ELEMENTS])
    return list(resolver.resolve(resolver.implicit_elements(names, skip_base=False,
                                                            arch="amd64"), cat).order)


def env_of(*names: str, extra: Dict[str, str] = None) -> Dict[str, str]:
    """Source the environment.d files of the resolved set, as the engine does."""
    order = resolved(*names)
    files = []
    for n in order:
        d = ELEMENTS / n / "environment.d"
        if d.is_dir():
            files += [d / f for f in os.listdir(d)]
    files.sort(key=lambda p: element.run_parts_key(p.name))
    base = {"PATH": os.environ["PATH"], "ARCH": "amd64", **(extra or {})}
    out = subprocess.run(["bash", "-c", 'set -eu -o pipefail; for f in "$@"; do source "$f"; '
                          'done; exec env -0', "env", *map(str, files)],
                         env=base, capture_output=True, text=True, check=True).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def packages(names: List[str], env: Dict[str, str]) -> Dict[str, List[str]]:
    specs = [(n, package_installs.load_file(ELEMENTS / n, n)) for n in names]
    lists = package_installs.collect(specs, env)
    return {p: [pkg for pkg, _ in lists.install[p]] for p in package_installs.PHASES}


# -- resolution ------------------------------------------------------------------------------

@pytest.mark.parametrize("os_element", ["debian", "debian-minimal", "ubuntu", "ubuntu-minimal"])
def test_os_sets_resolve_with_base(os_element):
    order = resolved(os_element)
    for needed in ("base", "dpkg", "debootstrap", "package-installs", "pkg-map", "install-bin",
                   "dib-init-system", "install-types", "sysprep"):
        assert needed in order, needed


def test_operating_system_providers():
    cat = element.discover([ELEMENTS])
    providers = sorted(n for n, e in cat.elements.items() if "operating-system" in e.provides)
    assert {"debian-minimal", "ubuntu-minimal"} <= set(providers)
    assert "debian" not in providers and "ubuntu" not in providers


def test_two_operating_systems_conflict():
    with pytest.raises(Exception, match="operating-system"):
        resolved("debian", "ubuntu")


def test_debian_pulls_ssh_and_cloud_bits():
    order = resolved("debian")
    assert "openssh-server" in order and "runtime-ssh-host-keys" in order
    order = resolved("ubuntu")
    assert "cloud-init-datasources" in order and "ubuntu-common" in order


# -- environment -----------------------------------------------------------------------------

def test_debian_minimal_environment():
    env = env_of("debian-minimal")
    assert env["DISTRO_NAME"] == "debian" and env["DIB_RELEASE"] == "bookworm"
    assert env["DIB_INIT_SYSTEM"] == "systemd" and env["EFI_BOOT_DIR"] == "EFI/debian"
    assert env["DIB_DEBIAN_COMPONENTS"] == "main"
    assert "systemd-sysv" in env["DIB_DEBOOTSTRAP_INCLUDE"].split(",")
    assert env["DIB_DEBOOTSTRAP_DEFAULT_LOCALE"] == "C.UTF-8"
    assert env["DIB_NETWORK_INTERFACE_NAMES"] == "en* eth*"
    assert env["DIB_AVOID_PACKAGES_UPDATE"] == "0"
    assert "DIB_DISTRIBUTION_MIRROR" not in env  # never a built-in host name


def test_debian_release_override_and_user_include():
    env = env_of("debian-minimal", extra={"DIB_RELEASE": "trixie",
                                          "DIB_DEBOOTSTRAP_INCLUDE": "vim"})
    assert env["DIB_RELEASE"] == "trixie"
    assert env["DIB_DEBOOTSTRAP_INCLUDE"].split(",")[-1] == "vim"


def test_ubuntu_environment():
    env = env_of("ubuntu-minimal")
    assert env["DISTRO_NAME"] == "ubuntu" and env["DIB_RELEASE"] == "noble"
    assert env["DIB_DEBIAN_COMPONENTS"] == "main,universe"
    assert env["EFI_BOOT_DIR"] == "EFI/ubuntu" and env["DIB_INIT_SYSTEM"] == "systemd"
    assert env["DIB_UBUNTU_KERNEL"] == "linux-image-generic"
    assert env["DIB_APT_KEYRING"] == "/usr/share/keyrings/ubuntu-archive-keyring.gpg"
    assert env["DIB_UBUNTU_MIRROR_DISTS"] == "updates,security,backports"
    assert env_of("ubuntu")["DIB_CLOUD_INIT_DATASOURCES"] == "Ec2"


def test_unknown_init_system_stops_the_environment():
    f = ELEMENTS / "dib-init-system/environment.d/99-dib-init-system.bash"
    for value, ok in (("systemd", True), ("bogus", False), ("", False)):
        r = subprocess.run(["bash", "-c", f'set -e; DIB_INIT_SYSTEM={value}; source {f}'],
                           capture_output=True, text=True)
        assert (r.returncode == 0) == ok, (value, r.stderr)


def test_ubuntu_bootstrap_configuration():
    env = env_of("ubuntu-minimal", extra={"DIB_DISTRIBUTION_MIRROR": MIRROR})
    cfg = bootstrap.config_from_env(env, host_id="debian", host_sources=[],
                                    tool="mmdebstrap", tool_version="x", keyring_sha256="k")
    assert cfg.components == ("main", "universe")
    assert cfg.bootstrap_lines == (f"deb {MIRROR} noble main universe",
                                   f"deb {MIRROR} noble-updates main universe",
                                   f"deb {MIRROR} noble-security main universe",
                                   f"deb {MIRROR} noble-backports main universe")
    assert cfg.keyring == "/usr/share/keyrings/ubuntu-archive-keyring.gpg"
    assert {"systemd-sysv", "busybox", "sudo"} <= set(cfg.include)
    assert not cfg.choice.warnings  # no separate security archive for Ubuntu


def test_debian_bootstrap_from_host_sources():
    env = env_of("debian-minimal")
    host = mirror.parse_one_line(
        "deb http://m.example.test/debian bookworm main\n"
        "deb http://m.example.test/debian-security bookworm-security main\n")
    cfg = bootstrap.config_from_env(env, host_id="debian", host_sources=host,
                                    tool="mmdebstrap", tool_version="x")
    assert [n for n, _ in cfg.sources] == ["default", "updates", "security"]


# -- package lists ---------------------------------------------------------------------------

def test_debian_minimal_kernel_per_arch():
    for arch, kernel in (("amd64", "linux-image-amd64"), ("arm64", "linux-image-arm64"),
                         ("armhf", "linux-image-armmp")):
        env = {**env_of("debian-minimal"), "ARCH": arch}
        install = packages(resolved("debian-minimal"), env)["install.d"]
        kernels = [p for p in install if p.startswith("linux-image")]
        assert kernels == [kernel], (arch, kernels)


@pytest.mark.parametrize("arch,flavour,expect", [
    ("amd64", "cloud", "linux-image-cloud-amd64"), ("arm64", "cloud", "linux-image-cloud-arm64"),
    ("amd64", "default", "linux-image-amd64"), ("arm64", "default", "linux-image-arm64")])
def test_debian_minimal_kernel_flavour(arch, flavour, expect):
    env = {**env_of("debian-minimal", extra={"DIB_DEBIAN_KERNEL_FLAVOUR": flavour}),
           "ARCH": arch}
    install = packages(resolved("debian-minimal"), env)["install.d"]
    assert [p for p in install if p.startswith("linux-image")] == [expect]


@pytest.mark.parametrize("given,expect", [
    ({}, ("0", "menu")), ({"DIB_GRUB_TIMEOUT": "5"}, ("5", "menu")),
    ({"DIB_GRUB_TIMEOUT_STYLE": "hidden"}, ("0", "hidden"))])
def test_bootloader_boots_at_once_by_default_without_looking_for_a_key(given, expect):
    # GRUB's hidden style at timeout 0 still looks for a key, 3 s on a serial console; the
    # menu style at timeout 0 boots at once (docs/debugging.md)
    env = env_of("vm", "debian-minimal", extra=given)
    assert (env["DIB_GRUB_TIMEOUT"], env["DIB_GRUB_TIMEOUT_STYLE"]) == expect


def test_debian_minimal_kernel_flavour_defaults_to_the_architectures():
    assert env_of("debian-minimal")["DIB_DEBIAN_KERNEL_FLAVOUR"] == "default"


@pytest.mark.parametrize("arch,flavour,error", [
    ("amd64", "default", None), ("arm64", "cloud", None), ("amd64", "cloud", None),
    ("armhf", "cloud", "cloud kernel for amd64 and arm64 only, not armhf"),
    ("amd64", "clod", "DIB_DEBIAN_KERNEL_FLAVOUR=clod: must be default or cloud")])
def test_debian_minimal_kernel_flavour_checked_before_the_bootstrap(arch, flavour, error):
    script = ELEMENTS / "debian-minimal" / "root.d" / "05-debian-minimal-kernel-flavour"
    assert element.run_parts_key(script.name) < element.run_parts_key("08-debootstrap")
    r = subprocess.run([str(script)], capture_output=True, text=True,
                       env={"PATH": os.environ["PATH"], "ARCH": arch,
                            "DIB_DEBIAN_KERNEL_FLAVOUR": flavour})
    if error is None:
        assert (r.returncode, r.stderr) == (0, "")
    else:
        assert r.returncode == 1 and error in r.stderr, r.stderr


@pytest.mark.parametrize("kernel,expect", [("linux-image-generic", "linux-image-generic"),
                                           ("linux-image-virtual", "linux-image-virtual")])
def test_ubuntu_kernel_choice(kernel, expect):
    env = env_of("ubuntu-minimal", extra={"DIB_UBUNTU_KERNEL": kernel})
    install = packages(resolved("ubuntu-minimal"), env)["install.d"]
    assert [p for p in install if p.startswith("linux-")] == [expect]
    assert "initramfs-tools" in install


def test_debian_cloud_packages():
    env = env_of("debian")
    lists = packages(resolved("debian"), env)
    for pkg in ("cloud-init", "openssh-server", "openssh-client", "netplan.io", "curl"):
        assert pkg in lists["install.d"], pkg
    assert "lsb-release" in lists["pre-install.d"]
    env["DIB_RELEASE"] = "bullseye"
    assert "netplan.io" not in packages(resolved("debian"), env)["install.d"]


def test_every_package_installs_file_parses():
    env = {**env_of("debian"), "DIB_UBUNTU_KERNEL": "linux-image-generic"}
    for name in MINE:
        specs = package_installs.load_file(ELEMENTS / name, name)
        package_installs.collect([(name, specs)], env)


# -- hook hygiene ----------------------------------------------------------------------------

def hooks():
    for name in MINE:
        for phase in PHASE_DIRS:
            d = ELEMENTS / name / phase
            if d.is_dir():
                for f in sorted(d.iterdir()):
                    if f.is_file():
                        yield name, phase, f


def test_hooks_are_executable_strict_bash_with_trace_switch():
    for _name, _phase, f in hooks():
        text = f.read_text()
        assert os.access(f, os.X_OK), f
        assert text.startswith("#!/bin/bash\n"), f
        assert "set -eu" in text and "set -o pipefail" in text, f
        assert re.search(r'DIB_DEBUG_TRACE:-0}" -gt 0 \]; then\n\s+set -x', text), f


def test_hooks_parse():
    scripts = [f for _, _, f in hooks()]
    scripts += [p for n in MINE for p in (ELEMENTS / n / "bin").glob("*")
                if (ELEMENTS / n / "bin").is_dir()]
    for f in scripts:
        r = subprocess.run(["bash", "-n", str(f)], capture_output=True, text=True)
        assert r.returncode == 0, (f, r.stderr)


def test_hook_names_unique_across_all_elements():
    owners: Dict[str, set] = {}
    for e in sorted(ELEMENTS.iterdir()):
        for phase in PHASE_DIRS:
            if (e / phase).is_dir():
                for f in (e / phase).iterdir():
                    if f.is_file():
                        owners.setdefault(f.name, set()).add(e.name)
    assert {n: o for n, o in owners.items() if len(o) > 1} == {}


def test_readmes_and_deps():
    for name in MINE:
        readme = ELEMENTS / name / "README.rst"
        lines = readme.read_text().splitlines()
        assert lines[1] == name and set(lines[0]) == {"="}, readme
        assert lines[3].strip() and lines[3].rstrip().endswith("."), readme
        deps = ELEMENTS / name / "element-deps"
        if deps.exists():
            entries = [x for x in deps.read_text().splitlines() if x.strip()]
            assert entries == sorted(entries), deps
            for dep in entries:
                assert (ELEMENTS / dep).is_dir(), f"{name} depends on missing {dep}"
