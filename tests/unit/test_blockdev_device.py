"""BlockDevice and mount flows through a fake runner: command order, undo order, unwinding.

No root needed: the fake runner answers ``losetup`` with a made-up device and records every
other command, so these tests check which commands run, in which order, and that a failure
at any step runs exactly the undos registered so far.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, List, Optional

import pytest

from dib import cmd
from dib.blockdev import (
    BlockDevice,
    Params,
    default_config_text,
    load_config,
    mount,
    partition,
    parttable,
)
from dib.blockdev.size import MiB
from dib.errors import BlockDeviceError, CommandFailed


class FakeRunner:
    """Records commands; ``losetup --find`` prints /dev/loop9; ``fail`` picks failures."""

    def __init__(self, fail: Optional[Callable[[List[str]], bool]] = None) -> None:
        self.calls: List[List[str]] = []
        self.fail = fail or (lambda argv: False)

    def __call__(self, argv: List[str], **kwargs: Any) -> cmd.Result:
        argv = list(argv)
        self.calls.append(argv)
        if self.fail(argv):
            return cmd.Result(tuple(argv), 1, "", "injected failure")
        out = "/dev/loop9\n" if argv[:2] == ["losetup", "--find"] else ""
        return cmd.Result(tuple(argv), 0, out, "")


@pytest.fixture
def params(tmp_path: Path) -> Params:
    return Params(image_dir=tmp_path / "img", mount_base=tmp_path / "build" / "mnt",
                  image_size=64 * MiB)


def test_default_config_commands_and_release_order(params: Params) -> None:
    cfg = load_config(default_config_text(), params)
    fake = FakeRunner()
    root = cfg.node("mkfs_root")
    mnt = str(params.mount_base)
    with cmd.use_runner(fake):
        with contextlib.ExitStack() as stack:
            state = BlockDevice(cfg, params).create(stack)
            created = list(fake.calls)
            assert state.image_block_device == "/dev/loop9"
            assert state.image_block_devices == {"image0": "/dev/loop9",
                                                 "mkfs_root": "/dev/loop9"}
            assert state.image_files == {"image0": params.image_dir / "image0.raw"}
            assert list(state.mounts) == [("/", "/dev/loop9", "ext4", "cloudimg-rootfs",
                                           root.uuid)]
            assert (state.root_label, state.root_fstype) == ("cloudimg-rootfs", "ext4")
            assert state.fstab() == "LABEL=cloudimg-rootfs / ext4 defaults 0 1\n"
            assert state.mount_dir("/boot") == params.mount_base / "boot"
    image = str(params.image_dir / "image0.raw")
    assert created == [
        ["losetup", "--find", "--show", "--sector-size", "512", image],
        ["mkfs.ext4", "-q", "-L", "cloudimg-rootfs", "-U", root.uuid, "/dev/loop9"],
        ["mount", "-t", "ext4", "/dev/loop9", mnt]]
    assert fake.calls[len(created):] == [
        ["sync", "--file-system", mnt], ["fstrim", "--verbose", mnt], ["umount", mnt],
        ["losetup", "--detach", "/dev/loop9"]]
    assert (params.image_dir / "image0.raw").stat().st_size == 64 * MiB


def test_block_size_precedence(tmp_path: Path) -> None:
    text = "- local_loop: {name: image0, size: 8MiB, block_size: 4096}\n"
    for forced, expected in ((None, "4096"), (512, "512")):
        p = Params(image_dir=tmp_path, mount_base=tmp_path / "m", block_size=forced)
        fake = FakeRunner()
        with cmd.use_runner(fake), contextlib.ExitStack() as stack:
            BlockDevice(load_config(text, p), p).create(stack)
        assert fake.calls[0][4] == expected


@pytest.mark.parametrize("failing, undone", [
    ("losetup", []),
    ("mkfs.ext4", [["losetup", "--detach", "/dev/loop9"]]),
    ("mount", [["losetup", "--detach", "/dev/loop9"]]),
])
def test_failed_create_releases_what_exists(failing: str, undone: List[List[str]],
                                            params: Params) -> None:
    cfg = load_config(default_config_text(), params)
    fake = FakeRunner(fail=lambda argv: argv[0] == failing)
    outer = contextlib.ExitStack()
    with cmd.use_runner(fake):
        with pytest.raises(CommandFailed):
            BlockDevice(cfg, params).create(outer)
        index = next(i for i, c in enumerate(fake.calls) if c[0] == failing)
        assert fake.calls[index + 1:] == undone
        outer.close()                        # nothing was handed over
    assert len(fake.calls) == index + 1 + len(undone)
    assert not (params.image_dir / "image0.raw").exists()


def test_unknown_image_size_is_reported_at_create(tmp_path: Path) -> None:
    p = Params(image_dir=tmp_path, mount_base=tmp_path / "m")
    cfg = load_config(default_config_text(), p)
    with pytest.raises(Exception, match="node 'image0'.*image size is unknown"):
        with contextlib.ExitStack() as stack:
            BlockDevice(cfg, p).create(stack)


# -- mount and vfat staging --------------------------------------------------------------------

def _staging(fake: FakeRunner) -> Path:
    bind = next(c for c in fake.calls if c[:2] == ["mount", "--bind"])
    return Path(bind[2])


def test_vfat_is_staged_and_copied_with_mtools(tmp_path: Path) -> None:
    target = tmp_path / "mnt" / "boot" / "efi"
    fake = FakeRunner()
    with cmd.use_runner(fake):
        with contextlib.ExitStack() as stack:
            mount.mount(stack, "/dev/loop9p1", "vfat", target, "esp", tmp_path)
            staging = _staging(fake)
            assert staging.parent == tmp_path and fake.calls == [
                ["mount", "--bind", str(staging), str(target)]]
            (staging / "EFI" / "BOOT").mkdir(parents=True)
            (staging / "EFI" / "BOOT" / "BOOTX64.EFI").write_bytes(b"x")
            (staging / "EFI" / "debian").mkdir()
            (staging / "b.cfg").write_text("b")
            (staging / "a.cfg").write_text("a")
    dev = "/dev/loop9p1"
    assert fake.calls[1:] == [
        ["sync", "--file-system", str(target)], ["umount", str(target)],
        ["mmd", "-i", dev, "::/EFI"],
        ["mcopy", "-i", dev, "-m", str(staging / "a.cfg"), str(staging / "b.cfg"), "::/"],
        ["mmd", "-i", dev, "::/EFI/BOOT", "::/EFI/debian"],
        ["mcopy", "-i", dev, "-m", str(staging / "EFI/BOOT/BOOTX64.EFI"), "::/EFI/BOOT/"],
        ["sync", dev], ["fsck.vfat", "-n", dev]]
    assert not staging.exists()


def test_vfat_copy_is_skipped_when_unwinding_after_an_error(tmp_path: Path) -> None:
    fake = FakeRunner()
    target = tmp_path / "mnt" / "efi"
    with cmd.use_runner(fake), pytest.raises(RuntimeError):
        with contextlib.ExitStack() as stack:
            mount.mount(stack, "/dev/loop9p1", "vfat", target, "esp", tmp_path)
            (_staging(fake) / "file").write_text("x")
            raise RuntimeError("build failed")
    assert [c[0] for c in fake.calls] == ["mount", "sync", "umount"]
    assert not _staging(fake).exists()


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "link").symlink_to("target"), "symlinks"),
    (lambda d: ((d / "A").write_text("1"), (d / "a").write_text("2")), "only in case"),
])
def test_vfat_refuses_what_fat_cannot_hold(make: Callable[[Path], Any], message: str,
                                           tmp_path: Path) -> None:
    fake = FakeRunner()
    with cmd.use_runner(fake), pytest.raises(BlockDeviceError, match=message):
        with contextlib.ExitStack() as stack:
            mount.mount(stack, "/dev/loop9p1", "vfat", tmp_path / "mnt", "esp", tmp_path)
            make(_staging(fake))


def test_busy_umount_falls_back_to_lazy_and_fails(tmp_path: Path) -> None:
    target = tmp_path / "mnt"
    fake = FakeRunner(fail=lambda argv: argv == ["umount", str(target)]
                      or argv[0] == "fstrim")
    with cmd.use_runner(fake), pytest.raises(BlockDeviceError, match="could not unmount"):
        with contextlib.ExitStack() as stack:
            mount.mount(stack, "/dev/loop9", "ext4", target, "root", tmp_path)
    assert fake.calls[-2:] == [["umount", str(target)], ["umount", "--lazy", str(target)]]


# -- partition mapping ---------------------------------------------------------------------------

def _layout(params: Params) -> partition.Layout:
    text = ("- local_loop: {name: image0, size: 64MiB}\n- partitioning: {base: image0, "
            "label: gpt, partitions: [{name: a, size: 8MiB}, {name: b, size: 100%}]}\n")
    spec = load_config(text, params).node("partitioning_image0")
    assert isinstance(spec, partition.PartitioningSpec)
    return partition.plan(spec, 64 * MiB, 512)


def test_map_partitions_uses_partx_and_registers_its_undo(
        tmp_path: Path, params: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parttable, "SYS_BLOCK", tmp_path / "sys")
    device = str(tmp_path / "loop9")

    class AddMakesPartitions(FakeRunner):  # the kernel shows them once partx --add ran
        def __call__(self, argv: List[str], **kwargs: Any) -> cmd.Result:
            if argv[:2] == ["partx", "--add"]:
                _fake_partitions(tmp_path, _layout(params), monkeypatch)
            return super().__call__(argv, **kwargs)

    fake = AddMakesPartitions()
    with cmd.use_runner(fake), contextlib.ExitStack() as stack:
        nodes = parttable.map_partitions(stack, device, _layout(params))
        assert nodes == {"a": f"{device}p1", "b": f"{device}p2"}
    assert fake.calls == [["partx", "--add", device], ["partx", "--delete", device]]


def _fake_partitions(tmp_path: Path, layout, monkeypatch: pytest.MonkeyPatch,
                     shift: int = 0) -> str:
    """sysfs entries and /dev nodes as the kernel shows the partitions of ``layout`` (moved
    by ``shift`` sectors, to play stale partitions of an earlier user)."""
    sysfs = tmp_path / "sys"
    for slot in layout.slots:
        part = sysfs / f"loop9p{slot.number}"
        part.mkdir(parents=True)
        (part / "dev").write_text(f"259:{slot.number}\n")
        (part / "start").write_text(f"{slot.start + shift}\n")
        (part / "size").write_text(f"{slot.size}\n")
    device = str(tmp_path / "loop9")
    for slot in layout.slots:
        Path(f"{device}p{slot.number}").write_text("")  # the kernel made the nodes
    monkeypatch.setattr(parttable, "SYS_BLOCK", sysfs)
    return device


def test_partitions_of_an_earlier_user_are_removed_first_and_checked(
        tmp_path: Path, params: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    # partitions partx added survive a detach: the next user sees them before --add,
    # and when they stay (wrong place) mkfs must not run on them
    device = _fake_partitions(tmp_path, _layout(params), monkeypatch, shift=2048)
    fake = FakeRunner()
    with cmd.use_runner(fake), pytest.raises(BlockDeviceError, match="in the kernel, not"):
        with contextlib.ExitStack() as stack:
            parttable.map_partitions(stack, device, _layout(params))
    assert fake.calls == [["partx", "--delete", device], ["partx", "--add", device],
                          ["partx", "--delete", device]]


def test_missing_partitions_are_an_error_and_still_undone(
        tmp_path: Path, params: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parttable, "SYS_BLOCK", tmp_path)
    fake = FakeRunner(fail=lambda argv: argv[0] == "partx")
    with cmd.use_runner(fake), pytest.raises(BlockDeviceError, match=r"partitions \[1, 2\]"):
        with contextlib.ExitStack() as stack:
            parttable.map_partitions(stack, "/dev/loop9", _layout(params))
    assert fake.calls == [["partx", "--add", "/dev/loop9"], ["partx", "--delete", "/dev/loop9"]]
