"""The pure parts of reproducible builds (docs/reproducibility.md): the epoch, clamping,
Release files, the ext time fix-up script, and the command lines that change with an epoch."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, List

import pytest

from dib import bootstrap, cmd, layers, reproducible
from dib.blockdev import Params, default_config_text, load_config, mkfs
from dib.cache import EPOCH_FORMAT
from dib.config import parse_args
from dib.disk import can_populate
from dib.outputs.qemu import qemu_img_convert_argv
from dib.outputs.tar import TAR_FLAGS, tar_argv

EPOCH = 1700000000


def _touch(path: Path, when: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(path.name)
    os.utime(path, (when, when))
    return path


# -- the epoch ---------------------------------------------------------------------------

def test_epoch_outside_git_is_the_newest_file(tmp_path: Path) -> None:
    a, b = tmp_path / "el-a", tmp_path / "el-b"
    _touch(a / "install.d" / "10-x", 1_600_000_000)
    _touch(b / "README.rst", 1_650_000_000)
    newest = _touch(b / "environment.d" / "10-y", 1_690_000_000)
    for d in (a, b, a / "install.d", b / "environment.d"):
        os.utime(d, (1_500_000_000, 1_500_000_000))
    epoch, origin = reproducible.derive_epoch([a, b])
    assert epoch == int(newest.stat().st_mtime) == 1_690_000_000
    assert str(b) in origin and "newest file" in origin


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git (apt-get install git)")
def test_epoch_in_a_clean_checkout_is_the_last_commit(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    element = repo / "elements" / "web"
    _touch(element / "install.d" / "10-web", 1_690_000_000)
    env = {**os.environ, "GIT_AUTHOR_DATE": "@1650000000 +0000",
           "GIT_COMMITTER_DATE": "@1650000000 +0000", "HOME": os.fspath(tmp_path)}
    git = ["git", "-C", os.fspath(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", os.fspath(repo)], check=True, env=env)
    subprocess.run([*git, "add", "."], check=True, env=env)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True, env=env)
    epoch, origin = reproducible.derive_epoch([element])
    assert (epoch, "last commit" in origin) == (1_650_000_000, True)
    # an uncommitted change: the files are the truth
    _touch(element / "install.d" / "20-new", 1_695_000_000)
    for d in (element, element / "install.d"):
        os.utime(d, (1_600_000_000, 1_600_000_000))
    assert reproducible.derive_epoch([element])[0] == 1_695_000_000


def test_reproducible_flag_and_epoch_settings(tmp_path: Path) -> None:
    out = ["-o", os.fspath(tmp_path / "img")]
    cfg = parse_args([*out, "--reproducible", "fake-os"], {})
    assert (cfg.reproducible, cfg.source_date_epoch) == (True, None)
    cfg = parse_args([*out, "fake-os"], {"DIB_REPRODUCIBLE": "1", "SOURCE_DATE_EPOCH": "42"})
    assert (cfg.reproducible, cfg.source_date_epoch, cfg.source_date_epoch_origin) == \
        (True, 42, "SOURCE_DATE_EPOCH")
    plain = parse_args([*out, "fake-os"], {})
    assert (plain.reproducible, plain.source_date_epoch) == (False, None)


# -- the tree ----------------------------------------------------------------------------

def test_clamp_lowers_only_newer_times_and_never_follows_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    old = _touch(root / "usr" / "old", EPOCH - 100)
    new = _touch(root / "etc" / "new", EPOCH + 100)
    outside = _touch(tmp_path / "outside", EPOCH + 500)
    link = root / "etc" / "link"
    link.symlink_to(outside)
    changed = reproducible.clamp_mtimes(root, EPOCH)
    assert old.stat().st_mtime == EPOCH - 100
    assert new.stat().st_mtime == EPOCH
    assert os.lstat(link).st_mtime == EPOCH
    assert outside.stat().st_mtime == EPOCH + 500
    assert (root / "etc").stat().st_mtime == EPOCH and root.stat().st_mtime == EPOCH
    # new, link, etc, usr, root (made now); old was already older
    assert changed == 5
    assert reproducible.clamp_mtimes(root, EPOCH) == 0


def test_release_files_are_hashed_by_name(tmp_path: Path) -> None:
    lists = tmp_path / "var/lib/apt/lists"
    lists.mkdir(parents=True)
    (lists / "mirror_debian_dists_bookworm_InRelease").write_text("signed")
    (lists / "mirror_debian_dists_bookworm_main_binary-amd64_Packages").write_text("pkgs")
    (lists / "lock").write_text("")
    found = reproducible.release_files(tmp_path)
    assert list(found) == ["mirror_debian_dists_bookworm_InRelease"]
    assert found["mirror_debian_dists_bookworm_InRelease"] == \
        hashlib.sha256(b"signed").hexdigest()
    assert reproducible.release_files(tmp_path / "nothing") == {}


# -- ext filesystems ---------------------------------------------------------------------

DUMPE2FS = """\
Filesystem volume name:   r
Inode count:              64
First inode:              11
Inodes per group:         32
Group descriptor size:    64

