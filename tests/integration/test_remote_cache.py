"""The remote layer cache against a real registry (Debian's docker-registry on 127.0.0.1,
the ``oci_registry`` fixture) and real skopeo: a build pushes its layers; a second machine --
a fresh ``DIB_IMAGE_CACHE`` -- pulls every step and writes the same tree; a corrupt blob is
detected, warned about and the step rebuilt; a registry that is gone before or during the
build costs a warning, never the build.
"""
from __future__ import annotations

import base64
import json
import os
import tarfile
from typing import Dict

import pytest

from tests.lib import builds
from tests.lib.elements import make_element

HOOKS = {
    "pre-install.d": {"20-t-remote-pre": "mkdir -p /opt/t && echo pre > /opt/t/pre\n"},
    "install.d": {
        "20-t-remote-a": "echo a > /opt/t/a; mkdir -p /opt/t/dir; echo x > /opt/t/dir/x\n"
                         "chown 123:45 /opt/t/a; ln -s /opt/t/a /opt/t/link\n",
        # a whiteout (/bin/vi) and a directory replaced by a file
        "30-t-remote-b": "rm -rf /opt/t/dir; echo replaced > /opt/t/dir; rm /bin/vi\n",
    },
    "post-install.d": {"20-t-remote-post": "cat /opt/t/a > /opt/t/post\n"},
    "post-root.d": {
        # stops the registry when a test asks (DIB_TEST_* is no input of any key)
        # (until it is gone or a zombie: the test reaps it only at the end)
        "10-t-remote-stop": "P=${DIB_TEST_REGISTRY_PID:-}\n"
                            "if [ -n \"$P\" ]; then\n"
                            "  kill -KILL \"$P\"\n"
                            "  while [ -e /proc/$P ] && ! grep -q '^State:.*Z' "
                            "/proc/$P/status; do sleep 0.1; done\n"
                            "fi\n",
        # a host step that also leaves a file in the hooks tree for later phases
        "20-t-remote-root": "echo host > \"$TARGET_ROOT/opt/t/post-root\"\n"
                            "mkdir -p \"$TMP_HOOKS_PATH/t-remote\"\n"
                            "echo from-post-root > \"$TMP_HOOKS_PATH/t-remote/note\"\n",
    },
}


@pytest.fixture
def dib(tmp_path):
    with builds.Dib(tmp_path) as d:
        make_element(d.elements, "t-remote", hooks=HOOKS)
        yield d



