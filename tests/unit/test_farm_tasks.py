"""The farm's pure parts (docs/farm.md): what a task carries, its key, the worker's child
process and its environment, the stale recovery at worker start -- and that nothing but
--farm loads Dask."""
from __future__ import annotations

import fcntl
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from dib import cmd, config, farm, farmtask, farmworker
from dib.errors import ConfigError
from tests.lib.elements import make_element

ROOT = Path(__file__).resolve().parents[2]


def values(*argv: str) -> dict:
    return vars(config._parser().parse_args(list(argv)))


# -- the options -----------------------------------------------------------------------------

def test_argv_is_normalised_and_outputs_made_absolute() -> None:
    v = values("-t", "tar", "-t", "docker", "-x", "-x", "-o", "out/web", "--logfile", "l.log",
               "--image-cache", "/mine", "--farm", "tcp://h:1", "-p", "vim,curl", "-n",
               "fake-os", "t-x")
    argv = farmtask.normalised_argv(v, ["fake-os", "t-x"], "/srv/builds")
    assert argv == ["-o", "/srv/builds/out/web", "-t", "tar,docker", "-x", "-x", "-n",
                    "-p", "vim,curl", "--logfile", "/srv/builds/l.log", "fake-os", "t-x"]
    # what the worker's machine decides and what is the farm's own never reaches the build
    assert "--image-cache" not in argv and "--farm" not in argv


def test_an_absolute_output_stays_where_it_is() -> None:
    argv = farmtask.normalised_argv(values("-o", "/shared/img", "x"), ["x"], "/elsewhere")
    assert argv[:2] == ["-o", "/shared/img"]


def test_the_environment_shipped_leaves_the_workers_own_behind() -> None:
    image_env = {"PATH": "/x", "HOME": "/home/me", "TMP_DIR": "/mine", "DIB_FARM": "tcp://h:1",
                 "DIB_IMAGE_CACHE": "/c", "SSH_AUTH_SOCK": "/run/agent", "FS_TYPE": "xfs",
                 "DIB_RELEASE": "bookworm", "MY_HOOK_VAR": "1", "ELEMENTS_PATH": "/e",
                 "REGISTRY_AUTH_FILE": "/secret.json", "DIB_REMOTE_CACHE_CREDENTIALS": "u:p",
                 "DIB_MIRROR_TOKEN": "t0k", "DIB_REMOTE_CACHE": "oci://reg/dib"}
    shipped = farmtask.shipped_env(image_env, own={"MY_HOOK_VAR": "1"})
    # the remote cache's address goes with the image, never a credential
    assert shipped == {"FS_TYPE": "xfs", "DIB_RELEASE": "bookworm", "MY_HOOK_VAR": "1",
                       "DIB_REMOTE_CACHE": "oci://reg/dib"}


def test_files_named_by_settings_are_shipped_and_a_block_device_file_inlined(tmp_path) -> None:
    (tmp_path / "Vagrantfile").write_text("Vagrant.configure")
    (tmp_path / "bd.yaml").write_text("- local_loop: {name: image0}\n")
    env = {"DIB_VAGRANT_VAGRANTFILE": "Vagrantfile", "DIB_BLOCK_DEVICE_CONFIG": "file://bd.yaml"}
    files = farmtask.file_inputs(env, os.fspath(tmp_path))
    assert files == {"DIB_VAGRANT_VAGRANTFILE": ("Vagrantfile", b"Vagrant.configure")}
    assert env["DIB_BLOCK_DEVICE_CONFIG"] == "- local_loop: {name: image0}\n"
    with pytest.raises(ConfigError, match="DIB_LIBVIRT_TEMPLATE=nope.xml: cannot read it"):
        farmtask.file_inputs({"DIB_LIBVIRT_TEMPLATE": "nope.xml"}, os.fspath(tmp_path))


# -- elements --------------------------------------------------------------------------------

