"""The layer cache: reuse up to the first changed step, and the same tree as a clean build.

Builds fake-os with an element of several steps across the chroot phases, edits one late
script, and rebuilds with the cache and without it; the two trees (paths, modes, owners,
contents, link targets) must be identical. fake-os trees have no volatile files; for real
distributions docs/caching.md lists the files that legitimately differ between builds.
"""
from __future__ import annotations

import re
import subprocess
import tarfile
from typing import Dict

import pytest

from tests.lib import builds
from tests.lib.elements import make_element

HOOKS = {
    "pre-install.d": {"20-t-cache-pre": "mkdir -p /opt/t && echo pre > /opt/t/pre\n"},
    "install.d": {
        "20-t-cache-a": "echo a > /opt/t/a; mkdir -p /opt/t/dir; echo x > /opt/t/dir/x\n",
        "30-t-cache-b": "rm -rf /opt/t/dir; echo replaced > /opt/t/dir; rm /bin/vi\n",
        "80-t-cache-late": "echo v1 > /opt/t/late\n",
    },
    "post-install.d": {"20-t-cache-post": "cat /opt/t/late > /opt/t/post\n"},
    "post-root.d": {"20-t-cache-root": "echo host > \"$TARGET_ROOT/opt/t/post-root\"\n"},
}


@pytest.fixture
def dib(tmp_path):
    with builds.Dib(tmp_path) as d:
        make_element(d.elements, "t-cache", hooks=HOOKS)
        yield d



def _steps(report: dict) -> Dict[str, dict]:
    return {s["step"]: s for s in report["steps"]}


def _build(dib, name: str, *args: str) -> dict:
    proc = dib.run("t-cache", name=name, args=args)
    assert proc.returncode == 0, proc.stderr
    return dib.report(name)


def _edit_late_script(dib, text: str) -> None:
    script = dib.elements / "t-cache" / "install.d" / "80-t-cache-late"
    script.write_text(script.read_text().replace("echo v1", f"echo {text}"))


def test_rebuild_reuses_every_step_and_then_the_image(dib):
    first = _build(dib, "one")
    assert not any(s["cached"] for s in first["steps"])
    second = _build(dib, "two")
    assert all(s["cached"] for s in second["steps"])
    # the finished image came from the cache: nothing was stored again
    assert "(cache image)" not in [p["phase"] for p in second["phases"]]
    assert builds.tar_members(dib.image("one")) == builds.tar_members(dib.image("two"))
    log = dib.logfile("two").read_text()
    assert "(cached image)" in log


def test_editing_a_late_script_reruns_from_that_step_only(dib):
    _build(dib, "one")
    _edit_late_script(dib, "v2")
    report = _build(dib, "two")
    steps = _steps(report)
    for early in ("root.d", "pre-install.d/20-t-cache-pre", "install.d/20-t-cache-a",
                  "install.d/30-t-cache-b"):
        assert steps[early]["cached"], early
    late = steps["install.d/80-t-cache-late"]
    assert not late["cached"] and late["changed"] == ["script"]
    after = steps["post-install.d/20-t-cache-post"]
    assert not after["cached"] and after["changed"] == ["prev"]
    assert dib.read("opt/t/post", name="two") == b"v2\n"


def test_cached_rebuild_gives_the_same_tree_as_a_clean_one(dib):
    _build(dib, "warm-up")
    _edit_late_script(dib, "v3")
    _build(dib, "cached")
    clean = _build(dib, "clean", "--no-cache")
    assert not any(s["cached"] for s in clean["steps"])
    cached, fresh = builds.tar_members(dib.image("cached")), builds.tar_members(dib.image("clean"))
    assert cached == fresh
    # whiteouts and replaced directories came out right through cached layers
    assert "./opt/t/dir/x" not in cached and cached["./opt/t/dir"][0] == tarfile.REGTYPE
    assert "./bin/vi" not in cached
    assert "./opt/t/post-root" in cached


def test_no_cache_neither_reads_nor_writes_the_cache(dib):
    cache = dib.tmp_dir.parent / "image-cache"
    _build(dib, "one", "--no-cache")
    assert not (cache / "layers").exists() or not any((cache / "layers").iterdir())
    second = _build(dib, "two")
    assert not any(s["cached"] for s in second["steps"])


