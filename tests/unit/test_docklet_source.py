"""docklet element: fetching the source (git URL, local git, plain directory; cache; refs),
layout validation and the pattern-checked patches, on synthetic trees."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from tests.lib import docklet_tree

di = docklet_tree.element_module()

pytestmark = pytest.mark.skipif(shutil.which("git") is None,
                                reason="needs git: run bin/dib-host-setup (or apt-get install git)")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return docklet_tree.make_repo(tmp_path_factory.mktemp("docklet-repo") / "docklet")


def version(tree) -> str:
    return (tree / "VERSION").read_text().strip()


# -- classify / fetch ------------------------------------------------------------------------

def test_classify(tmp_path, repo):
    plain = docklet_tree.write_tree(tmp_path / "plain")
    assert di.classify_repo(os.fspath(plain)) == "directory"
    assert di.classify_repo(os.fspath(repo.path)) == "git-local"
    assert di.classify_repo("https://example.invalid/docklet.git") == "git-url"
    assert di.classify_repo("git@example.invalid:unias/docklet.git") == "git-url"
    assert di.classify_repo(f"file://{repo.path}") == "git-url"


@pytest.mark.parametrize("repo_value, message", [
    ("", "DOCKLET_REPO is empty"),
    ("/nonexistent/docklet", "no such file or directory on the build host"),
    ("relative/path", "not a URL and not an absolute path"),
])
def test_invalid_repo_values(repo_value, message):
    with pytest.raises(di.DockletError, match=message):
        di.classify_repo(repo_value)


def test_repo_that_is_a_file(tmp_path):
    f = tmp_path / "x"
    f.write_text("")
    with pytest.raises(di.DockletError, match="not a directory"):
        di.classify_repo(os.fspath(f))


@pytest.mark.parametrize("ref, want", [("master", "synthetic-1"), ("synthetic-v2", "synthetic-2"),
                                       ("next", "synthetic-2"), ("synthetic-v1", "synthetic-1")])
def test_local_git_refs(tmp_path, repo, ref, want):
    dest = tmp_path / "src"
    info = di.fetch_source(os.fspath(repo.path), ref, dest, tmp_path / "cache")
    assert version(dest) == want
    assert info.kind == "git-local" and info.commit == repo.commits[ref]
    assert info.version == want
    assert not (dest / ".git").exists()
    # exec bits survive the export
    assert os.access(dest / "bin/docklet-worker", os.X_OK)
    assert not (tmp_path / "cache").exists(), "local repositories need no cache"


def test_local_git_by_commit_sha(tmp_path, repo):
    sha = repo.commits["synthetic-v2"]
    info = di.fetch_source(os.fspath(repo.path), sha[:12], tmp_path / "src", tmp_path / "c")
    assert info.commit == sha and version(tmp_path / "src") == "synthetic-2"


def test_missing_ref_is_a_clear_error(tmp_path, repo):
    with pytest.raises(di.DockletError) as exc:
        di.fetch_source(os.fspath(repo.path), "no-such-branch", tmp_path / "src",
                        tmp_path / "cache")
    assert "DOCKLET_REF=no-such-branch does not exist" in str(exc.value)
    assert "synthetic-v2" in exc.value.hint and "master" in exc.value.hint


def test_plain_directory_is_copied_with_modes(tmp_path):
    plain = docklet_tree.write_tree(tmp_path / "plain", version="plain-9")
    (plain / ".git").mkdir()
    (plain / ".git/junk").write_text("x")
    info = di.fetch_source(os.fspath(plain), "ignored", tmp_path / "src", tmp_path / "cache")
    assert info.kind == "directory" and info.commit == "" and info.version == "plain-9"
    assert not (tmp_path / "src/.git").exists()
    assert os.access(tmp_path / "src/tools/start_jupyter.sh", os.X_OK)


def test_git_url_is_cached_and_refetched(tmp_path, repo):
    url = f"file://{repo.path}"
    cache = tmp_path / "cache"
    info = di.fetch_source(url, "master", tmp_path / "a", cache)
    assert info.kind == "git-url" and version(tmp_path / "a") == "synthetic-1"
    mirrors = list((cache / "git").glob("*.git"))
    assert len(mirrors) == 1 and (mirrors[0] / "HEAD").is_file()
    # a new commit upstream is seen by the next (online) build
    docklet_tree._git(repo.path, "checkout", "-q", "-b", "later", "synthetic-v2")
    (repo.path / "VERSION").write_text("synthetic-3\n")
    docklet_tree._git(repo.path, "commit", "-q", "-am", "three")
    docklet_tree._git(repo.path, "checkout", "-q", "master")
    info = di.fetch_source(url, "later", tmp_path / "b", cache)
    assert version(tmp_path / "b") == "synthetic-3"
    assert list((cache / "git").glob("*.git")) == mirrors


def test_offline_uses_the_cache_and_fails_without_it(tmp_path, repo):
    url = f"file://{repo.path}"
    with pytest.raises(di.DockletError, match="offline build: .* is not in the cache"):
        di.fetch_source(url, "master", tmp_path / "a", tmp_path / "cache", offline=True)
    di.fetch_source(url, "master", tmp_path / "a", tmp_path / "cache")
    # offline: the cached clone as it is, even with the origin gone
    moved = tmp_path / "moved"
    shutil.copytree(repo.path, moved)
    shutil.rmtree(repo.path)
    try:
        info = di.fetch_source(url, "synthetic-v2", tmp_path / "b", tmp_path / "cache",
                               offline=True)
        assert version(tmp_path / "b") == "synthetic-2" and info.kind == "git-url"
        with pytest.raises(di.DockletError, match="cannot fetch DOCKLET_REPO"):
            di.fetch_source(url, "master", tmp_path / "c", tmp_path / "cache")
    finally:
        shutil.copytree(moved, repo.path)


@pytest.mark.parametrize("what", ["not-a-repo", "missing"])
def test_unreachable_url_is_a_clear_error(tmp_path, what):
    target = tmp_path / what
    if what == "not-a-repo":
        target.mkdir()
    with pytest.raises(di.DockletError) as exc:
        di.fetch_source(f"file://{target}", "master", tmp_path / "a", tmp_path / "cache")
    assert "cannot clone DOCKLET_REPO=file://" in str(exc.value)
    assert "reach" in exc.value.hint
    assert not list((tmp_path / "cache" / "git").glob("*.git*")), "no half clone in the cache"


# -- layout ----------------------------------------------------------------------------------

def test_synthetic_tree_covers_the_required_layout():
    files = docklet_tree.tree_files()
    assert set(di.REQUIRED_FILES) <= set(files)


def test_layout_ok(tmp_path):
    tree = docklet_tree.write_tree(tmp_path / "t")
    assert di.missing_files(tree) == []
    di.check_layout(tree)


def test_layout_lists_every_missing_file(tmp_path):
    tree = docklet_tree.write_tree(tmp_path / "t", omit=("bin/docklet-worker",
                                                           "tools/start_jupyter.sh"))
    with pytest.raises(di.DockletError) as exc:
        di.check_layout(tree, "/some/repo")
    text = str(exc.value)
    assert "from /some/repo is missing 2 required file(s)" in text
    assert "bin/docklet-worker" in text and "tools/start_jupyter.sh" in text
    assert "DOCKLET_REPO" in exc.value.hint


# -- patches ---------------------------------------------------------------------------------

def statuses(results):
    return {(r.patch, r.file): r.status for r in results}


def test_patches_applied(tmp_path):
    tree = docklet_tree.write_tree(tmp_path / "t")
    results = di.apply_patches(tree)
    assert set(statuses(results).values()) == {"applied"}
    assert len(results) == 5
    worker = (tree / "bin/docklet-worker").read_text()
    assert "LXC_VERSION=3  # dib-docklet" in worker and "LXC_VERSION=2\n" not in worker
    for name in di.BIN_SCRIPTS:
        text = (tree / name).read_text()
        assert "--default-target=http://127.0.0.1:${WEB_PORT:-8888}" in text
        assert "localhost:8888" not in text
        assert os.access(tree / name, os.X_OK), "patching keeps the mode"
    master = (tree / "bin/docklet-supermaster").read_text()
    assert master.count("dib-docklet: wait for the user server") == 2
    assert master.index("wait for the user server") < master.index('do_start_master "new"')


def test_patches_twice_is_a_no_op(tmp_path):
    tree = docklet_tree.write_tree(tmp_path / "t")
    di.apply_patches(tree)
    before = {p: (tree / p).read_text() for p in di.BIN_SCRIPTS}
    again = di.apply_patches(tree)
    assert set(statuses(again).values()) == {"already-applied"}
    assert {p: (tree / p).read_text() for p in di.BIN_SCRIPTS} == before


def test_source_with_patches_already_in(tmp_path):
    tree = docklet_tree.write_tree(tmp_path / "t", patched=True)
    before = (tree / "bin/docklet-worker").read_text()
    assert set(statuses(di.apply_patches(tree)).values()) == {"already-applied"}
    assert (tree / "bin/docklet-worker").read_text() == before


def test_missing_pattern_fails_when_strict(tmp_path):
    tree = docklet_tree.write_tree(tmp_path / "t", broken_patch=True)
    with pytest.raises(di.DockletError) as exc:
        di.apply_patches(tree, strict=True)
    assert "lxc3-config-fallback: bin/docklet-worker: pattern not found" in str(exc.value)
    assert "DOCKLET_STRICT_PATCH=0" in exc.value.hint


def test_missing_pattern_warns_when_not_strict(tmp_path, capsys):
    tree = docklet_tree.write_tree(tmp_path / "t", broken_patch=True)
    st = statuses(di.apply_patches(tree, strict=False))
    assert st[("lxc3-config-fallback", "bin/docklet-worker")] == "missing"
    assert st[("proxy-default-target", "bin/docklet-worker")] == "applied"
    assert "WARNING: patch lxc3-config-fallback not applied" in capsys.readouterr().err


def test_patched_worker_selects_lxc3_for_lxc5(tmp_path):
    """The patched fallback, run: an LXC 5 'lxc-start --version' picks the lxc3 files."""
    tree = docklet_tree.write_tree(tmp_path / "t")
    di.apply_patches(tree)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "lxc-start").write_text("#!/bin/sh\necho 5.0.2\n")
    os.chmod(fake / "lxc-start", 0o755)
    text = (tree / "bin/docklet-worker").read_text()
    func = text[text.index("update_container_conf () {"):]
    func = func[:func.index("\n}\n") + 3]
    script = f"DOCKLET_CONF={tree}/conf\n{func}\nupdate_container_conf\n"
    subprocess.run(["sh", "-c", script], check=True,
                   env=dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}"))
    assert (tree / "conf/container.conf").read_text() == \
        (tree / "conf/container/lxc3.container.conf").read_text()


# -- the extra-data.d step as a command ------------------------------------------------------

def run_module(args, env, **kw):
    return subprocess.run([sys.executable, os.fspath(docklet_tree.PACKAGE), *args],
                          env=env, capture_output=True, text=True, **kw)


def base_env(tmp_path, **extra):
    env = {"PATH": os.environ["PATH"], "HOME": os.fspath(tmp_path), "DISTRO_NAME": "debian",
           "DIB_RELEASE": "bookworm", "DIB_IMAGE_CACHE": os.fspath(tmp_path / "cache")}
    env.update(extra)
    return env


def test_fetch_source_command_stages_patched_tree_and_records(tmp_path, repo):
    dest = tmp_path / "hooks/docklet-src"
    proc = run_module(["fetch-source", os.fspath(dest)],
                      base_env(tmp_path, DOCKLET_REPO=os.fspath(repo.path),
                               DOCKLET_REF="synthetic-v2"))
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((dest / di.SOURCE_META).read_text())
    assert meta == {"repo": os.fspath(repo.path), "ref": "synthetic-v2", "kind": "git-local",
                    "commit": repo.commits["synthetic-v2"], "version": "synthetic-2"}
    patches = json.loads((dest / di.PATCH_META).read_text())
    assert {p["status"] for p in patches} == {"applied"}
    assert "patch lxc3-config-fallback bin/docklet-worker applied" in proc.stderr


def test_fetch_source_command_fails_listing_missing_files(tmp_path):
    bad = docklet_tree.write_tree(tmp_path / "bad", omit=("bin/docklet-worker",))
    proc = run_module(["fetch-source", os.fspath(tmp_path / "dest")],
                      base_env(tmp_path, DOCKLET_REPO=os.fspath(bad)))
    assert proc.returncode == 1
    assert "missing 1 required file(s):\n    bin/docklet-worker" in proc.stderr


def test_executable_files_cover_entry_points(tmp_path):
    tree = docklet_tree.write_tree(tmp_path / "t", modes=False)
    names = {os.fspath(p.relative_to(tree)) for p in di.executable_files(tree)}
    for rel in ("bin/docklet-worker", "conf/lxc-script/lxc-ifup", "tools/start_jupyter.sh",
                "src/master/userinit.sh", "src/master/httprest.py", "web/web.py",
                "user/user.py", "src/worker/worker.py", "src/worker/taskworker.py"):
        assert rel in names
    assert not any(stat.S_IMODE((tree / n).stat().st_mode) & 0o111 for n in names)
