"""Farm builds on a Dask cluster on 127.0.0.1 (root: fake-os builds; no network): a
scheduler and two worker processes, each with its own TMP_DIR and image cache as if on a
machine of its own (tests/lib/farm.py). docs/farm.md."""
from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Tuple

import pytest
import yaml

from tests.lib import builds, leaks
from tests.lib.elements import make_element

distributed = pytest.importorskip(
    "distributed", reason="the farm tests need Dask: pip install -e '.[farm]' "
                          "(python3 bin/dib-host-setup --test does)")

from tests.lib.farm import Cluster  # noqa: E402


@pytest.fixture
def dib(tmp_path):
    with builds.Dib(tmp_path) as d:
        yield d


@pytest.fixture
def cluster(dib):
    with Cluster(dib.base / "farm") as c:
        yield c
    # a worker's stale recovery may still be at work just after a kill: give it its time
    deadline = time.monotonic() + 30
    while leaks.mounts_under(dib.base) and time.monotonic() < deadline:
        time.sleep(0.5)


def _elements(dib) -> None:
    make_element(dib.elements, "t-common", hooks={"install.d": {
        "10-t-common": "echo common > /etc/t-common\n",
        "20-t-common": "mkdir -p /srv/common && echo 2 > /srv/common/two\n"}})
    for n in ("a", "b"):
        make_element(dib.elements, f"t-only-{n}", deps=["t-common"], hooks={"install.d": {
            f"50-t-only-{n}": f"echo {n} > /etc/t-only-{n}\n"}})


def _recipe(dib, images) -> Path:
    path = dib.base / "recipe.yaml"
    path.write_text(yaml.safe_dump(images, sort_keys=False))
    return path


def _image(dib, name, *elements, env=None) -> dict:
    entry = {"imagename": os.fspath(dib.out / name), "elements": ["fake-os", *elements],
             "skip-base": True, "types": ["tar"]}
    if env:
        entry["environment"] = env
    return entry



def _farm(dib, cluster, recipe: Path, *args, timeout=400):
    return dib.cli("--recipe", os.fspath(recipe), "--farm", cluster.address, *args,
                   timeout=timeout)


def test_a_recipe_is_built_across_the_farm_as_a_local_build_would(dib, cluster):
    _elements(dib)
    recipe = _recipe(dib, [_image(dib, "base", "t-common"),
                           _image(dib, "a", "t-only-a"),
                           _image(dib, "b", "t-only-b")])
    result = _farm(dib, cluster, recipe)
    assert result.returncode == 0, result.stderr
    printed = sorted(result.stdout.split())
    assert printed == sorted(os.fspath(dib.out / f"{n}.tar") for n in ("base", "a", "b"))
    for n in ("base", "a", "b"):
        assert f"farm: {dib.out / n}: building on " in result.stderr
        assert dib.report(n)["status"] == "ok"
    assert "recipe: built 3 images" in result.stderr
    # the builds ran on the workers, each in its own cache, not on the submitter
    assert not (dib.tmp_dir.parent / "image-cache").exists()
    assert any(list((w.cache / "layers").glob("*")) for w in cluster.workers
               if (w.cache / "layers").exists())
    # each output is what a local build without any cache makes
    for n, extra in (("base", ["t-common"]), ("a", ["t-only-a"]), ("b", ["t-only-b"])):
        local = dib.run(*extra, name=f"local-{n}", args=["--no-cache"])
        assert local.returncode == 0, local.stderr
        assert builds.tar_members(dib.image(n)) == builds.tar_members(dib.image(f"local-{n}"))
    assert dib.read("etc/t-only-b", name="b") == b"b\n"


def test_a_failed_image_shows_its_log_and_fails_the_run(dib, cluster):
    recipe = _recipe(dib, [_image(dib, "bad", "t-fail", env={"DIB_TEST_FAIL_PHASE": "install.d"}),
                           _image(dib, "good")])
    result = _farm(dib, cluster, recipe)
    assert result.returncode == 1, result.stderr
    assert result.stdout.split() == [os.fspath(dib.out / "good.tar")]
    assert f"{dib.out / 'bad'} failed on " in result.stderr
    assert "the end of its log:" in result.stderr and "t-fail" in result.stderr
    assert "error: recipe: 1 of 2 images failed:" in result.stderr