def test_only_the_users_elements_are_shipped_and_they_round_trip(tmp_path) -> None:
    mine = make_element(tmp_path / "mine", "t-mine", hooks={"install.d": {"10-x": "true"}},
                        files={"static/etc/motd": "hello\n"})
    (mine / "__pycache__").mkdir()
    (mine / "__pycache__" / "x.pyc").write_bytes(b"junk")
    builtin = tmp_path / "builtin"
    base = make_element(builtin, "base")
    picked = farmtask.user_elements(["base", "t-mine"], {"base": base, "t-mine": mine}, builtin)
    assert picked == [("t-mine", mine)]
    data = farmtask.pack_elements(picked)
    farmtask.unpack_elements(data, tmp_path / "out")
    got = tmp_path / "out" / "t-mine"
    assert (got / "static/etc/motd").read_text() == "hello\n"
    assert os.access(got / "install.d" / "10-x", os.X_OK)
    assert not (got / "__pycache__").exists()


def test_an_element_archive_cannot_write_outside_its_directory(tmp_path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ConfigError, match="would land outside"):
        farmtask.unpack_elements(buf.getvalue(), tmp_path / "out")
    assert not (tmp_path / "escape").exists()


# -- the key ---------------------------------------------------------------------------------

def _recipe(tmp_path: Path, images) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(images, sort_keys=False))
    return path


def _tasks(tmp_path: Path, recipe: Path, env=None):
    environ = {"ELEMENTS_PATH": f"{ROOT / 'tests' / 'elements'}:{tmp_path / 'el'}",
               "TMP_DIR": os.fspath(tmp_path), "DIB_IMAGE_CACHE": os.fspath(tmp_path / "c"),
               **(env or {})}
    packed, _, _ = farm.tasks(["--recipe", os.fspath(recipe)], environ, os.fspath(tmp_path))
    return packed


def test_tasks_are_keyed_by_their_inputs(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    el = make_element(tmp_path / "el", "t-mine", hooks={"install.d": {"10-x": "echo 1"}})
    recipe = _recipe(tmp_path, [
        {"imagename": "out/a", "elements": ["fake-os", "t-mine"], "skip-base": True,
         "types": ["tar"]},
        {"imagename": "out/b", "elements": ["fake-os", "t-mine"], "skip-base": True,
         "types": ["tar"], "environment": {"DIB_TEST_X": "1"}}])
    a, b = _tasks(tmp_path, recipe)
    assert a.key.startswith("dib-image-") and a.key != b.key
    assert a.argv[:2] == ("-o", os.fspath(tmp_path / "out" / "a"))
    assert b.env == {"DIB_TEST_X": "1"}
    # the test elements (fake-os) and t-mine are the user's: shipped; nothing built in
    assert set(a.element_names) == {"fake-os", "t-mine"}
    assert a.report == os.fspath(tmp_path / "out" / "a.d" / "build-report.json")
    again = _tasks(tmp_path, recipe)
    assert [t.key for t in again] == [a.key, b.key]       # the same inputs: the same keys
    (el / "install.d" / "10-x").write_text("#!/bin/bash\necho 2\n")
    changed = _tasks(tmp_path, recipe)
    assert changed[0].key != a.key and changed[1].key != b.key
    # the submitter's own cache and TMP_DIR are not inputs of the image
    moved = _tasks(tmp_path, recipe, {"DIB_IMAGE_CACHE": "/elsewhere", "TMP_DIR": "/var/tmp"})
    assert [t.key for t in moved] == [t.key for t in changed]


def test_a_bad_farm_address_is_refused_up_front() -> None:
    with pytest.raises(ConfigError, match="is not a scheduler address"):
        config.parse_args(["--farm", "http://scheduler", "x"], {})
    cfg = config.parse_args(["x"], {"DIB_FARM": "tcp://sched"})
    assert cfg.farm == "tcp://sched:8786"


# -- the worker ------------------------------------------------------------------------------

def _task(tmp_path: Path, **kw) -> farmtask.Task:
    fields = dict(key="dib-image-x", label="out/a", argv=("-o", "/o/a", "fake-os"),
                  env={"DIB_RELEASE": "bookworm", "DIB_FARM": "tcp://h:1"},
                  cwd=os.fspath(tmp_path), report=os.fspath(tmp_path / "a.d" /
                                                          "build-report.json"))
    fields.update(kw)
    return farmtask.Task(**fields)


def test_the_child_environment_is_the_workers_plus_the_tasks(tmp_path) -> None:
    worker_env = {"PATH": "/usr/bin", "DIB_IMAGE_CACHE": "/w/cache", "TMP_DIR": "/w/tmp",
                  "DIB_REMOTE_CACHE": "oci://reg/own", "DIB_RELEASE": "trixie",
                  "SOMETHING_ELSE": "x"}
    env = farmworker.child_env(_task(tmp_path), {**worker_env, "DIB_FARM_LAYER_LOCKS": "x"},
                               tmp_path / "el", {"DIB_LIBVIRT_TEMPLATE": tmp_path / "t.xml"},
                               scheduler="tcp://10.0.0.1:8786")
    assert env == {"DIB_FARM_LAYER_LOCKS": "tcp://10.0.0.1:8786",
                   "PATH": "/usr/bin", "DIB_IMAGE_CACHE": "/w/cache", "TMP_DIR": "/w/tmp",
                   "DIB_REMOTE_CACHE": "oci://reg/own", "DIB_RELEASE": "bookworm",
                   "ELEMENTS_PATH": os.fspath(tmp_path / "el"),
                   "DIB_LIBVIRT_TEMPLATE": os.fspath(tmp_path / "t.xml")}
    shipped = _task(tmp_path, env={"DIB_REMOTE_CACHE": "oci://reg/theirs"})
    assert farmworker.child_env(shipped, worker_env, None, {})["DIB_REMOTE_CACHE"] == \
        "oci://reg/theirs"


def test_the_child_dies_with_the_worker(tmp_path) -> None:
    argv = farmworker.child_argv(_task(tmp_path), python="/py")
    assert argv == ["setpriv", "--pdeathsig", "SIGTERM", "--", "/py", "-m", "dib",
                    "-o", "/o/a", "fake-os"]


def _fake_build(tmp_path: Path, returncode: int, report: dict | None):
    seen = {}

    def runner(argv, *, env, cwd, on_line, tail, **_):
        seen.update(argv=argv, env=env, cwd=cwd)
        assert Path(env["ELEMENTS_PATH"], "t-mine", "README.rst").is_file()
        for line in ("step 1", "step 2", "boom"):
            on_line(line)
        if report is not None:
            path = tmp_path / "a.d" / "build-report.json"
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(report))
        return cmd.Result(tuple(argv), returncode, "", "boom")
    return runner, seen