Group 0: (Blocks 0-8191) csum 0x1 [ITABLE_ZEROED]
  Primary superblock at 0, Group descriptors at 1-1
  8000 free blocks, 18 free inodes, 2 directories
  Free blocks: 192-8191
  Free inodes: 15-32
Group 1: (Blocks 8192-16383) csum 0x2 [INODE_UNINIT, ITABLE_ZEROED]
  8192 free blocks, 30 free inodes, 0 directories
  Free blocks: 8192-16383
  Free inodes: 33, 35-40, 42-64
"""


def test_used_inodes_from_dumpe2fs() -> None:
    assert reproducible.used_inodes(DUMPE2FS) == [2, 11, 12, 13, 14, 34, 41]


def test_ext_times_script_sets_change_and_access_time_only() -> None:
    script = reproducible.ext_times_script([2, 12], EPOCH).splitlines()
    assert f"set_inode_field <12> ctime @{EPOCH}" in script
    assert f"set_inode_field <2> atime @{EPOCH}" in script
    assert "set_inode_field <12> atime_extra 0" in script
    assert not [line for line in script if "mtime" in line]
    assert len(script) == 2 * 4


@pytest.mark.parametrize("opts, expected", [
    ((), ["-E", "a=1,b=2"]),
    (("-i", "8192", "-E", "resize=9"), ["-i", "8192", "-E", "resize=9,a=1,b=2"]),
    (("-Eresize=9",), ["-Eresize=9,a=1,b=2"]),
])
def test_extended_options_merge_into_the_one_that_mke2fs_reads(opts: Any,
                                                              expected: List[str]) -> None:
    assert mkfs.with_extended(opts, ["a=1", "b=2"]) == expected


class Recorder:
    def __init__(self) -> None:
        self.calls: List[Any] = []

    def __call__(self, argv: List[str], **kw: Any) -> cmd.Result:
        self.calls.append((list(argv), kw.get("env")))
        return cmd.Result(tuple(argv), 0, "", "")


def test_mkfs_with_an_epoch_fakes_time_and_fixes_the_hash_seed(tmp_path: Path) -> None:
    params = Params(image_dir=tmp_path, mount_base=tmp_path / "mnt", image_size=64 << 20)
    root = load_config(default_config_text(), params).node("mkfs_root")
    assert isinstance(root, mkfs.MkfsSpec)
    rec = Recorder()
    with cmd.use_runner(rec):
        mkfs.make(root, "/dev/loop9")
        mkfs.make(root, "/dev/loop9", populate="/tree", epoch=EPOCH, hash_seed="H")
    (plain, plain_env), (repro, env) = rec.calls
    assert plain == mkfs.mkfs_argv(root, "/dev/loop9") and "-d" not in plain
    assert "E2FSPROGS_FAKE_TIME" not in (plain_env or {})
    assert repro[-3:] == ["-d", "/tree", "/dev/loop9"]
    assert "hash_seed=H,lazy_itable_init=0,lazy_journal_init=0" in repro
    assert env["E2FSPROGS_FAKE_TIME"] == env["SOURCE_DATE_EPOCH"] == str(EPOCH)


def test_only_ext_can_be_populated(tmp_path: Path) -> None:
    spec = mkfs.MkfsSpec("esp", "p1", "vfat", "ESP", "ABCD-1234")
    with pytest.raises(ValueError):
        mkfs.mkfs_argv(spec, "/dev/loop9p1", populate="/tree")


def test_populating_needs_an_ext_root_and_nothing_at_other_mount_points(
        tmp_path: Path) -> None:
    params = Params(image_dir=tmp_path, mount_base=tmp_path / "mnt", image_size=64 << 20)
    tree = tmp_path / "tree"
    (tree / "boot" / "efi").mkdir(parents=True)
    assert can_populate(load_config(default_config_text(), params), tree)
    efi = """
