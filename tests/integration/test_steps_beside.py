"""Steps beside (issue 16): a step declared with ``beside: true`` in layer-inputs.yaml runs in
its own overlay branch beside the steps after it, and joins the tree at its own place.

The declared step ``50-t-slow`` waits (up to a few seconds) for a marker that the *later*
step ``60-t-after`` writes into the chroot cache, a directory both chroots share, and notes
what it saw there: "yes" proves the two ran at the same time; in sequence it sees nothing.
The note lives outside the image, so the trees of both schedules can be compared byte for
byte (fake-os trees have no volatile files).
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Dict

import pytest

from tests.lib import builds, leaks
from tests.lib.elements import make_element

DECLARATION = ("post-install.d/50-t-slow:\n  reads: [/etc/t-conf]\n"
               "  writes: [/var/t-out, /tmp]\n  beside: true\n  room-mib: 8\n")

SLOW = (
    'C="$DIB_CHROOT_CACHE"\n'
    'touch "$C/t-slow-started"\n'
    'seen=no\n'
    'for i in $(seq 40); do [ -e "$C/t-marker" ] && { seen=yes; break; }; sleep 0.1; done\n'
    'echo "$seen" > "$C/t-saw-marker"\n'
    "mkdir -p /var/t-out && tr a-z A-Z < /etc/t-conf > /var/t-out/result\n"
    # a file of the tree below it, replaced and deleted: a whiteout laid onto the disk
    "rm /var/t-out-old/gone && echo new > /var/t-out-old/kept\n"
    "touch /tmp/t-scratch\n"
)
AFTER = 'touch "$DIB_CHROOT_CACHE/t-marker"\nmkdir -p /opt && echo after > /opt/t-after\n'


def hooks(slow: str = SLOW, after: str = AFTER) -> Dict[str, Dict[str, str]]:
    return {
        "install.d": {"10-t-conf": "echo conf-v1 > /etc/t-conf\nmkdir -p /var/t-out-old\n"
                                   "echo old > /var/t-out-old/gone\n"
                                   "echo old > /var/t-out-old/kept\n"},
        "post-install.d": {"50-t-slow": slow, "60-t-after": after},
        "post-root.d": {"50-t-host": 'echo host > "$TARGET_ROOT/opt/t-host"\n'},
    }


DECLARATION_OLD = DECLARATION.replace("[/var/t-out, /tmp]", "[/var/t-out, /var/t-out-old, /tmp]")


@pytest.fixture
def dib(tmp_path):
    with builds.Dib(tmp_path) as d:
        yield d


def _element(dib: builds.Dib, **kw: str) -> None:
    make_element(dib.elements, "t-beside", hooks=hooks(**kw),
                 files={"layer-inputs.yaml": DECLARATION_OLD})


def _shared(dib: builds.Dib) -> Path:
    return dib.tmp_dir.parent / "image-cache" / "chroot"


def _build(dib: builds.Dib, name: str, *args: str, types: str = "tar") -> str:
    for marker in ("t-marker", "t-saw-marker", "t-slow-started"):
        (_shared(dib) / marker).unlink(missing_ok=True)
    proc = dib.run("t-beside", name=name, args=args, types=types)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def _saw(dib: builds.Dib) -> str:
    return (_shared(dib) / "t-saw-marker").read_text().strip()


def test_a_declared_step_runs_beside_the_later_steps_and_the_tree_is_the_same(dib):
    _element(dib)
    # on a disk (room-mib): sized without it, laid over the copied tree
    err = _build(dib, "disk", types="tar,raw")
    assert _saw(dib) == "yes", "60-t-after should have run while 50-t-slow was running"
    assert "post-install.d/50-t-slow (element t-beside) runs beside the steps after it" in err
    report = dib.report("disk")
    labels = [s["step"] for s in report["steps"]]
    assert labels.index("post-install.d/50-t-slow") + 1 == \
        labels.index("post-install.d/60-t-after"), "the report keeps the order of the plan"
    assert "(steps beside onto the disk)" in [p["phase"] for p in report["phases"]]
    assert dib.read("var/t-out/result", name="disk") == b"CONF-V1\n"
    members = dib.members("disk")
    assert "var/t-out-old/gone" not in members  # the whiteout was laid onto the disk
    assert dib.read("var/t-out-old/kept", name="disk") == b"new\n"

    # in sequence: it sees no marker, and the tree is the same
    _build(dib, "seq", "--steps-in-sequence", "--no-cache", types="tar,raw")
    assert _saw(dib) == "no"
    assert builds.tar_members(dib.image("disk")) == builds.tar_members(dib.image("seq"))
    # beside again, without the cache: the same disk size as in sequence (room-mib counts,
    # not the layer; layers in the cache and in the work dir measure differently, so like
    # is compared with like)
    _build(dib, "fresh", "--no-cache", types="tar,raw")
    assert _saw(dib) == "yes"
    assert builds.tar_members(dib.image("fresh")) == builds.tar_members(dib.image("seq"))
    assert dib.image("fresh", "raw").stat().st_size == dib.image("seq", "raw").stat().st_size

    # no disk: it joins the tree at the end of the tree steps
    _build(dib, "tree", "--no-cache")
    assert _saw(dib) == "yes"
    _build(dib, "seq-tree", "--steps-in-sequence", "--no-cache")
    assert builds.tar_members(dib.image("tree")) == builds.tar_members(dib.image("seq-tree"))

    # every step from the cache, the disk made again (another set of formats): the same
    # tree, and the disk sized as when it ran beside
    _build(dib, "cached", types="tar,raw,qcow2")
    assert all(s["cached"] for s in dib.report("cached")["steps"])
    assert builds.tar_members(dib.image("cached")) == builds.tar_members(dib.image("seq"))
    assert dib.image("cached", "raw").stat().st_size == dib.image("disk", "raw").stat().st_size


def test_a_later_step_that_touches_its_paths_runs_again_after_it(dib):
    after = AFTER + ("mkdir -p /var/t-out\n"
                     "cat /var/t-out/result > /var/t-out/copy 2>/dev/null "
                     "|| echo missing > /var/t-out/copy\n")
    _element(dib, after=after)
    err = _build(dib, "img", types="tar,raw")
    assert ("post-install.d/60-t-after changed /var/t-out/copy, which "
            "post-install.d/50-t-slow (element t-beside, running beside it) declares: it runs "
            "again after that step") in err
    assert dib.read("var/t-out/copy") == b"CONF-V1\n"
    _build(dib, "seq", "--steps-in-sequence", "--no-cache", types="tar,raw")
    assert builds.tar_members(dib.image("img")) == builds.tar_members(dib.image("seq"))


def test_a_step_beside_that_writes_outside_its_declaration_runs_again_in_sequence(dib):
    _element(dib, slow=SLOW + "touch /etc/t-undeclared\n")
    err = _build(dib, "img", types="tar,raw")
    assert ("post-install.d/50-t-slow (element t-beside) changed /etc/t-undeclared, which its "
            "layer-inputs.yaml does not declare; the build starts again with it in sequence"
            in err)
    assert "etc/t-undeclared" in dib.members()
    labels = [s["step"] for s in dib.report()["steps"]]
    assert len(labels) == len(set(labels)), "each step once in the report"
    # the next build knows: in sequence from the start (the step itself from the cache)
    err = _build(dib, "again", types="tar,raw")
    assert "post-install.d/50-t-slow changed undeclared paths when it last ran: it runs in " \
           "sequence" in err
    assert builds.tar_members(dib.image("again")) == builds.tar_members(dib.image("img"))


def test_a_failing_step_beside_stops_the_build_cleanly(dib):
    _element(dib, slow='touch "$DIB_CHROOT_CACHE/t-slow-started"\necho slow-broke\nexit 3\n')
    proc = dib.run("t-beside", types="tar,raw")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "post-install.d/50-t-slow" in proc.stderr and "t-beside" in proc.stderr
    assert "slow-broke" in proc.stderr
    assert not dib.image().exists() and not dib.image(fmt="raw").exists()
    assert dib.report()["status"] == "failed"


def test_a_signal_while_a_step_runs_beside_unwinds_everything(dib):
    # the declared step sleeps; the build is interrupted while it does
    _element(dib, slow='touch "$DIB_CHROOT_CACHE/t-slow-started"\nsleep 120\n')
    started = _shared(dib) / "t-slow-started"
    started.unlink(missing_ok=True)
    proc = dib.start("t-beside", types="tar,raw")
    deadline = time.monotonic() + 90
    while not started.exists():
        assert proc.poll() is None, dib.stderr_of_started()
        assert time.monotonic() < deadline, "the declared step did not start"
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGINT)
    rc = proc.wait(timeout=60)
    err = dib.stderr_of_started()
    assert rc == 128 + signal.SIGINT, err
    assert "interrupted by SIGINT" in err and "Traceback" not in err
    assert builds.processes_under(dib.tmp_dir) == []
    assert leaks.mounts_under(dib.tmp_dir) == []
    assert dib.workdirs() == []
    assert not dib.image().exists()