def _building(cluster, timeout=120) -> Tuple[int, object]:
    """(pid of the build, its worker) once a t-sleep step is running somewhere."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in cluster.workers:
            for ready in (w.cache / "layers").glob("tmp-*/t-sleep-ready"):
                return int(ready.parent.name.split("-")[1]), w
        time.sleep(0.05)
    raise AssertionError("no build reached t-sleep")


def test_a_worker_killed_mid_build_loses_nothing(dib, cluster):
    """The worker and its build die at once (as with the machine): the image is built by
    the other worker, and the restarted worker recovers what the dead build left mounted."""
    recipe = _recipe(dib, [_image(dib, "slow", "t-sleep",
                                  env={"DIB_TEST_SLEEP_PHASE": "install.d",
                                       "DIB_TEST_SLEEP_SECS": "6"})])
    proc = subprocess.Popen([sys.executable, os.fspath(builds.DISK_IMAGE_CREATE), "--recipe",
                             os.fspath(recipe), "--farm", cluster.address], env=dib.env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        pid, victim = _building(cluster)
        worker_pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert leaks.mounts_under(victim.tmp_dir)          # the build has its tree mounted
        os.killpg(pid, signal.SIGKILL)       # the build first, so it cannot unwind
        os.kill(worker_pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.split() == [os.fspath(dib.out / "slow.tar")]
    assert f"farm: {dib.out / 'slow'}: building on " in err
    assert err.count("building on") >= 2                   # started twice
    assert "[1/1] " in err and " built on " in err
    assert dib.report("slow")["status"] == "ok"
    # the dead worker was restarted by its nanny, whose preload recovered the mounts
    deadline = time.monotonic() + 60
    while leaks.mounts_under(victim.tmp_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert leaks.mounts_under(victim.tmp_dir) == []
    assert leaks.loops_under(victim.tmp_dir) == []
    assert "farm worker start: " in victim.log.read_text()
    assert list(victim.tmp_dir.glob("dib_build.*")) == []


def test_every_shared_layer_is_built_once_in_the_farm(dib, cluster, oci_registry):
    """Three images sharing a prefix -- fake-os and t-common, then one element of their own --
    with different outputs, two workers with empty caches of their own and one registry: no
    layer is built twice in the farm, the base layer (root.d, keyed by root.d's own elements
    and every environment.d) is the same in all three, and what one worker built the other
    pulled."""
    _elements(dib)
    images = [_image(dib, "base", "t-common"), _image(dib, "a", "t-only-a"),
              _image(dib, "b", "t-only-b")]
    images[1]["types"] = ["tgz"]
    images[2]["types"] = ["tar", "docker"]
    for image in images:
        image["remote-cache"] = oci_registry.url
    result = _farm(dib, cluster, _recipe(dib, images))
    assert result.returncode == 0, result.stderr
    reports = {n: dib.report(n) for n in ("base", "a", "b")}
    built = collections.Counter(s["key"] for r in reports.values() for s in r["steps"]
                                if not s["cached"])
    assert built and set(built.values()) == {1}, built
    bases = {s["key"] for r in reports.values() for s in r["steps"] if s["step"] == "root.d"}
    assert len(bases) == 1                              # one base layer for the three sets
    workers = set(re.findall(r"building on \S+ \((tcp://[^)]+)\)", result.stderr))
    remote_hits = [s for r in reports.values() for s in r["steps"] if s.get("remote") == "hit"]
    if len(workers) == 2:          # both took images: one pulled what the other built
        assert remote_hits, result.stderr
        assert {s["key"] for s in remote_hits} <= set(built)
    for n, extra, out in (("base", "t-common", dib.image("base")),
                          ("a", "t-only-a", dib.image("a", "tgz")),
                          ("b", "t-only-b", dib.image("b"))):
        local = dib.run(extra, name=f"local-{n}", args=["--no-cache"])
        assert local.returncode == 0, local.stderr
        assert builds.tar_members(out) == builds.tar_members(dib.image(f"local-{n}"))