def test_a_build_runs_as_a_child_and_reports(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TMP_DIR", os.fspath(tmp_path / "wtmp"))
    el = make_element(tmp_path / "el", "t-mine")
    task = _task(tmp_path, elements=farmtask.pack_elements([("t-mine", el)]),
                 element_names=("t-mine",))
    report = {"status": "ok", "outputs": [{"path": "/o/a.tar", "bytes": 3}],
              "steps": [{"cached": True, "remote": "hit"}, {"cached": True},
                        {"cached": False, "remote": "pushed"}],
              "remote_cache": {"bytes_pulled": 10, "bytes_pushed": 20}}
    runner, seen = _fake_build(tmp_path, 0, report)
    with cmd.use_runner(runner):
        out = farmworker.build(task)
    assert out.ok and out.outputs == ("/o/a.tar",)
    assert (out.steps, out.hits, out.remote_hits, out.pushed) == (3, 2, 1, 1)
    assert (out.bytes_pulled, out.bytes_pushed) == (10, 20)
    assert seen["argv"][-4:] == ["dib", "-o", "/o/a", "fake-os"]
    assert seen["cwd"] == os.fspath(tmp_path) and "DIB_FARM" not in seen["env"]
    assert list((tmp_path / "wtmp").iterdir()) == []     # the task's directory is gone


def test_a_failed_build_returns_its_log_tail_and_a_killed_one_raises(tmp_path,
                                                                     monkeypatch) -> None:
    monkeypatch.setenv("TMP_DIR", os.fspath(tmp_path / "wtmp"))
    runner, _ = _fake_build(tmp_path, 1, {"status": "failed", "error": "hook t-fail failed"})
    with cmd.use_runner(runner):
        out = farmworker.build(_task(tmp_path, elements=farmtask.pack_elements(
            [("t-mine", make_element(tmp_path / "el", "t-mine"))])))
    assert not out.ok and out.error == "hook t-fail failed"
    assert out.tail.splitlines() == ["step 1", "step 2", "boom"]
    runner, _ = _fake_build(tmp_path, -9, None)
    with cmd.use_runner(runner), pytest.raises(farmworker.BuildKilled, match="SIGKILL"):
        farmworker.build(_task(tmp_path, elements=farmtask.pack_elements(
            [("t-mine", make_element(tmp_path / "el", "t-mine"))])))


def test_worker_start_removes_dead_tasks_directories_only(tmp_path) -> None:
    dead = tmp_path / "dib_farm.dead"
    live = tmp_path / "dib_farm.live"
    for d in (dead, live):
        d.mkdir()
        (d / "lock").touch()
    with open(live / "lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        lines = farmworker.recover({"TMP_DIR": os.fspath(tmp_path)})
    assert lines == [f"removed stale farm task directory {dead}"]
    assert live.exists() and not dead.exists()


# -- no Dask without --farm ------------------------------------------------------------------

def test_nothing_but_farm_imports_dask(tmp_path) -> None:
    recipe = _recipe(tmp_path, [{"imagename": "out/a", "elements": ["fake-os"],
                                 "skip-base": True, "types": ["tar"]}])
    code = (
        "import sys\n"
        "from dib import cli\n"
        f"assert cli.disk_image_create(['--dry-run', '-n', '-t', 'tar', 'fake-os']) == 0\n"
        f"assert cli.disk_image_create(['--dry-run', '--recipe', {os.fspath(recipe)!r}]) == 0\n"
        "assert cli.disk_image_create(['--farm', 'tcp://h:1', '-n', 'fake-os']) == 1\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed'))\n"
        "assert not loaded, loaded\n"
        "print('no dask')\n")
    env = {"PATH": cmd.SAFE_PATH, "HOME": os.fspath(tmp_path), "PYTHONPATH": os.fspath(ROOT),
           "ELEMENTS_PATH": os.fspath(ROOT / "tests" / "elements"),
           "TMP_DIR": os.fspath(tmp_path), "DIB_IMAGE_CACHE": os.fspath(tmp_path / "c")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith("no dask")
    assert "--farm builds the images of a --recipe" in proc.stderr


# -- layer locks -------------------------------------------------------------------------------

class FakeRemote:
    def __init__(self, layers):
        self.layers, self.fetched, self.pushed = dict(layers), [], []

    def fetch(self, key, step_id, inputs):
        self.fetched.append(key)
        return self.layers.get(key)

    def push(self, key, layer, step_id):
        self.pushed.append(key)
        self.layers[key] = layer
        return True

    def report(self):
        return {"hits": 0}


class FakeLock:
    def __init__(self, free, remote=None, then=None):
        self.free, self.remote, self.then, self.events = free, remote, then, []

    def acquire(self, blocking=True, timeout=None):
        self.events.append("acquire" if blocking else "try")
        if not blocking and not self.free:
            return False
        if blocking and self.then:      # the other build pushes while we wait
            self.remote.layers.update(self.then)
        return True

    def release(self):
        self.events.append("release")


def test_a_missing_layer_is_built_under_its_lock_and_given_back_after_the_push(tmp_path):
    from dib import farmlock

    remote = FakeRemote({})
    locked = farmlock.LockedRemote(remote, "tcp://127.0.0.1:1")
    lock = FakeLock(free=True)
    locked._lock = lambda key: lock
    assert locked.fetch("k1", "install.d/10-x", {}) is None     # ours to build
    assert lock.events == ["try"]
    assert locked.push("k1", tmp_path, "install.d/10-x") is True
    assert lock.events == ["try", "release"] and remote.pushed == ["k1"]
    assert locked.report() == {"hits": 0, "farm_waits": 0}


def test_a_build_that_finds_the_layer_being_made_waits_and_pulls_it(tmp_path):
    from dib import farmlock

    remote = FakeRemote({})
    locked = farmlock.LockedRemote(remote, "tcp://127.0.0.1:1")
    lock = FakeLock(free=False, remote=remote, then={"k1": tmp_path})
    locked._lock = lambda key: lock
    assert locked.fetch("k1", "install.d/10-x", {}) == tmp_path
    assert lock.events == ["try", "acquire", "release"]
    assert remote.fetched == ["k1", "k1"] and locked.waited == 1


def test_without_a_scheduler_a_build_goes_on_alone(tmp_path):
    from dib import farmlock

    locked = farmlock.LockedRemote(FakeRemote({}), "tcp://127.0.0.1:1")
    locked._broken = True
    assert locked.fetch("k1", "s", {}) is None
    assert locked.push("k1", tmp_path, "s") is True
