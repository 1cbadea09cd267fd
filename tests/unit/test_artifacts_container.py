"""docker-archive and OCI layout writers: JSON structure, digests, names (no root needed)."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from dib.errors import ConfigError
from dib.outputs import container
from dib.outputs.container import ContainerSettings, Layer, Reference, parse_reference

CREATED = "2026-01-02T03:04:05Z"


@pytest.fixture
def layer(tmp_path: Path) -> Layer:
    """A tiny layer tar: ./etc/os-release and ./bin/sh (a symlink)."""
    path = tmp_path / "layer.tar"
    with tarfile.open(path, "w") as tar:
        data = b"ID=test\n"
        info = tarfile.TarInfo("./etc/os-release")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("./bin/sh")
        link.type = tarfile.SYMTYPE
        link.linkname = "busybox"
        tar.addfile(link)
    return Layer.of(path)


def config_bytes(layer: Layer, **kw) -> bytes:
    settings = kw.pop("settings", ContainerSettings())
    return container.canonical(container.image_config(
        layer, arch=kw.pop("arch", "amd64"), settings=settings, created=CREATED, **kw))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- names -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,repo,tag", [
    ("dibtest", "dibtest", "latest"),
    ("dibtest:1", "dibtest", "1"),
    ("my/debian:12.5-slim", "my/debian", "12.5-slim"),
    ("localhost/x:y", "localhost/x", "y"),
    ("registry.example:5000/team/app:v1", "registry.example:5000/team/app", "v1"),
    ("a_b/c-d__e:T_1", "a_b/c-d__e", "T_1"),
])
def test_valid_references(text, repo, tag):
    assert parse_reference(text) == Reference(repo, tag)
    assert str(parse_reference(text)) == f"{repo}:{tag}"


@pytest.mark.parametrize("text", ["", "UPPER:1", "a:b:c", "-lead:1", "x:", ":tag", "a//b",
                                  "repo:" + "t" * 129, "sp ace:1", "trail-:1"])
def test_invalid_references_name_the_option(text):
    with pytest.raises(ConfigError, match="--docker-target: .* is not a valid image name"):
        parse_reference(text)


def test_default_reference_is_the_image_base_name():
    assert container.default_reference("/out/My Image_v2") == Reference("my-image_v2")
    assert container.default_reference("/out/--") == Reference("image")


# -- settings ----------------------------------------------------------------------------------

def test_settings_from_env():
    s = ContainerSettings.from_env({"DIB_CONTAINER_CMD": "/bin/sleep 'a b'",
                                    "DIB_CONTAINER_ENV": "A=1 B='x y'",
                                    "DIB_CONTAINER_LABELS": "team=os tier=base",
                                    "DIB_CONTAINER_WORKDIR": "/srv",
                                    "DIB_CONTAINER_USER": "nobody"})
    assert s.cmd == ("/bin/sleep", "a b")
    assert s.env == ("A=1", "B=x y")
    assert dict(s.labels) == {"team": "os", "tier": "base"}
    assert (s.workdir, s.user) == ("/srv", "nobody")


@pytest.mark.parametrize("name,value,match", [
    ("DIB_CONTAINER_ENV", "NOVALUE", "not NAME=VALUE"),
    ("DIB_CONTAINER_LABELS", "=x", "not key=value"),
    ("DIB_CONTAINER_CMD", "'unclosed", "DIB_CONTAINER_CMD"),
])
def test_bad_settings_name_the_variable(name, value, match):
    with pytest.raises(ConfigError, match=match):
        ContainerSettings.from_env({name: value})


# -- the image configuration ---------------------------------------------------------------------

def test_config_diff_id_is_the_layer_digest(layer):
    conf = json.loads(config_bytes(layer))
    diff_id = f"sha256:{sha(layer.path.read_bytes())}"
    assert conf["rootfs"] == {"type": "layers", "diff_ids": [diff_id]}
    assert conf["architecture"] == "amd64" and conf["os"] == "linux"
    assert conf["created"] == CREATED
    assert conf["config"]["Cmd"] == ["/bin/sh"]
    assert conf["config"]["Env"] == [f"PATH={container.DEFAULT_PATH}"]
    assert "variant" not in conf


def test_config_settings_and_arch_variant(layer):
    settings = ContainerSettings(entrypoint=("/init",), env=("PATH=/opt/bin", "X=1"),
                                 workdir="/w", user="1000", labels={"b": "2"})
    conf = json.loads(config_bytes(layer, settings=settings, arch="arm64",
                                   labels={"a": "1", "b": "1"}))
    assert conf["architecture"] == "arm64" and conf["variant"] == "v8"
    c = conf["config"]
    assert c["Entrypoint"] == ["/init"] and "Cmd" not in c  # an entrypoint alone: no Cmd
    assert c["Env"] == ["PATH=/opt/bin", "X=1"]  # PATH replaced, not duplicated
    assert (c["WorkingDir"], c["User"]) == ("/w", "1000")
    assert c["Labels"] == {"a": "1", "b": "2"}  # the settings' labels win


def test_default_cmd_prefers_bash(tmp_path):
    assert container.default_cmd(tmp_path) == ["/bin/sh"]
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/bash").write_text("")
    assert container.default_cmd(tmp_path) == ["/bin/bash"]


# -- docker-archive ------------------------------------------------------------------------------

def test_docker_archive_structure_and_digests(tmp_path, layer):
    config = config_bytes(layer)
    dest = tmp_path / "img.docker.tar"
    container.write_docker_archive(dest, layer, config, Reference("dibtest/x", "1"), mtime=7)
    with tarfile.open(dest) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))
        repos = json.load(tar.extractfile("repositories"))
        cfg_name = manifest[0]["Config"]
        cfg = tar.extractfile(cfg_name).read()
        layer_bytes = tar.extractfile(manifest[0]["Layers"][0]).read()
        assert all(m.uid == 0 and m.mtime == 7 for m in tar.getmembers())
    assert manifest == [{"Config": f"{sha(config)}.json", "RepoTags": ["dibtest/x:1"],
                         "Layers": [f"{layer.sha256}/layer.tar"]}]
    assert cfg == config and cfg_name == f"{sha(cfg)}.json"
    assert sha(layer_bytes) == layer.sha256 == sha(layer.path.read_bytes())
    assert f"sha256:{sha(layer_bytes)}" in json.loads(cfg)["rootfs"]["diff_ids"]
    assert repos == {"dibtest/x": {"1": layer.sha256}}
    assert set(names) >= {"manifest.json", "repositories", cfg_name, f"{layer.sha256}/VERSION",
                          f"{layer.sha256}/json", f"{layer.sha256}/layer.tar"}


# -- OCI layout ------------------------------------------------------------------------------------

def test_oci_layout_structure_and_digests(tmp_path, layer):
    config = config_bytes(layer)
    out = tmp_path / "img.oci"
    desc = container.write_oci_layout(out, layer, config, Reference("dibtest/x", "1"),
                                      annotations={"k": "v"})
    assert json.loads((out / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((out / "index.json").read_text())
    assert index["schemaVersion"] == 2 and index["mediaType"] == container.OCI_INDEX_MEDIA
    [entry] = index["manifests"]
    assert entry == desc
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "1"
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    blobs = out / "blobs" / "sha256"
    manifest_raw = (blobs / entry["digest"].split(":")[1]).read_bytes()
    assert entry["digest"] == f"sha256:{sha(manifest_raw)}" and entry["size"] == len(manifest_raw)
    manifest = json.loads(manifest_raw)
    assert manifest["mediaType"] == container.OCI_MANIFEST_MEDIA
    assert manifest["annotations"] == {"k": "v"}
    assert manifest["config"] == {"mediaType": container.OCI_CONFIG_MEDIA,
                                  "digest": f"sha256:{sha(config)}", "size": len(config)}
    assert manifest["layers"] == [{"mediaType": container.OCI_LAYER_MEDIA,
                                   "digest": layer.digest, "size": layer.size}]
    assert (blobs / sha(config)).read_bytes() == config
    assert sha((blobs / layer.sha256).read_bytes()) == layer.sha256
    assert sorted(p.name for p in blobs.iterdir()) == sorted(
        [sha(config), sha(manifest_raw), layer.sha256])
    assert layer.path.exists()  # copied, not moved
    assert container.verify_oci_layout(out) == []


def test_oci_layout_can_take_the_layer_file(tmp_path, layer):
    container.write_oci_layout(tmp_path / "o", layer, config_bytes(layer), Reference("x"),
                               move_layer=True)
    assert not layer.path.exists()
    assert container.verify_oci_layout(tmp_path / "o") == []


def test_verify_oci_layout_finds_a_corrupt_blob(tmp_path, layer):
    out = tmp_path / "o"
    container.write_oci_layout(out, layer, config_bytes(layer), Reference("x"))
    blob = out / "blobs" / "sha256" / layer.sha256
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert container.verify_oci_layout(out) == [
        f"blob {layer.digest} does not match its digest"]


# -- directories as outputs -----------------------------------------------------------------------

def test_atomic_directory_renames_the_old_one_aside(tmp_path):
    dest = tmp_path / "x.oci"
    for n in range(2):
        with container.atomic_directory(dest, overwrite=False) as tmp:
            (tmp / "n").write_text(str(n))
    assert (dest / "n").read_text() == "1"
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("x-")]
    assert len(aside) == 1 and (aside[0] / "n").read_text() == "0"


def test_atomic_directory_overwrite_and_failure(tmp_path):
    dest = tmp_path / "x.oci"
    for n in range(2):
        with container.atomic_directory(dest, overwrite=True) as tmp:
            (tmp / "n").write_text(str(n))
    with pytest.raises(RuntimeError):
        with container.atomic_directory(dest, overwrite=True) as tmp:
            (tmp / "n").write_text("half")
            raise RuntimeError("boom")
    assert (dest / "n").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.oci"]


def test_pack_and_unpack_directory(tmp_path, layer):
    out = tmp_path / "o"
    container.write_oci_layout(out, layer, config_bytes(layer), Reference("x"))
    container.pack_directory(out, tmp_path / "o.tar")
    container.unpack_directory(tmp_path / "o.tar", tmp_path / "back")
    assert container.verify_oci_layout(tmp_path / "back") == []
    assert (tmp_path / "back/index.json").read_bytes() == (out / "index.json").read_bytes()