- local_loop: {name: image0}
- partitioning:
    base: image0
    label: gpt
    partitions:
      - name: ESP
        type: 'EF00'
        size: 16MiB
        mkfs: {type: vfat, mount: {mount_point: /boot/efi}}
      - name: root
        size: 100%
        mkfs: {type: ext4, mount: {mount_point: /}}
"""
    config = load_config(efi, params)
    assert can_populate(config, tree)
    (tree / "boot" / "efi" / "EFI").mkdir()
    assert not can_populate(config, tree)
    xfs = Params(image_dir=tmp_path, mount_base=tmp_path / "mnt", image_size=64 << 20,
                 root_fs_type="xfs")
    assert not can_populate(load_config(default_config_text(), xfs), tmp_path / "empty")


# -- outputs -----------------------------------------------------------------------------

def test_tar_clamps_and_gzip_drops_its_stamp_only_with_an_epoch() -> None:
    plain = tar_argv(Path("/t"), Path("/o.tgz"), gzip=True)
    assert plain == ["tar", *TAR_FLAGS, "--use-compress-program=gzip", "-C", "/t", "-cf",
                     "/o.tgz", "."]
    repro = tar_argv(Path("/t"), Path("/o.tgz"), gzip=True, epoch=EPOCH, compressor="pigz")
    assert f"--mtime=@{EPOCH}" in repro and "--clamp-mtime" in repro
    assert "--use-compress-program=pigz -n" in repro


def test_qcow2_is_written_in_order_when_reproducible() -> None:
    fast = qemu_img_convert_argv(Path("r"), "qcow2", Path("q"), compress=True)
    repro = qemu_img_convert_argv(Path("r"), "qcow2", Path("q"), compress=True,
                                  reproducible=True)
    assert "-W" in fast and "-W" not in repro
    assert [a for a in fast if a != "-W"] == repro


# -- cache keys --------------------------------------------------------------------------

def test_the_epoch_keys_layers_and_the_bootstrap_only_when_set() -> None:
    plain = layers.build_inputs("amd64", {"DIB_RELEASE": "bookworm"}, [])
    repro = layers.build_inputs("amd64", {"DIB_RELEASE": "bookworm",
                                          "SOURCE_DATE_EPOCH": str(EPOCH)}, [])
    assert "source_date_epoch" not in plain
    assert repro == {**plain, "source_date_epoch": str(EPOCH), "epoch_format": EPOCH_FORMAT}
    assert "source_date_epoch" not in _bootstrap_cfg({}).key_inputs()
    assert _bootstrap_cfg({"SOURCE_DATE_EPOCH": "1"}).key != _bootstrap_cfg({}).key
    assert _bootstrap_cfg({"SOURCE_DATE_EPOCH": "1"}).key_inputs()["epoch_format"] == \
        EPOCH_FORMAT


def _bootstrap_cfg(env: Any) -> bootstrap.BootstrapConfig:
    return bootstrap.config_from_env(
        {"DISTRO_NAME": "debian", "DIB_RELEASE": "bookworm", "ARCH": "amd64", **env},
        host_id="debian", host_sources=[], tool="mmdebstrap", tool_version="1")


@pytest.mark.parametrize("tool", ["mmdebstrap", "debootstrap"])
def test_the_bootstrap_tool_is_given_the_epoch(tool: str, tmp_path: Path) -> None:
    """The tool runs the maintainer scripts (passwd's writes /etc/shadow's last-change
    dates): without the epoch they are the day the bootstrap was made."""
    seen: List[Any] = []

    def runner(argv: List[str], **kwargs: Any) -> cmd.Result:
        seen.append((argv[0], kwargs["env"]))
        return cmd.Result(tuple(argv), 0, "", "")

    for env in ({"SOURCE_DATE_EPOCH": str(EPOCH)}, {}):
        cfg = dataclasses.replace(_bootstrap_cfg(env), tool=tool)
        with cmd.use_runner(runner):
            bootstrap._bootstrap(cfg, tmp_path)
    (tool_a, repro), (tool_b, plain) = seen
    assert tool_a == tool_b == tool
    assert repro["SOURCE_DATE_EPOCH"] == str(EPOCH)
    assert "SOURCE_DATE_EPOCH" not in plain
    assert repro["PATH"] == plain["PATH"] == cmd.SAFE_PATH