def test_changing_element_data_reruns_every_chroot_step(dib):
    _build(dib, "one")
    (dib.elements / "t-cache" / "data.txt").write_text("new data\n")
    steps = _steps(_build(dib, "two"))
    # the base layer depends on the data of root.d's own elements and every environment.d
    assert steps["root.d"]["cached"]
    assert "elements" in steps["pre-install.d/20-t-cache-pre"]["changed"]
    assert not steps["install.d/20-t-cache-a"]["cached"]


def test_element_sets_that_differ_in_other_elements_share_the_base_layer(dib):
    _build(dib, "one")
    make_element(dib.elements, "t-extra", hooks={"install.d": {"30-t-extra": "true\n"}})
    (dib.elements / "t-extra" / "package-installs.yaml").write_text("{}\n")
    proc = dib.run("t-cache", "t-extra", name="two")
    assert proc.returncode == 0, proc.stderr
    steps = _steps(dib.report("two"))
    assert steps["root.d"]["cached"]
    assert not steps["pre-install.d/20-t-cache-pre"]["cached"]
    # an environment.d changes what root.d's scripts see: no sharing then
    (dib.elements / "t-extra" / "environment.d").mkdir()
    (dib.elements / "t-extra" / "environment.d" / "10-t-extra").write_text("export T_X=1\n")
    proc = dib.run("t-cache", "t-extra", name="three")
    assert proc.returncode == 0, proc.stderr
    assert _steps(dib.report("three"))["root.d"]["changed"] == ["elements"]


def test_a_dib_variable_is_part_of_the_key(dib):
    _build(dib, "one")
    proc = dib.run("t-cache", name="two", env={"DIB_T_CACHE_KNOB": "1"})
    assert proc.returncode == 0, proc.stderr
    steps = _steps(dib.report("two"))
    assert not steps["root.d"]["cached"] and "build" in steps["root.d"]["changed"]


