"""The build manifest: redaction, the dpkg package list, the CycloneDX SBOM, the in-image
manifest (no root needed; the dpkg database is a hand-written status file)."""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from dib.outputs import manifest
from dib.outputs.manifest import Package

needs_dpkg = pytest.mark.skipif(not shutil.which("dpkg-query"),
                                reason="needs dpkg-query: run on a Debian or Ubuntu host")

STATUS = """\
Package: hello
Status: install ok installed
Architecture: amd64
Version: 2.10-3
Installed-Size: 280
Maintainer: X <x@example.org>
Description: hi

Package: libfoo1
Status: install ok installed
Architecture: amd64
Source: foo (1:1.2-3)
Version: 1:1.2-3+b1
Installed-Size: 12
Maintainer: X <x@example.org>
Description: foo lib

Package: held
Status: hold ok installed
Architecture: all
Version: 0.1
Maintainer: X <x@example.org>
Description: held

Package: gone
Status: deinstall ok config-files
Architecture: all
Version: 1.0
Maintainer: X <x@example.org>
Description: removed
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(STATUS)
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text(
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n')
    (root / "etc").mkdir()
    os.symlink("/usr/lib/os-release", root / "etc/os-release")  # absolute, as Debian ships it
    return root


# -- redaction ---------------------------------------------------------------------------------

def test_secret_names_are_redacted():
    env = {"DIB_DEV_USER_PASSWORD": "hunter2", "DIB_GITHUB_TOKEN": "ghp_x",
           "DIB_DEV_USER_PASSWORD_HASH": "$6$salt$hash",
           "DIB_CLIENT_SECRET": "s", "DIB_SSH_KEY": "k", "DIB_DEV_USER_AUTHORIZED_KEYS": "/k",
           "DIB_api_key": "lower", "DIB_RELEASE": "bookworm", "DIB_EMPTY_PASSWORD": "",
           "HOME": "/root", "MY_PASSWORD": "not a DIB_ variable", "DIB_ENV": "internal",
           "DIB_ARGS": "internal"}
    out = manifest.redact_env(env)
    assert out == {"DIB_CLIENT_SECRET": "<redacted>", "DIB_DEV_USER_AUTHORIZED_KEYS": "<redacted>",
                   "DIB_DEV_USER_PASSWORD": "<redacted>",
                   "DIB_DEV_USER_PASSWORD_HASH": "<redacted>", "DIB_EMPTY_PASSWORD": "",
                   "DIB_GITHUB_TOKEN": "<redacted>", "DIB_RELEASE": "bookworm",
                   "DIB_SSH_KEY": "<redacted>", "DIB_api_key": "<redacted>"}
    assert list(out) == sorted(out)
    for secret in ("hunter2", "ghp_x", "lower", "$6$salt$hash"):
        assert secret not in json.dumps(out)


def test_credentials_in_urls_are_redacted():
    out = manifest.redact_env({"DIB_DISTRIBUTION_MIRROR": "http://bob:pw@mirror.local/debian",
                               "DIB_OTHER": "https://token@git.local/x.git and ftp://a@b/c",
                               "DIB_PLAIN": "http://mirror.local/debian"})
    assert out["DIB_DISTRIBUTION_MIRROR"] == "http://<redacted>@mirror.local/debian"
    assert out["DIB_OTHER"] == "https://<redacted>@git.local/x.git and ftp://<redacted>@b/c"
    assert out["DIB_PLAIN"] == "http://mirror.local/debian"
    assert manifest.redact_argv(["-o", "x", "http://u:p@h/"]) == ["-o", "x",
                                                                  "http://<redacted>@h/"]


# -- packages ------------------------------------------------------------------------------------

def test_parse_dpkg_query_keeps_installed_packages_only():
    text = ("gone\t1.0\tall\trc \tgone\t1.0\t\n"
            "libfoo1\t1:1.2-3+b1\tamd64\tii \tfoo\t1:1.2-3\t12\n"
            "hello\t2.10-3\tamd64\tii \thello\t2.10-3\t280\n"
            "held\t0.1\tall\thi \theld\t0.1\t\n"
            "broken line\n")
    assert manifest.parse_dpkg_query(text) == [
        Package("held", "0.1", "all"),
        Package("hello", "2.10-3", "amd64", installed_kib=280),
        Package("libfoo1", "1:1.2-3+b1", "amd64", "foo", "1:1.2-3", 12)]


@needs_dpkg
def test_dpkg_packages_reads_the_trees_database(tree):
    pkgs = manifest.dpkg_packages(tree)
    assert [(p.name, p.version) for p in pkgs] == [("held", "0.1"), ("hello", "2.10-3"),
                                                   ("libfoo1", "1:1.2-3+b1")]


def test_no_dpkg_database(tmp_path):
    assert manifest.dpkg_packages(tmp_path) is None
    summary = manifest.package_summary(None)
    assert summary["count"] == 0 and summary["source"] is None


def test_os_release_follows_an_absolute_symlink_inside_the_tree(tree):
    rel = manifest.os_release(tree)
    assert rel == {"PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)", "ID": "debian",
                   "VERSION_ID": "12"}


# -- SBOM ------------------------------------------------------------------------------------------

DISTRO = {"ID": "debian", "VERSION_ID": "12", "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)"}
PKGS = [Package("hello", "2.10-3", "amd64", installed_kib=280),
        Package("libfoo1", "1:1.2-3+b1", "amd64", "foo", "1:1.2-3", 12)]


def test_purls():
    assert manifest.purl(PKGS[0], DISTRO) == \
        "pkg:deb/debian/hello@2.10-3?arch=amd64&distro=debian-12"
    assert manifest.purl(PKGS[1], DISTRO) == (
        "pkg:deb/debian/libfoo1@1%3A1.2-3+b1?arch=amd64&distro=debian-12"
        "&upstream=foo%401%3A1.2-3")
    assert manifest.purl(PKGS[0], {}) == "pkg:deb/debian/hello@2.10-3?arch=amd64"


def test_cyclonedx_document():
    bom = manifest.cyclonedx(PKGS, image="web", distro=DISTRO, tool_version="9.9",
                             timestamp="2026-01-01T00:00:00Z")
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.5"
    assert bom["version"] == 1
    assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", bom["serialNumber"])
    meta = bom["metadata"]
    assert meta["timestamp"] == "2026-01-01T00:00:00Z"
    assert meta["tools"]["components"] == [{"type": "application", "name": "dib",
                                            "version": "9.9"}]
    assert meta["component"] == {"type": "operating-system", "bom-ref": "dib-image:web",
                                 "name": "web", "version": "12",
                                 "description": "Debian GNU/Linux 12 (bookworm)"}
    names = [(c["name"], c["version"], c["type"]) for c in bom["components"]]
    assert names == [("hello", "2.10-3", "library"), ("libfoo1", "1:1.2-3+b1", "library")]
    for c in bom["components"]:
        assert c["bom-ref"] == c["purl"] and c["purl"].startswith("pkg:deb/debian/")
    refs = [c["bom-ref"] for c in bom["components"]]
    assert len(set(refs)) == len(refs)
    assert bom["dependencies"] == [{"ref": "dib-image:web", "dependsOn": refs}]
    json.dumps(bom)  # serialisable
    assert manifest.packages_from_sbom(bom) == PKGS


def test_empty_sbom():
    bom = manifest.cyclonedx([], image="x", distro={}, tool_version="1")
    assert bom["components"] == [] and "version" not in bom["metadata"]["component"]


# -- elements --------------------------------------------------------------------------------------

def test_element_entries_hash_every_file(tmp_path):
    e = tmp_path / "e"
    (e / "install.d").mkdir(parents=True)
    (e / "install.d/10-x").write_text("echo 1\n")
    first = manifest.element_entries(["e"], {"e": e})
    (e / "install.d/10-x").write_text("echo 2\n")
    second = manifest.element_entries(["e"], {"e": e})
    assert first[0]["name"] == "e" and first[0]["path"] == str(e)
    assert re.fullmatch(r"[0-9a-f]{64}", first[0]["sha256"])
    assert first[0]["sha256"] != second[0]["sha256"]


# -- inside the image (the manifests element) ----------------------------------------------------

@needs_dpkg
def test_in_image_manifest(tree, tmp_path):
    el = tmp_path / "elements" / "web"
    el.mkdir(parents=True)
    env = {"IMAGE_NAME": str(tmp_path / "out" / "web"), "ARCH": "amd64",
           "IMAGE_ELEMENT": "web", "IMAGE_ELEMENT_YAML": f"web: {el}\n",
           "DIB_ARGS": "-o web -t qcow2 vm web", "DIB_RELEASE": "bookworm",
           "DIB_DEV_USER_PASSWORD": "hunter2"}
    copy = tmp_path / "out" / "web.d" / "dib-manifests"
    out = manifest.in_image(tree, env, copy_to=copy)
    assert out == tree / "etc/dib-manifests"
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    names = sorted(p.name for p in out.iterdir())
    assert names == ["dib_arguments", "dib_environment", "manifest.json", "sbom.cdx.json"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in out.iterdir())
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["argv"] == ["-o", "web", "-t", "qcow2", "vm", "web"]
    assert doc["elements"][0]["name"] == "web"
    assert doc["environment"] == {"DIB_DEV_USER_PASSWORD": "<redacted>", "DIB_RELEASE": "bookworm"}
    assert doc["packages"]["count"] == 3
    assert doc["os_release"]["ID"] == "debian"
    text = "".join(p.read_text() for p in out.iterdir())
    assert "hunter2" not in text
    assert "export DIB_RELEASE=bookworm" in (out / "dib_environment").read_text()
    assert sorted(p.name for p in copy.iterdir()) == names
    bom = json.loads((out / "sbom.cdx.json").read_text())
    assert [c["name"] for c in bom["components"]] == ["held", "hello", "libfoo1"]


def test_main_usage(capsys):
    assert manifest.main([]) == 2
    assert "usage" in capsys.readouterr().err
