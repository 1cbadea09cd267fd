"""The new output types on the command line, and the settings that key the finished-image
cache (no root needed)."""
from __future__ import annotations

from pathlib import Path

import pytest

from dib import outputs
from dib.config import ImageFormat, parse_args
from dib.errors import ConfigError
from dib.outputs import libvirt


def cfg(*argv: str, **env: str):
    return parse_args(list(argv), env)


def test_new_types_parse_and_are_named():
    c = cfg("-t", "qcow2,vagrant,docker,oci", "-o", "/out/web", "vm")
    assert c.formats == (ImageFormat.QCOW2, ImageFormat.VAGRANT, ImageFormat.DOCKER,
                         ImageFormat.OCI)
    assert [c.output_path(f) for f in c.formats] == [
        Path("/out/web.qcow2"), Path("/out/web.box"), Path("/out/web.docker.tar"),
        Path("/out/web.oci")]
    assert c.needs_block_device


@pytest.mark.parametrize("fmt,disk,qemu,directory", [
    ("qcow2", True, True, False), ("raw", True, True, False), ("vhd", True, True, False),
    ("tar", False, False, False), ("tgz", False, False, False),
    ("docker", False, False, False), ("oci", False, False, True),
    ("vagrant", True, False, False), ("vhdx", True, False, False),
    ("ova", True, False, False)])
def test_format_kinds(fmt, disk, qemu, directory):
    f = ImageFormat(fmt)
    assert (f.is_disk, f.is_qemu_disk, f.is_directory) == (disk, qemu, directory)


def test_container_types_alone_need_no_block_device():
    assert not cfg("-t", "docker,oci", "debian-minimal").needs_block_device


@pytest.mark.parametrize("name,fmt,base", [("web.box", "vagrant", "web"),
                                           ("web.vagrant", "vagrant", "web"),
                                           ("web.docker.tar", "docker", "web"),
                                           ("web.docker", "docker", "web"),
                                           ("web.oci", "oci", "web"),
                                           ("web.qcow2", "qcow2", "web")])
def test_a_single_types_extension_is_dropped_from_o(name, fmt, base):
    assert Path(cfg("-t", fmt, "-o", f"/o/{name}", "x").image_name).name == base


def test_boot_test_needs_a_qemu_disk():
    with pytest.raises(ConfigError, match="--boot-test needs a disk image output"):
        cfg("-t", "vagrant", "--boot-test", "vm")
    assert cfg("-t", "vagrant,raw", "--boot-test", "vm").boot_test


def test_docker_target_from_flag_or_env():
    assert cfg("-t", "docker", "--docker-target", "a/b:1", "x").docker_target == "a/b:1"
    assert cfg("-t", "docker", "x", DOCKER_TARGET="c:2").docker_target == "c:2"


def test_every_output_knob_is_checked_when_the_config_is_built():
    # checked whatever the outputs: a typo fails at once even when that output is not made
    with pytest.raises(ConfigError, match="--docker-target"):
        cfg("-t", "tar", "--docker-target", "BAD", "x")
    with pytest.raises(ConfigError, match="DIB_LIBVIRT_VCPUS"):
        cfg("-t", "tar", "x", DIB_LIBVIRT_VCPUS="x")
    c = cfg("-t", "raw", "x", DIB_LIBVIRT_VCPUS="3", DIB_VAGRANT_CPUS="4")
    assert (c.domain.vcpus, c.vagrant.cpus) == (3, 4)
    outputs.check(c)


def test_cache_inputs_follow_the_outputs_settings():
    assert outputs.cache_inputs(cfg("-t", "qcow2,tar", "x")) == {}  # unchanged keys
    base = outputs.cache_inputs(cfg("-t", "docker", "-o", "/o/a", "x"))
    assert base["container"]["reference"] == "a:latest"
    other = outputs.cache_inputs(cfg("-t", "docker", "-o", "/o/a", "x",
                                       DIB_CONTAINER_CMD="/bin/true"))
    assert other != base
    named = outputs.cache_inputs(cfg("-t", "docker", "--docker-target", "r/x:9", "x"))
    assert named["container"]["reference"] == "r/x:9"
    v1 = outputs.cache_inputs(cfg("-t", "vagrant", "x"))
    v2 = outputs.cache_inputs(cfg("-t", "vagrant", "x", DIB_VAGRANT_MEMORY="4096"))
    assert v1["vagrant"] != v2["vagrant"]


def test_libvirt_disk_preference():
    assert libvirt.libvirt_disk(cfg("-t", "vmdk,raw,qcow2", "x")) is ImageFormat.QCOW2
    assert libvirt.libvirt_disk(cfg("-t", "vhd,raw", "x")) is ImageFormat.RAW
    assert libvirt.libvirt_disk(cfg("-t", "vagrant,tar", "x")) is None