def test_two_concurrent_builds_share_the_cache_safely(dib):
    procs = [dib.start("t-cache", name=f"c{i}") for i in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, dib.stderr_of_started()
    assert builds.tar_members(dib.image("c0")) == builds.tar_members(dib.image("c1"))
    third = _build(dib, "c2")
    assert all(s["cached"] for s in third["steps"])


def test_a_short_disk_warns_and_spares_what_a_build_just_used(dib):
    """DIB_CACHE_MIN_FREE larger than any disk: the build warns before it starts, the
    pruning after it drops nothing used in the last ten minutes, so the next build is
    still served from the cache."""
    env = {"DIB_CACHE_MIN_FREE": "1000T"}
    proc = dib.run("t-cache", name="one", env=env)
    assert proc.returncode == 0, proc.stderr
    log = dib.logfile("one").read_text()
    assert re.search(r"only [\d.]+ GiB free under \S+ \(TMP_DIR\); the build may run out",
                     log), log[-2000:]
    assert "least recently used entries" not in log
    proc = dib.run("t-cache", name="two", env=env)
    assert proc.returncode == 0, proc.stderr
    assert all(s["cached"] for s in dib.report("two")["steps"])


def test_dib_cache_lists_and_prunes(dib):
    _build(dib, "one")
    cache = dib.tmp_dir.parent / "image-cache"
    cmd = [str(builds.REPO / "bin" / "dib-cache"), "--image-cache", str(cache)]
    listing = subprocess.run(cmd + ["list"], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    assert "install.d/80-t-cache-late" in listing.stdout and "images" in listing.stdout
    # entries just used are protected: a running build may have them mounted
    kept = subprocess.run(cmd + ["prune", "--all"], capture_output=True, text=True)
    assert kept.returncode == 0 and "dropped 0 entries" in kept.stdout
    bad = subprocess.run(cmd + ["prune", "--max-size", "lots"], capture_output=True, text=True)
    assert bad.returncode == 1 and "--max-size: must be a size" in bad.stderr
    bad = subprocess.run(cmd + ["prune", "--max-size", "1G", "--min-free", "roomy"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "--min-free: must be a size" in bad.stderr
    assert "roomy" in bad.stderr


# -- steps keyed by what they read (layer-inputs.yaml) ------------------------------------------

CONTENT_HOOKS = {
    "install.d": {
        "10-t-conf": "echo conf-v1 > /etc/t-conf\n",
        "20-t-app": "mkdir -p /opt/app && echo app-v1 > /opt/app/version\n",
    },
    "post-install.d": {
        # the declared step: reads /etc/t-conf, writes /var/t-out (and scratch in /tmp)
        "50-t-slow": "mkdir -p /var/t-out && tr a-z A-Z < /etc/t-conf > /var/t-out/result\n"
                     "touch /tmp/t-scratch\n",
        "60-t-after": "cat /opt/app/version /var/t-out/result > /opt/app/summary\n",
    },
}
DECLARATION = ("post-install.d/50-t-slow:\n  reads: [/etc/t-conf]\n"
               "  writes: [/var/t-out, /tmp]\n")


@pytest.fixture
def content_dib(tmp_path):
    with builds.Dib(tmp_path) as d:
        make_element(d.elements, "t-content", hooks=CONTENT_HOOKS,
                     files={"layer-inputs.yaml": DECLARATION})
        yield d


def _content_build(dib, name: str, *args: str):
    proc = dib.run("t-content", name=name, args=args)
    assert proc.returncode == 0, proc.stderr
    return _steps(dib.report(name)), proc


def _edit(dib, script: str, old: str, new: str) -> None:
    path = next((dib.elements / "t-content").glob(f"*/{script}"))
    path.write_text(path.read_text().replace(old, new))


def test_a_declared_step_is_reused_when_only_unrelated_steps_changed(content_dib):
    dib = content_dib
    first, _ = _content_build(dib, "one")
    assert not first["post-install.d/50-t-slow"]["cached"]
    _edit(dib, "20-t-app", "app-v1", "app-v2")
    steps, _ = _content_build(dib, "two")
    assert not steps["install.d/20-t-app"]["cached"]
    assert steps["post-install.d/50-t-slow"]["cached"]
    # the step after it chains on the whole tree, so it runs again and sees the new app
    assert not steps["post-install.d/60-t-after"]["cached"]
    assert dib.read("opt/app/summary", name="two") == b"app-v2\nCONF-V1\n"
    # the cached result is the same tree a build without the cache makes
    _content_build(dib, "clean", "--no-cache")
    assert builds.tar_members(dib.image("two")) == builds.tar_members(dib.image("clean"))


def test_a_declared_step_runs_again_when_what_it_reads_changed(content_dib):
    dib = content_dib
    _content_build(dib, "one")
    _edit(dib, "10-t-conf", "conf-v1", "conf-v2")
    steps, _ = _content_build(dib, "two")
    slow = steps["post-install.d/50-t-slow"]
    assert not slow["cached"] and slow["changed"] == ["read:/etc/t-conf"]
    assert dib.read("var/t-out/result", name="two") == b"CONF-V2\n"


def test_a_step_that_writes_outside_its_declaration_is_chained_instead(content_dib):
    dib = content_dib
    _edit(dib, "50-t-slow", "touch /tmp/t-scratch", "touch /etc/t-undeclared")
    _, proc = _content_build(dib, "one")
    assert "post-install.d/50-t-slow (element t-content) changed /etc/t-undeclared, " \
           "which its layer-inputs.yaml does not declare" in proc.stderr
    again, _ = _content_build(dib, "two")
    assert again["post-install.d/50-t-slow"]["cached"]  # cached, by the chain key
    _edit(dib, "20-t-app", "app-v1", "app-v2")
    steps, _ = _content_build(dib, "three")
    assert not steps["post-install.d/50-t-slow"]["cached"]
    assert steps["post-install.d/50-t-slow"]["changed"] == ["prev"]


def test_declaring_another_elements_script_is_an_error(content_dib):
    dib = content_dib
    make_element(dib.elements, "t-thief", deps=["t-content"],
                 files={"layer-inputs.yaml": "post-install.d/50-t-slow:\n  reads: [/etc]\n"})
    for args in ((), ("--no-cache",)):
        proc = dib.run("t-thief", name="one", args=args)
        assert proc.returncode == 1
        assert "element t-thief: layer-inputs.yaml declares post-install.d/50-t-slow, a " \
               "script of element t-content" in proc.stderr
