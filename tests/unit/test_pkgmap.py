"""pkg-map resolution (dib.pkgmap) and the in-image bash tools that read its output."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from dib import pkgmap
from dib.pkgmap import PkgMapError

ROOT = Path(__file__).resolve().parents[2]
MAP = {
    "release": {"debian": {"bookworm": {"tool": "tool-bookworm"}}},
    "distro": {"debian": {"tool": "tool-debian", "web": "apache2"}},
    "family": {"debian": {"tool": "tool-family", "web": "httpd-family", "db": "db-family"},
               "redhat": {"db": "db-redhat"}},
    "default": {"tool": "tool-default", "web": "web", "db": "db", "gone": "", "two": "a b"},
}


def test_release_beats_distro_beats_family_beats_default():
    m = pkgmap.resolve(MAP, "debian", "bookworm")
    assert m["tool"] == "tool-bookworm"
    assert m["web"] == "apache2"
    assert m["db"] == "db-family"
    assert pkgmap.resolve(MAP, "debian", "trixie")["tool"] == "tool-debian"
    assert pkgmap.resolve(MAP, "ubuntu", "noble")["tool"] == "tool-family"
    assert pkgmap.resolve(MAP, "centos", "9")["db"] == "db-redhat"
    assert pkgmap.resolve(MAP, "gentoo", "x")["tool"] == "tool-default"


def test_release_needs_matching_distro():
    assert pkgmap.resolve(MAP, "ubuntu", "bookworm")["tool"] == "tool-family"


def test_family():
    assert pkgmap.os_family("ubuntu") == "debian"
    assert pkgmap.os_family("rocky") == "redhat"
    assert pkgmap.os_family("plan9") is None


def test_map_names_empty_means_nothing_and_spaces_split():
    m = pkgmap.resolve(MAP, "debian", "bookworm")
    assert pkgmap.map_names(m, ["gone", "two", "unmapped"]) == ["a", "b", "unmapped"]
    assert pkgmap.map_names(None, ["x"]) == ["x"]
    with pytest.raises(PkgMapError, match="no pkg-map entry for package 'unmapped'"):
        pkgmap.map_names(m, ["unmapped"], missing_ok=False, element="el")


def test_bad_maps(tmp_path: Path):
    f = tmp_path / "pkg-map"
    f.write_text("{not json")
    with pytest.raises(PkgMapError, match="element 'el'.*not valid JSON"):
        pkgmap.load(f, "el")
    f.write_text(json.dumps({"defaults": {}}))
    with pytest.raises(PkgMapError, match="unknown section"):
        pkgmap.load(f, "el")
    with pytest.raises(PkgMapError, match="default.x must be a string"):
        pkgmap.resolve({"default": {"x": ["a"]}}, "debian", "bookworm", "el")


def test_flatten():
    assert pkgmap.flatten({"b": "x  y", "a": ""}) == "a\t\nb\tx y\n"


# -- the bash readers ------------------------------------------------------------------------

@pytest.fixture
def maps(tmp_path: Path) -> Path:
    d = tmp_path / "maps"
    d.mkdir()
    (d / "el").write_text(pkgmap.flatten(pkgmap.resolve(MAP, "debian", "bookworm")))
    return d


def run_pkg_map(maps: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "DIB_PKG_MAP_DIR": str(maps),
           "DISTRO_NAME": "debian", "DIB_RELEASE": "bookworm"}
    return subprocess.run(["bash", ROOT / "elements/pkg-map/bin/pkg-map", *args], env=env,
                          capture_output=True, text=True)


def test_bash_pkg_map(maps):
    r = run_pkg_map(maps, "--element", "el", "tool", "gone", "two")
    assert r.returncode == 0 and r.stdout.split() == ["tool-bookworm", "a", "b"]
    r = run_pkg_map(maps, "--element", "el", "--prefix", "-", "--missing-ok", "nope")
    assert r.stdout == "-nope\n"
    r = run_pkg_map(maps, "--element", "el", "nope")
    assert r.returncode == 1 and "no valid mapping for package nope" in r.stderr
    r = run_pkg_map(maps, "--element", "missing", "x")
    assert r.returncode == 2
    r = run_pkg_map(maps, "--element", "el", "--distro", "fedora", "tool")
    assert r.returncode == 1 and "only this build's distribution" in r.stderr


def test_install_packages_sources_hash_is_stable(tmp_path: Path):
    etc = tmp_path / "etc/apt/sources.list.d"
    etc.mkdir(parents=True)
    (etc / "b.list").write_text("deb http://m.example.test/d bookworm main\n")
    (etc / "a.list").write_text("deb http://m.example.test/d bookworm-updates main\n")
    (etc / "c.txt").write_text("ignored\n")
    tool = ROOT / "elements/dpkg/bin/install-packages"

    def h():
        return subprocess.run(["bash", tool, "--sources-hash", str(tmp_path)],
                              capture_output=True, text=True, check=True).stdout.strip()
    first = h()
    assert len(first) == 16
    (etc / "c.txt").write_text("still ignored\n")
    assert h() == first
    (etc / "a.list").write_text("deb http://m.example.test/d bookworm-backports main\n")
    assert h() != first
