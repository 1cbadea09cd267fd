"""The remote layer cache's pure parts (dib.remote): the URL, the layer tar and its
whiteouts, the manifest, skopeo's messages, credentials, and the pull/push logic of a step
against an in-memory registry (no skopeo, no network). tests/integration/test_remote_cache.py
runs the same against a real registry (skopeo, docker-registry).
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List, Optional

import pytest

from dib import cmd, config, layers, steps
from dib import log as dlog
from dib.errors import ConfigError, DibError
from dib.remote import client, layer, oci, url
from dib.remote.cache import RemoteCache
from dib.tree import LayeredTree

ROOT = Path(__file__).resolve().parents[2]

# -- the URL ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, registry, repo, tls", [
    ("oci://registry.example.org/dib", "registry.example.org", "dib", True),
    ("oci+http://127.0.0.1:5000/team/dib-cache", "127.0.0.1:5000", "team/dib-cache", False),
    ("oci://[::1]:5000/a.b/c__d", "[::1]:5000", "a.b/c__d", True),
    ("oci://Host-1:443/x/", "host-1:443", "x", True),
])
def test_a_remote_cache_url_parses(text: str, registry: str, repo: str, tls: bool) -> None:
    u = url.parse(text)
    assert (u.registry, u.repo, u.tls) == (registry, repo, tls)
    assert url.parse(str(u)) == u
    assert u.reference("layer-abc") == f"{registry}/{repo}:layer-abc"


@pytest.mark.parametrize("text, why", [
    ("http://registry/dib", "must be oci://"),
    ("oci://registry", "names no repository"),
    ("oci://registry:0/dib", "port '0'"),
    ("oci://registry:99999/dib", "port '99999'"),
    ("oci://registry:/dib", "port ''"),
    ("oci://-bad-/dib", "not a host name"),
    ("oci://registry/Dib", "not a repository name"),
    ("oci://registry/dib//x", "not a repository name"),
    ("oci://registry/dib?x=1", "query or fragment"),
])
def test_a_bad_remote_cache_url_says_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(url.BadURL, match=None) as err:
        url.parse(text)
    assert why in str(err.value)


def test_credentials_in_the_url_are_refused_without_being_echoed() -> None:
    with pytest.raises(url.BadURL) as err:
        url.parse("oci://ci:hunter2@registry/dib")
    assert "hunter2" not in str(err.value) and "REGISTRY_AUTH_FILE" in str(err.value)


def test_the_option_names_itself_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        config.parse_args(["-o", str(tmp_path / "i"), "--remote-cache", "oci://h/UP",
                           "fake-os"], {})
    assert err.value.message.startswith("--remote-cache: ")
    with pytest.raises(ConfigError, match="^DIB_REMOTE_CACHE: "):
        config.parse_args(["-o", str(tmp_path / "i"), "fake-os"],
                          {"DIB_REMOTE_CACHE": "oci:/h/x"})


def test_bad_credentials_are_refused_without_showing_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        config.parse_args(["-o", str(tmp_path / "i"), "fake-os"],
                          {"DIB_REMOTE_CACHE_CREDENTIALS": "justapassword"})
    assert "justapassword" not in f"{err.value.message} {err.value.hint}"
    cfg = config.parse_args(["-o", str(tmp_path / "i"), "fake-os"],
                            {"DIB_REMOTE_CACHE_CREDENTIALS": "ci:pa:ss"})
    assert cfg.remote_cache_credentials == ("ci", "pa:ss")
    assert "pa:ss" not in repr(cfg).replace(repr(cfg.env), "")


# -- the layer tar --------------------------------------------------------------------------


def _tree(root: Path) -> None:
    (root / "etc/sub").mkdir(parents=True)
    (root / "etc/a").write_text("a\n")
    os.link(root / "etc/a", root / "etc/a-hard")
    (root / "etc/sub/b").write_bytes(b"\0b" * 3000)
    (root / "etc/sub/b").chmod(0o600)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").symlink_to("/etc/a")
    os.utime(root / "etc/sub", (1_000_000_000, 1_000_000_000))


def _pack(root: Path) -> "tuple[bytes, str]":
    buf = io.BytesIO()
    digest = layer.pack(root, buf)
    return buf.getvalue(), digest


def test_a_tree_round_trips_through_a_layer_tar(tmp_path: Path) -> None:
    _tree(tmp_path / "up")
    import socket

    with socket.socket(socket.AF_UNIX) as sock:  # a socket left behind: no layer holds one
        sock.bind(os.fspath(tmp_path / "up" / "etc" / "sock"))
    data, digest = _pack(tmp_path / "up")
    assert digest == __import__("hashlib").sha256(data).hexdigest()
    assert _pack(tmp_path / "up")[0] == data  # the same directory, the same bytes
    (tmp_path / "layer.tar").write_bytes(data)
    (tmp_path / "out").mkdir()
    layer.unpack(tmp_path / "layer.tar", tmp_path / "out")
    assert _pack(tmp_path / "out")[1] == digest
    out = tmp_path / "out"
    assert os.readlink(out / "usr/bin/tool") == "/etc/a"
    assert os.stat(out / "etc/a").st_ino == os.stat(out / "etc/a-hard").st_ino
    assert stat.S_IMODE(os.stat(out / "etc/sub/b").st_mode) == 0o600
    assert os.stat(out / "etc/sub").st_mtime == 1_000_000_000
    with tarfile.open(tmp_path / "layer.tar") as t:
        names = t.getnames()
        assert all(m.uname == "" and m.gname == "" for m in t.getmembers())
    assert "etc/sock" not in names
    assert names.index("etc") < names.index("etc/a") < names.index("etc/sub/b")


def _can_make_whiteouts(path: Path) -> bool:
    probe = path / "probe"
    try:
        os.mknod(probe, stat.S_IFCHR, os.makedev(0, 0))
        os.setxattr(path, layer.OPAQUE_XATTR, b"y")
        os.removexattr(path, layer.OPAQUE_XATTR)
        return True
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def test_overlay_whiteouts_become_oci_whiteouts_and_back(tmp_path: Path) -> None:
    if not _can_make_whiteouts(tmp_path):
        pytest.skip("making overlayfs whiteouts (a 0/0 device, a trusted.* attribute) needs "
                    "root: run the unit tests as root to cover them")
    up = tmp_path / "up"
    (up / "etc/replaced").mkdir(parents=True)
    os.mknod(up / "etc/gone", stat.S_IFCHR, os.makedev(0, 0))
    os.setxattr(up / "etc/replaced", layer.OPAQUE_XATTR, b"y")
    (up / "etc/replaced/new").write_text("n\n")
    os.setxattr(up / "etc/replaced/new", "trusted.dib-test", b"\x01\xff")
    # overlayfs's bookkeeping on copied-up entries: dropped
    os.setxattr(up / "etc", "trusted.overlay.origin", b"\x00\xfb")
    os.setxattr(up / "etc", "trusted.overlay.impure", b"y")
    data, digest = _pack(up)
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        names = t.getnames()
        marker = t.getmember("etc/replaced/new")
    assert "etc/.wh.gone" in names and "etc/gone" not in names
    assert "etc/replaced/.wh..wh..opq" in names
    assert marker.pax_headers["SCHILY.xattr.trusted.dib-test"].encode(
        "utf-8", "surrogateescape") == b"\x01\xff"
    (tmp_path / "l.tar").write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    layer.unpack(tmp_path / "l.tar", out)
    st = os.lstat(out / "etc/gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert not (out / "etc/.wh.gone").exists()
    assert os.getxattr(out / "etc/replaced", layer.OPAQUE_XATTR) == b"y"
    assert not (out / "etc/replaced/.wh..wh..opq").exists()
    assert os.getxattr(out / "etc/replaced/new", "trusted.dib-test") == b"\x01\xff"
    assert _pack(out)[1] == digest
    assert not [a for a in os.listxattr(out / "etc") if a.startswith("trusted.overlay.")]
    # a redirect changes what the merged tree shows, and OCI cannot say it
    os.setxattr(up / "etc", "trusted.overlay.redirect", b"/old")
    with pytest.raises(layer.Unsupported, match="redirect"):
        _pack(up)


def _tar(tmp_path: Path, members: List[tarfile.TarInfo]) -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as t:
        for m in members:
            t.addfile(m, io.BytesIO(b"x" * m.size) if m.isreg() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type, m.linkname, m.size = kind, link, 1 if kind == tarfile.REGTYPE else 0
    return m


@pytest.mark.parametrize("members, why", [
    ([_member("/etc/passwd")], "outside the layer"),
    ([_member("etc/../../x")], "outside the layer"),
    ([_member("etc", tarfile.SYMTYPE, "/etc"), _member("etc/passwd")], "below a symlink"),
    ([_member("a", tarfile.LNKTYPE, "/etc/shadow")], "hard link"),
])
def test_a_layer_that_escapes_its_directory_is_refused(tmp_path: Path, members, why) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(layer.BadLayer, match=why):
        layer.unpack(_tar(tmp_path, members), out)
    assert list(out.iterdir()) == []


# -- the manifest -----------------------------------------------------------------------------


def _manifest(key: str = "k" * 32, hooks: Optional[Dict[str, Any]] = None) -> bytes:
    return oci.manifest(key=key, step="install.d/10-x", config_digest="c" * 64,
                        config_size=10, layer_digest="a" * 64, layer_size=99,
                        diff_id="d" * 64, hooks=hooks)


def test_a_manifest_says_what_the_layer_is_and_reads_back() -> None:
    raw = _manifest(hooks={"environment.d/50-x": [0o644, "eA=="]})
    doc = json.loads(raw)
    assert doc["mediaType"] == oci.MANIFEST_TYPE and doc["schemaVersion"] == 2
    assert doc["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    entry = oci.parse_manifest(raw, "k" * 32)
    assert (entry.layer_digest, entry.layer_size, entry.diff_id) == ("a" * 64, 99, "d" * 64)
    assert entry.hooks == {"environment.d/50-x": [0o644, "eA=="]}
    assert raw == _manifest(hooks={"environment.d/50-x": [0o644, "eA=="]})
    assert oci.config_blob("armhf", "d" * 64, "s") == oci.config_blob("armhf", "d" * 64, "s")
    assert json.loads(oci.config_blob("armhf", "d" * 64, "s"))["architecture"] == "arm"


@pytest.mark.parametrize("raw, why", [
    (b"not json", "not an OCI manifest"),
    (_manifest(key="other"), "made for key"),
    (_manifest(hooks={"../../etc/cron.d/x": [0o644, ""]}), "outside the hooks tree"),
    (_manifest(hooks={"/etc/x": [0o644, ""]}), "outside the hooks tree"),
    (_manifest().replace(b'"sha256:' + b"a" * 64, b'"md5:abc'), "not a sha256 digest"),
])
def test_a_foreign_or_hostile_manifest_is_refused(raw: bytes, why: str) -> None:
    with pytest.raises(oci.BadManifest, match=why):
        oci.parse_manifest(raw, "k" * 32)


# -- skopeo -----------------------------------------------------------------------------------


def test_a_plain_http_registry_behind_oci_scheme_is_unreachable_with_a_hint() -> None:
    message = ('level=fatal msg="initializing source docker://127.0.0.1:5/dib-cache:layer-x: '
               'pinging container registry 127.0.0.1:5: Get \\"https://127.0.0.1:5/v2/\\": '
               'http: server gave HTTP response to HTTPS client"')
    assert client.classify(message) is client.Outcome.UNREACHABLE
    assert "oci+http://" in client.hint(message)
    assert client.hint("manifest unknown") == ""


@pytest.mark.parametrize("output, outcome", [
    ('level=fatal msg="initializing source docker://127.0.0.1:1/dib-cache:layer-x: reading '
     'manifest layer-x in 127.0.0.1:1/dib-cache: manifest unknown: manifest unknown"',
     client.Outcome.MISSING),
    ('level=fatal msg="writing blob: happened during read: Digest did not match, expected '
     'sha256:45ce, got sha256:8930"', client.Outcome.FAILED),
    ('level=fatal msg="initializing source docker://127.0.0.1:1/x:y: pinging container '
     'registry 127.0.0.1:1: Get \\"http://127.0.0.1:1/v2/\\": dial tcp 127.0.0.1:1: connect: '
     'connection refused"', client.Outcome.UNREACHABLE),
    ('msg="reading manifest y in r/x: unauthorized: authentication required"',
     client.Outcome.DENIED),
    # a registry that accepts connections and never answers, after --command-timeout
    ('msg="initializing source docker://127.0.0.1:37397/x:y: pinging container registry '
     '127.0.0.1:37397: Get \\"http://127.0.0.1:37397/v2/\\": context deadline exceeded"',
     client.Outcome.UNREACHABLE),
])
def test_skopeo_messages_are_classified(output: str, outcome: client.Outcome) -> None:
    assert client.classify(output) is outcome


def test_credentials_go_to_a_private_file_never_to_argv(tmp_path: Path) -> None:
    seen: List[List[str]] = []

    def runner(argv: List[str], **kwargs: Any) -> cmd.Result:
        seen.append(list(argv))
        return cmd.Result(tuple(argv), 1, "", "unauthorized: bad password s3cr:et for ci")

    u = url.parse("oci://registry.example.org:5000/dib")
    sk = client.Skopeo.make(u, tmp_path / "private", {"HOME": "/root", "SECRET": "x"},
                            ("ci", "s3cr:et"))
    assert stat.S_IMODE(os.stat(sk.authfile).st_mode) == 0o600
    auth = json.loads(Path(sk.authfile).read_text())["auths"]["registry.example.org:5000"]
    assert base64.b64decode(auth["auth"]).decode() == "ci:s3cr:et"
    assert "SECRET" not in sk.env and sk.env["HOME"] == "/root"
    with cmd.use_runner(runner), pytest.raises(client.RegistryError) as err:
        sk.pull("layer-x", tmp_path / "d")
    assert err.value.outcome is client.Outcome.DENIED
    assert "s3cr:et" not in str(err.value)
    assert not any("s3cr:et" in a for a in seen[0])
    assert f"--src-authfile={sk.authfile}" in seen[0]
    assert "--src-tls-verify=true" in seen[0]


def test_the_remote_cache_settings_reach_neither_hooks_nor_keys(tmp_path: Path) -> None:
    env = {"DIB_RELEASE": "bookworm", "DIB_REMOTE_CACHE": "oci://r/dib",
           "DIB_REMOTE_CACHE_CREDENTIALS": "ci:s3cret", "DIB_REMOTE_CACHE_STRICT": "1"}
    plain = layers.build_inputs("amd64", {"DIB_RELEASE": "bookworm"}, ())
    assert layers.build_inputs("amd64", env, ()) == plain
    from dib import context

    cfg = config.parse_args(["-o", str(tmp_path / "i"), "fake-os"], env)
    res = SimpleNamespace(order=[], elements={})
    wd = SimpleNamespace(hooks=tmp_path / "hooks", base=tmp_path, image=tmp_path / "image",
                         mnt=tmp_path / "mnt")
    (tmp_path / "hooks").mkdir()
    hook_env = context.hook_environment(cfg, res, wd, {})  # type: ignore[arg-type]
    assert not [k for k in hook_env if k.startswith("DIB_REMOTE_CACHE")]
    assert "s3cret" not in "".join(hook_env.values())
    assert "DIB_RELEASE" in hook_env["DIB_ENV"]


def test_nothing_of_the_remote_cache_is_imported_without_it(tmp_path: Path) -> None:
    code = ("import sys; from dib import build, cli, config, steps; "
            "config.parse_args(['-o', sys.argv[1], 'fake-os'], {}); "
            "print(sorted(m for m in sys.modules if m.startswith('dib.remote')))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "i")], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- a step against an in-memory registry --------------------------------------------------


class FakeRegistry:
    """tag -> {file name: bytes} of a ``dir:`` layout; ``down`` makes every call fail as
    an unreachable registry does."""

    def __init__(self) -> None:
        self.tags_: Dict[str, Dict[str, bytes]] = {}
        self.down = False
        self.calls: List[str] = []

    def _check(self, verb: str, tag: str) -> None:
        self.calls.append(f"{verb} {tag}")
        if self.down:
            raise client.RegistryError(client.Outcome.UNREACHABLE, "connection refused")

    def pull(self, tag: str, dest: Path) -> None:
        self._check("pull", tag)
        if tag not in self.tags_:
            raise client.RegistryError(client.Outcome.MISSING, "manifest unknown")
        dest.mkdir()
        for name, data in self.tags_[tag].items():
            (dest / name).write_bytes(data)

    def push(self, src: Path, tag: str) -> None:
        self._check("push", tag)
        self.tags_[tag] = {p.name: p.read_bytes() for p in src.iterdir()}

    def tags(self) -> List[str]:
        self._check("list", "")
        return list(self.tags_)

    def layer_blob(self, tag: str) -> str:
        manifest = json.loads(self.tags_[tag]["manifest.json"])
        return manifest["layers"][0]["digest"].split(":")[1]


@pytest.fixture
def zstd_runner() -> Iterator[None]:
    """Mounts are faked; zstd really runs (the remote cache packs with it)."""
    def runner(argv: List[str], **kwargs: Any) -> cmd.Result:
        if argv[0] == "zstd":
            proc = subprocess.run(argv, capture_output=True, text=True)
            return cmd.Result(tuple(argv), proc.returncode, "", proc.stderr)
        return cmd.Result(tuple(argv), 0, "", "")
    if subprocess.run(["which", "zstd"], capture_output=True).returncode != 0:
        pytest.skip("needs the zstd program: apt-get install zstd")
    with cmd.use_runner(runner):
        yield


class Machine:
    """One builder: its own layer store, the shared registry."""

    def __init__(self, base: Path, registry: FakeRegistry, strict: bool = False) -> None:
        base.mkdir(parents=True)
        self.base = base
        self.store = layers.LayerStore(base / "cache", base / "scratch", enabled=True)
        self.hooks = base / "hooks"
        self.hooks.mkdir()
        fake: Any = registry
        remote = RemoteCache(url.parse("oci+http://127.0.0.1:1/dib"), fake,
                             self.store, arch="amd64", strict=strict, timings=dlog.Timings())
        self.b = SimpleNamespace(store=self.store, wd=SimpleNamespace(hooks=self.hooks),
                                 steps=[], chroot=self._chroot, remote=remote)
        (base / "mnt").mkdir()

    @contextlib.contextmanager
    def _chroot(self, mnt: Path) -> Iterator[Path]:
        yield mnt

    def tree(self) -> LayeredTree:
        return LayeredTree(self.store.dir, self.base / "mnt")

    def close(self) -> None:
        self.store.close()


class WritesBase:
    """root.d stand-in: writes a small tree, and a file into the hooks tree."""

    def __init__(self, hooks: Path) -> None:
        self.hooks = hooks
        self.runs = 0

    def __call__(self, mnt: Path) -> None:
        # the fake runner mounts nothing: the step writes into the upper dir directly
        self.runs += 1
        upper, = self.hooks.parent.glob("cache/layers/tmp-*-root.d")
        _tree(upper)
        (self.hooks / "environment.d").mkdir(exist_ok=True)
        (self.hooks / "environment.d/50-base").write_text("export FROM_BASE=1\n")


INPUTS = {"prev": "root", "step": "root.d"}


def _build(m: Machine) -> "tuple[str, WritesBase]":
    body = WritesBase(m.hooks)
    key = steps._step(m.b, m.tree(), "root.d", INPUTS, body, base=True, host=True)
    return key, body


def test_a_built_layer_is_pushed_and_a_fresh_machine_pulls_it(
        tmp_path: Path, zstd_runner: None) -> None:
    registry = FakeRegistry()
    one = Machine(tmp_path / "one", registry)
    key, body = _build(one)
    assert body.runs == 1 and one.b.steps[0].remote == "pushed"
    assert list(registry.tags_) == [f"layer-{key}"]
    assert one.b.remote.report()["bytes_pushed"] > 0
    two = Machine(tmp_path / "two", registry)
    key2, body2 = _build(two)
    assert key2 == key and body2.runs == 0
    assert (two.b.steps[0].hit, two.b.steps[0].remote) == (True, "hit")
    assert _pack(two.store.dir / key)[1] == _pack(one.store.dir / key)[1]
    assert (two.hooks / "environment.d/50-base").read_text() == "export FROM_BASE=1\n"
    report = two.b.remote.report()
    assert (report["hits"], report["misses"], report["warnings"]) == (1, 0, [])
    assert report["bytes_pulled"] == one.b.remote.report()["bytes_pushed"]
    # the pulled layer is a local entry now: a third build does not ask the registry
    calls = len(registry.calls)
    _build(two)
    assert len(registry.calls) == calls
    one.close()
    two.close()


def test_a_corrupt_entry_is_a_miss_with_a_warning(tmp_path: Path, zstd_runner: None,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    registry = FakeRegistry()
    one = Machine(tmp_path / "one", registry)
    key, _ = _build(one)
    blob = registry.layer_blob(f"layer-{key}")
    data = registry.tags_[f"layer-{key}"][blob]
    registry.tags_[f"layer-{key}"][blob] = data[:-8] + b"corrupt!"
    two = Machine(tmp_path / "two", registry)
    with caplog.at_level(logging.WARNING, logger="dib.remote"):
        _, body = _build(two)
    assert body.runs == 1 and not two.b.steps[0].hit
    assert "sha256" in caplog.text and "unusable" in caplog.text
    assert two.b.remote.report()["misses"] == 1
    assert not list(two.store.dir.glob("tmp-*remote*"))
    one.close()
    two.close()


def test_an_unreachable_registry_never_fails_the_build(tmp_path: Path, zstd_runner: None,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    registry = FakeRegistry()
    registry.down = True
    m = Machine(tmp_path / "one", registry)
    with caplog.at_level(logging.WARNING, logger="dib.remote"):
        _, body = _build(m)
    assert body.runs == 1 and m.b.steps[0].remote == "push failed"
    report = m.b.remote.report()
    assert "unreachable" in report["disabled"]
    assert registry.calls == ["pull layer-" + m.b.steps[0].key]  # given up after the first
    assert caplog.text.count("unreachable") == 1
    m.close()


def test_a_failed_push_fails_the_build_when_strict(tmp_path: Path, zstd_runner: None) -> None:
    registry = FakeRegistry()

    def refuse(src: Path, tag: str) -> None:
        raise client.RegistryError(client.Outcome.DENIED, "denied: requested access")

    registry.push = refuse  # type: ignore[method-assign]
    m = Machine(tmp_path / "one", registry, strict=True)
    with pytest.raises(DibError, match="pushing the layer of root.d failed"):
        _build(m)
    m.close()


def test_an_interruption_while_unpacking_is_not_swallowed(tmp_path: Path,
                                                         zstd_runner: None) -> None:
    """A signal arrives while zstd decompresses a pulled layer: the build stops (Interrupted
    is a DibError, and the pull's error handling must not take it for a bad entry)."""
    from dib.errors import Interrupted

    registry = FakeRegistry()
    one = Machine(tmp_path / "one", registry)
    _build(one)

    def runner(argv: List[str], **kwargs: Any) -> cmd.Result:
        if argv[:2] == ["zstd", "-d"]:
            raise Interrupted(15)
        return cmd.Result(tuple(argv), 0, "", "")

    two = Machine(tmp_path / "two", registry)
    with cmd.use_runner(runner), pytest.raises(Interrupted):
        _build(two)
    assert not list(two.store.dir.glob("tmp-*remote*"))
    one.close()
    two.close()


def test_dry_run_names_the_remote_cache(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bin" / "disk-image-create"), "--dry-run", "-o",
         str(tmp_path / "i"), "--remote-cache", "oci+http://127.0.0.1:5000/dib",
         "--remote-cache-push-strict", "-n", "fake-os"],
        capture_output=True, text=True, cwd=ROOT,
        env={"PATH": os.environ["PATH"], "ELEMENTS_PATH": str(ROOT / "tests" / "elements"),
             "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "remote cache: oci+http://127.0.0.1:5000/dib" in proc.stdout + proc.stderr
    assert "a failed push is an error" in proc.stdout + proc.stderr


def test_finished_images_go_to_the_registry_and_come_back(tmp_path: Path,
                                                          zstd_runner: None) -> None:
    from dib.cache import ArtifactCache

    registry = FakeRegistry()
    one = Machine(tmp_path / "one", registry)
    images = ArtifactCache(tmp_path / "one" / "cache", "images")
    key = "f" * 32
    names = [f"{key}-state", f"{key}-qcow2"]
    images.store(names[0], ".json", {"state": True}, lambda p: p.write_text('{"os": 1}'))
    images.store(names[1], ".qcow2", {"tree": "t", "has_esp": True},
                 lambda p: p.write_bytes(os.urandom(5000)))
    one.b.remote.push_images(images, names)
    assert sorted(registry.tags_) == sorted(f"image-{n}" for n in names)
    assert one.b.remote.report()["image_pushes"] == 2

    two = Machine(tmp_path / "two", registry)
    fresh = ArtifactCache(tmp_path / "two" / "cache", "images")
    assert two.b.remote.fetch_images(fresh, names)
    for n in names:
        got, want = fresh.get(n), images.get(n)
        assert got is not None and want is not None
        assert Path(got.path).read_bytes() == Path(want.path).read_bytes()
        assert Path(got.path).suffix == Path(want.path).suffix and got.inputs == want.inputs
    assert two.b.remote.report()["image_hits"] == 2
    # a format nobody pushed: no image (and no warning: it is a plain miss)
    assert not two.b.remote.fetch_images(fresh, [f"{key}-state", f"{key}-raw"])
    assert two.b.remote.report()["warnings"] == []
    one.close()
    two.close()


def test_a_warm_local_cache_fills_an_empty_registry(tmp_path: Path, zstd_runner: None) -> None:
    registry = FakeRegistry()
    m = Machine(tmp_path / "one", registry)
    remote, m.b.remote = m.b.remote, None
    key, _ = _build(m)  # built before the remote cache was configured
    m.b.remote = remote
    _, body = _build(m)
    assert body.runs == 0 and m.b.steps[-1].remote == "pushed"
    assert list(registry.tags_) == [f"layer-{key}"]
    _build(m)
    assert m.b.steps[-1].remote == "" and registry.calls.count("list ") == 1
    fresh = Machine(tmp_path / "two", registry)
    _, body = _build(fresh)
    assert body.runs == 0 and fresh.b.steps[-1].remote == "hit"
    m.close()
    fresh.close()
