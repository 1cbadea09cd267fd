"""docklet element in the real engine (fake-os, no mirror): wrong settings and bad sources
stop the build early -- before any package is installed -- with a message that says what is
wrong, and leave nothing behind."""
from __future__ import annotations

import os

import pytest

from tests.lib import builds, docklet_tree


@pytest.fixture
def dib(tmp_path):
    with builds.Dib(tmp_path) as d:
        yield d


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return docklet_tree.make_repo(tmp_path_factory.mktemp("docklet") / "src")


BASE = {"DIB_INIT_SYSTEM": "systemd", "DOCKLET_BASEFS": "none"}


def build(dib, **env):
    return dib.run("docklet", env={**BASE, "DIB_IMAGE_CACHE": os.fspath(dib.base / "cache"),
                                   **env})


def failed(result, phase, script):
    err = result.stderr
    assert result.returncode == 1, err
    assert f"element 'docklet', phase {phase}, script {script} failed" in err, err
    assert "Traceback" not in err
    return err


def test_worker_without_etcd_or_key_fails_before_the_bootstrap(dib):
    err = failed(build(dib, DOCKLET_MODE="worker"), "root.d", "05-docklet-check")
    assert "DOCKLET_MODE=worker needs DOCKLET_ETCD" in err
    assert "DOCKLET_MODE=worker needs DOCKLET_AUTH_KEY" in err
    assert not dib.image().exists()


def test_missing_basefs_tarball(dib):
    err = failed(build(dib, DOCKLET_BASEFS="tarball",
                       DOCKLET_BASEFS_TARBALL="/nonexistent/basefs.tar.bz2"),
                 "root.d", "05-docklet-check")
    assert "DOCKLET_BASEFS_TARBALL=/nonexistent/basefs.tar.bz2: no such file" in err


def test_unreachable_repository(dib, tmp_path):
    err = failed(build(dib, DOCKLET_REPO=f"file://{tmp_path}/nowhere.git"),
                 "extra-data.d", "50-docklet-source")
    assert f"cannot clone DOCKLET_REPO=file://{tmp_path}/nowhere.git" in err


def test_repository_path_that_does_not_exist(dib):
    err = failed(build(dib, DOCKLET_REPO="/nonexistent/docklet"),
                 "extra-data.d", "50-docklet-source")
    assert "DOCKLET_REPO=/nonexistent/docklet: no such file or directory" in err


def test_ref_that_does_not_exist(dib, repo):
    err = failed(build(dib, DOCKLET_REPO=os.fspath(repo.path), DOCKLET_REF="v9.9"),
                 "extra-data.d", "50-docklet-source")
    assert "DOCKLET_REF=v9.9 does not exist" in err
    assert "synthetic-v2" in err


def test_tree_missing_required_files(dib, tmp_path):
    bad = docklet_tree.write_tree(tmp_path / "bad", omit=("bin/docklet-worker",
                                                           "conf/nginx_docklet.conf"))
    err = failed(build(dib, DOCKLET_REPO=os.fspath(bad)), "extra-data.d", "50-docklet-source")
    assert "missing 2 required file(s)" in err
    assert "bin/docklet-worker" in err and "conf/nginx_docklet.conf" in err


def test_patch_pattern_missing(dib, tmp_path):
    bad = docklet_tree.write_tree(tmp_path / "bad", broken_patch=True)
    err = failed(build(dib, DOCKLET_REPO=os.fspath(bad)), "extra-data.d", "50-docklet-source")
    assert "lxc3-config-fallback: bin/docklet-worker: pattern not found" in err