def _build(dib, name: str, registry_url: str, cache: str = "image-cache",
           extra_env: Dict[str, str] = None) -> dict:
    env = {"DIB_IMAGE_CACHE": os.fspath(dib.base / cache), "DIB_REMOTE_CACHE": registry_url,
           **(extra_env or {})}
    proc = dib.run("t-remote", name=name, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dib.report(name)


def _tags_of(report: dict) -> set:
    return {f"layer-{s['key']}" for s in report["steps"] if s["step"] != "extra-data.d"}


def test_a_fresh_machine_pulls_every_step_and_builds_the_same_tree(dib, oci_registry):
    first = _build(dib, "one", oci_registry.url)
    assert first["steps"] and all(s.get("remote") == "pushed" for s in first["steps"])
    remote = first["remote_cache"]
    assert remote["pushed"] == len(first["steps"]) and remote["bytes_pushed"] > 0
    assert remote["warnings"] == [] and remote["url"] == oci_registry.url
    assert remote["image_pushes"] == 2  # the tree's facts and the tar
    layer_tags = {t for t in oci_registry.tags() if t.startswith("layer-")}
    assert layer_tags == _tags_of(first)

    second = _build(dib, "two", oci_registry.url, cache="other-machine-cache")
    assert all(s["cached"] and s.get("remote") == "hit" for s in second["steps"]), \
        second["steps"]
    remote = second["remote_cache"]
    assert (remote["hits"], remote["misses"], remote["pushed"]) == (len(second["steps"]), 0, 0)
    assert remote["image_hits"] == 2  # the output came from the registry too
    assert remote["bytes_pulled"] == first["remote_cache"]["bytes_pushed"]
    assert "(cached image)" in dib.logfile("two").read_text()
    one, two = builds.tar_members(dib.image("one")), builds.tar_members(dib.image("two"))
    assert one == two
    assert "./bin/vi" not in two and two["./opt/t/dir"][0] == tarfile.REGTYPE
    assert two["./opt/t/a"][2:4] == (123, 45)
    # the post-root.d step's file in the hooks tree came along with its layer
    log = dib.logfile("two").read_text()
    assert "from the remote cache" in log


def test_a_registry_that_wants_a_login(dib, oci_registry_with_login):
    """Credentials from DIB_REMOTE_CACHE_CREDENTIALS or an auth file work, appear in no
    log, report, image, manifest or blob; without them the build goes on (one warning)."""
    reg = oci_registry_with_login
    user, secret = reg.credentials
    first = _build(dib, "one", reg.url,
                   extra_env={"DIB_REMOTE_CACHE_CREDENTIALS": f"{user}:{secret}",
                              "DIB_REMOTE_CACHE_IMAGES": "0"})
    assert all(s.get("remote") == "pushed" for s in first["steps"])
    # DIB_REMOTE_CACHE_IMAGES=0: only layers go to the registry
    assert first["remote_cache"]["image_pushes"] == 0
    assert reg.tags() and all(t.startswith("layer-") for t in reg.tags())
    token = base64.b64encode(f"{user}:{secret}".encode())
    for path in [dib.logfile("one"), dib.out / "one.d" / "build-report.json",
                 dib.image("one"), *reg.storage.rglob("data")]:
        data = path.read_bytes()
        assert secret.encode() not in data and token not in data, path
    assert not list((dib.base / "image-cache").rglob("auth.json"))  # removed after the build

    auth = dib.base / "auth.json"  # what `skopeo login` / `podman login` write
    auth.write_text(json.dumps({"auths": {reg.address: {"auth": token.decode()}}}))
    second = _build(dib, "two", reg.url, cache="second-cache",
                    extra_env={"REGISTRY_AUTH_FILE": os.fspath(auth)})
    assert all(s.get("remote") == "hit" for s in second["steps"])

    third = _build(dib, "three", reg.url, cache="third-cache")
    assert not any(s["cached"] for s in third["steps"])
    remote = third["remote_cache"]
    assert "access denied" in remote["disabled"] and len(remote["warnings"]) == 1


def test_a_corrupt_blob_is_detected_warned_about_and_rebuilt(dib, oci_registry):
    first = _build(dib, "one", oci_registry.url)
    victim = next(s for s in first["steps"] if s["step"] == "install.d/30-t-remote-b")
    digest = oci_registry.manifest(f"layer-{victim['key']}")["layers"][0]["digest"]
    blob = oci_registry.blob_file(digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    blob.write_bytes(bytes(data))

    second = _build(dib, "two", oci_registry.url, cache="other-machine-cache")
    steps = {s["step"]: s for s in second["steps"]}
    assert not steps["install.d/30-t-remote-b"]["cached"]
    assert steps["install.d/20-t-remote-a"].get("remote") == "hit"
    # the key does not depend on the layer's bytes: later steps are still remote hits
    assert steps["post-install.d/20-t-remote-post"].get("remote") == "hit"
    warnings = second["remote_cache"]["warnings"]
    assert any("install.d/30-t-remote-b" in w for w in warnings), warnings
    assert "install.d/30-t-remote-b" in dib.logfile("two").read_text()
    assert builds.tar_members(dib.image("one")) == builds.tar_members(dib.image("two"))


def test_a_registry_that_is_gone_costs_a_warning_not_the_build(dib, oci_registry):
    _build(dib, "one", oci_registry.url)
    oci_registry.stop()
    second = _build(dib, "two", oci_registry.url, cache="other-machine-cache")
    assert not any(s["cached"] for s in second["steps"])
    remote = second["remote_cache"]
    assert "unreachable" in remote["disabled"] and remote["hits"] == 0
    assert len(remote["warnings"]) == 1  # said once, then left alone
    assert builds.tar_members(dib.image("one")) == builds.tar_members(dib.image("two"))
    # strict pushing makes the same situation an error that names the registry
    proc = dib.run("t-remote", name="three",
                   env={"DIB_IMAGE_CACHE": os.fspath(dib.base / "third-cache"),
                        "DIB_REMOTE_CACHE": oci_registry.url, "DIB_REMOTE_CACHE_STRICT": "1"})
    assert proc.returncode != 0
    assert oci_registry.url in proc.stderr and "Traceback" not in proc.stderr


def test_the_registry_going_away_mid_build_does_not_fail_it(dib, oci_registry):
    """The first build pushes every step; the registry then loses one late step's tag, so
    the second build (a fresh cache) pulls the steps before it, runs it -- and that step
    stops the registry: its push and every later lookup fail, the build goes on."""
    first = _build(dib, "one", oci_registry.url)
    stopper = next(s for s in first["steps"] if s["step"] == "post-root.d/10-t-remote-stop")
    oci_registry.delete(f"layer-{stopper['key']}")
    second = _build(dib, "two", oci_registry.url, cache="other-machine-cache",
                    extra_env={"DIB_TEST_REGISTRY_PID": str(oci_registry.proc.pid)})
    steps = {s["step"]: s for s in second["steps"]}
    assert steps["install.d/20-t-remote-a"].get("remote") == "hit"
    assert steps["post-install.d/20-t-remote-post"].get("remote") == "hit"
    assert steps["post-root.d/10-t-remote-stop"].get("remote") == "push failed"
    assert not steps["post-root.d/20-t-remote-root"]["cached"]
    assert "unreachable" in second["remote_cache"]["disabled"]
    assert not oci_registry.answers()
    assert dib.read("opt/t/post-root", name="two") == b"host\n"
    assert builds.tar_members(dib.image("one")) == builds.tar_members(dib.image("two"))
