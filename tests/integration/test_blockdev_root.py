"""Block devices for real: loop devices, partition tables, mkfs, mounts (needs root).

Skipped by capability probes (tests.lib.caps: attach and detach a loop device, mount a
tmpfs; plus the partitioning/mkfs/mtools programs), not by uid.
Every test runs in its own tmp dir; the ``sandbox`` fixture fails the test if a loop device
backed by a file in it, or a mount under it, is left over, and removes such leftovers either
way, so a failing test does not leak into the next one.

Read-back happens on the raw file after release, without mounting: ``sfdisk --json`` for
the table, ``blkid --offset`` for filesystems, ``debugfs 'file?offset=N'`` for ext4 contents
and mtools ``file@@offset`` for vfat contents.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from dib import cmd
from dib.blockdev import BlockDevice, Params, load_config
from dib.blockdev.size import MiB
from dib.errors import BlockDeviceError, CommandFailed, ConfigError
from tests.lib import caps, leaks
from tests.lib.blockdev_configs import EFI_TREE

pytestmark = pytest.mark.root

TOOLS = ("losetup", "partx", "sfdisk", "sgdisk", "mkfs.ext4", "mkfs.xfs", "mkfs.vfat",
         "mkswap", "mmd", "mcopy", "mdir", "mtype", "fsck.vfat", "fstrim", "blkid", "debugfs")


@pytest.fixture(scope="module", autouse=True)
def capable() -> None:
    if not (caps.can_loop() and caps.can_mount()):
        pytest.skip("needs loop devices and mounts: run the tests as root, outside an "
                    "unprivileged container")
    missing = [t for t in TOOLS if not shutil.which(t, path=cmd.SAFE_PATH)]
    if missing:
        pytest.skip("missing tools: " + ", ".join(missing) + " (run bin/dib-host-setup --test)")


# -- leak detection ------------------------------------------------------------------------------

def leaked_mounts(root: Path) -> List[str]:
    return leaks.mounts_under(root)


def leaked_loops(root: Path) -> List[str]:
    return [entry.split(" -> ")[0] for entry in leaks.loops_under(root)]


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Path]:
    """tmp_path; afterwards, fail on leftovers (and remove them so no other test suffers)."""
    yield tmp_path
    mounts, loops = leaked_mounts(tmp_path), leaked_loops(tmp_path)
    env = cmd.base_env()
    for point in reversed(mounts):
        subprocess.run(["umount", "--lazy", point], env=env)
    for loop in loops:
        subprocess.run(["partx", "--delete", loop], env=env, capture_output=True)
        subprocess.run(["losetup", "--detach", loop], env=env)
    assert not mounts and not loops, f"leaked mounts {mounts}, loop devices {loops}"


def assert_nothing_left(root: Path) -> None:
    leaks.assert_clean(root)


# -- helpers -------------------------------------------------------------------------------------

def params_for(root: Path, **kwargs: Any) -> Params:
    kwargs.setdefault("image_size", 200 * MiB)
    return Params(image_dir=root / "img", mount_base=root / "build" / "mnt", **kwargs)


def table(image: Path) -> Dict[str, Any]:
    out = subprocess.run(["sfdisk", "--json", str(image)], check=True, capture_output=True,
                         text=True, env=cmd.base_env()).stdout
    return json.loads(out)["partitiontable"]


def probe_fs(image: Path, start_sector: int) -> Dict[str, str]:
    out = subprocess.run(["blkid", "--probe", "--output", "export", "--offset",
                          str(start_sector * 512), str(image)],
                         capture_output=True, text=True, env=cmd.base_env())
    assert out.returncode in (0, 2), out.stderr       # 2: no filesystem found
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def debugfs(image: Path, start_sector: int, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, f"{image}?offset={start_sector * 512}"],
                          check=True, capture_output=True, text=True,
                          env=cmd.base_env()).stdout


def mtools(tool: str, image: Path, start_sector: int, *args: str) -> str:
    env = cmd.base_env({"MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null"})
    return subprocess.run([tool, "-i", f"{image}@@{start_sector * 512}", *args], check=True,
                          capture_output=True, text=True, env=env).stdout


def mounted(point: Path) -> bool:
    return str(point.resolve()) in leaked_mounts(point)


MBR = """
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: mbr
    partitions:
      - name: root
        flags: [boot, primary]
        size: 100%
        mkfs:
          name: mkfs_root
          mount:
            mount_point: /
            fstab:
              options: "defaults"
              fsck-passno: 1
"""

GPT = """
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: gpt
    partitions:
      - name: BSP
        type: 'EF02'
        size: 8MiB
      - name: root
        flags: [boot]
        type: '8300'
        size: 100%
        mkfs:
          name: mkfs_root
          mount:
            mount_point: /
            fstab:
              options: "defaults"
              fsck-passno: 1
"""

EFI = EFI_TREE


# -- layouts -------------------------------------------------------------------------------------

def test_mbr_layout(sandbox: Path) -> None:
    params = params_for(sandbox, image_size=64 * MiB)
    cfg = load_config(MBR, params)
    with contextlib.ExitStack() as stack:
        state = BlockDevice(cfg, params).create(stack)
        assert state.image_block_device.startswith("/dev/loop")
        assert state.image_block_devices["root"] == state.image_block_device + "p1"
        assert mounted(params.mount_base)
        assert [m.mount_point for m in state.mounts] == ["/"]
        (state.mount_dir("/") / "hello").write_text("from the build\n")
        assert state.fstab() == "LABEL=cloudimg-rootfs / ext4 defaults 0 1\n"
    assert_nothing_left(sandbox)
    image = state.image_files["image0"]
    pt = table(image)
    assert pt["label"] == "dos" and pt["id"] == cfg.node("partitioning_image0").disk_id
    [part] = pt["partitions"]
    assert (part["start"], part["type"], part.get("bootable")) == (2048, "83", True)
    assert part["start"] + part["size"] == 64 * MiB // 512
    fs = probe_fs(image, part["start"])
    assert (fs["TYPE"], fs["LABEL"], fs["UUID"]) == ("ext4", "cloudimg-rootfs",
                                                     cfg.node("mkfs_root").uuid)
    assert debugfs(image, part["start"], "cat /hello") == "from the build\n"


def test_gpt_layout_with_xfs_root(sandbox: Path) -> None:
    params = params_for(sandbox, image_size=400 * MiB, root_fs_type="xfs")
    cfg = load_config(GPT, params)
    with contextlib.ExitStack() as stack:
        state = BlockDevice(cfg, params).create(stack)
        assert mounted(params.mount_base)
        assert (state.root_label, state.root_fstype) == ("img-rootfs", "xfs")
        assert state.fstab() == "LABEL=img-rootfs / xfs defaults 0 1\n"
    assert_nothing_left(sandbox)
    pt = table(state.image_files["image0"])
    bsp, root = pt["partitions"]
    assert bsp["type"] == "21686148-6449-6E6F-744E-656564454649" and bsp["name"] == "BSP"
    assert root["attrs"] == "LegacyBIOSBootable" and root["name"] == "root"
    fs = probe_fs(state.image_files["image0"], root["start"])
    assert (fs["TYPE"], fs["LABEL"]) == ("xfs", "img-rootfs")


def test_efi_layout_fills_the_vfat_esp_from_staging(sandbox: Path) -> None:
    params = params_for(sandbox)
    cfg = load_config(EFI, params)
    with contextlib.ExitStack() as stack:
        state = BlockDevice(cfg, params).create(stack)
        esp = state.mount_dir("/boot/efi")
        assert mounted(params.mount_base) and mounted(esp)
        assert [(m.mount_point, m.fstype) for m in state.mounts] == [("/", "ext4"),
                                                                      ("/boot/efi", "vfat")]
        assert state.fstab() == ("LABEL=cloudimg-rootfs / ext4 defaults 0 1\n"
                                 "LABEL=MKFS_ESP /boot/efi vfat defaults 0 2\n")
        (esp / "EFI" / "BOOT").mkdir(parents=True)
        (esp / "EFI" / "BOOT" / "BOOTX64.EFI").write_bytes(b"\x7fnot really an EFI binary")
        (esp / "EFI" / "BOOT" / "grub.cfg").write_text("search --label cloudimg-rootfs\n")
        blk = subprocess.run(["blkid", "--output", "export", state.image_block_devices["ESP"]],
                             capture_output=True, text=True, env=cmd.base_env()).stdout
        assert "TYPE=vfat" in blk and "LABEL=MKFS_ESP" in blk
    assert_nothing_left(sandbox)
    assert not list((sandbox / "build").glob("*.vfat-staging"))
    image = state.image_files["image0"]
    esp_part, bsp, root = table(image)["partitions"]
    assert esp_part["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    assert mtools("mtype", image, esp_part["start"], "::/EFI/BOOT/grub.cfg") == \
        "search --label cloudimg-rootfs\n"
    listing = mtools("mdir", image, esp_part["start"], "-b", "::/EFI/BOOT")
    assert "BOOTX64.EFI" in listing.upper()
    vfat = probe_fs(image, esp_part["start"])
    assert (vfat["TYPE"], vfat["LABEL"], vfat["UUID"]) == ("vfat", "MKFS_ESP",
                                                            cfg.node("mkfs_ESP").uuid)
    # the files went into the ESP, not into the root filesystem's /boot/efi directory
    assert "BOOT" not in debugfs(image, root["start"], "ls /boot/efi")


def test_same_config_and_seed_give_the_same_identifiers(sandbox: Path) -> None:
    seen = []
    for run in ("a", "b"):
        params = Params(image_dir=sandbox / run, mount_base=sandbox / run / "mnt",
                        image_size=200 * MiB, uuid_seed="seed")
        with contextlib.ExitStack() as stack:
            state = BlockDevice(load_config(EFI, params), params).create(stack)
        pt = table(state.image_files["image0"])
        pt.pop("device")
        for part in pt["partitions"]:
            part.pop("node")
        fs = [probe_fs(state.image_files["image0"], p["start"]).get("UUID")
              for p in pt["partitions"]]
        seen.append((pt, fs))
    assert seen[0] == seen[1]
    assert_nothing_left(sandbox)


# -- failure injection ---------------------------------------------------------------------------

def real_runner(argv: List[str], *, env: Dict[str, str], cwd: Optional[str], capture: bool,
                input: Optional[str], interactive: bool, on_line: Any, tail: int
                ) -> cmd.Result:
    stdin: Dict[str, Any] = {"input": input} if input is not None else \
        {"stdin": subprocess.DEVNULL}
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, **stdin)
    return cmd.Result(tuple(argv), proc.returncode, proc.stdout if capture else "",
                      (proc.stderr + proc.stdout)[-3000:])


def injecting(fail: Callable[[List[str]], bool]) -> Any:
    """A runner that runs everything for real except commands ``fail`` picks."""
    def runner(argv: List[str], **kwargs: Any) -> cmd.Result:
        if fail(list(argv)):
            return cmd.Result(tuple(argv), 1, "", "injected failure")
        return real_runner(list(argv), **kwargs)
    return cmd.use_runner(runner)


@pytest.mark.parametrize("what, layout, fail, error", [
    ("loop", MBR, lambda a: a[0] == "losetup" and "--find" in a, CommandFailed),
    ("partition table", EFI, lambda a: a[0] == "sgdisk", CommandFailed),
    ("partx", EFI, lambda a: a[:2] == ["partx", "--add"], BlockDeviceError),
    ("mkfs", EFI, lambda a: a[0] == "mkfs.ext4", CommandFailed),
    ("root mount", EFI, lambda a: a[:2] == ["mount", "-t"], CommandFailed),
    ("vfat staging mount", EFI, lambda a: a[:2] == ["mount", "--bind"], CommandFailed),
])
def test_injected_failures_leave_nothing(what: str, layout: str, fail: Callable[..., bool],
                                         error: type, sandbox: Path) -> None:
    params = params_for(sandbox)
    cfg = load_config(layout, params)
    with injecting(fail), pytest.raises(error):
        with contextlib.ExitStack() as stack:
            BlockDevice(cfg, params).create(stack)
    assert_nothing_left(sandbox)
    assert not (params.image_dir / "image0.raw").exists()
    assert not list((sandbox / "build").glob("*.vfat-staging"))


def test_partition_larger_than_the_disk(sandbox: Path) -> None:
    text = MBR.replace("size: 100%", "size: 100MiB")
    cfg = load_config(text, params_for(sandbox, image_size=None))   # size unknown: accepted
    params = params_for(sandbox, image_size=64 * MiB)
    with pytest.raises(ConfigError, match="node 'root'.*does not fit"):
        with contextlib.ExitStack() as stack:
            BlockDevice(cfg, params).create(stack)
    assert_nothing_left(sandbox)


def test_mkfs_that_really_fails(sandbox: Path) -> None:
    text = EFI.replace("name: mkfs_root\n", "name: mkfs_root\n          opts: '-b 3'\n")
    params = params_for(sandbox)
    with pytest.raises(CommandFailed, match="mkfs.ext4"):
        with contextlib.ExitStack() as stack:
            BlockDevice(load_config(text, params), params).create(stack)
    assert_nothing_left(sandbox)


def test_error_in_the_build_releases_everything_and_skips_the_esp(sandbox: Path) -> None:
    params = params_for(sandbox)
    with pytest.raises(RuntimeError, match="build step failed"):
        with contextlib.ExitStack() as stack:
            state = BlockDevice(load_config(EFI, params), params).create(stack)
            (state.mount_dir("/boot/efi") / "grub.cfg").write_text("x")
            raise RuntimeError("build step failed")
    assert_nothing_left(sandbox)
    image = state.image_files["image0"]
    esp = table(image)["partitions"][0]
    assert "grub" not in mtools("mdir", image, esp["start"], "-b", "::/").lower()


def test_vfat_copy_failure_at_release_still_releases(sandbox: Path) -> None:
    params = params_for(sandbox)
    with pytest.raises(BlockDeviceError, match="symlinks"):
        with contextlib.ExitStack() as stack:
            state = BlockDevice(load_config(EFI, params), params).create(stack)
            (state.mount_dir("/boot/efi") / "link").symlink_to("/etc/hostname")
    assert_nothing_left(sandbox)
    assert not list((sandbox / "build").glob("*.vfat-staging"))


def test_busy_mount_is_detached_lazily_and_reported(sandbox: Path) -> None:
    params = params_for(sandbox, image_size=64 * MiB)
    holder = None
    try:
        with pytest.raises(BlockDeviceError, match="could not unmount"):
            with contextlib.ExitStack() as stack:
                state = BlockDevice(load_config(MBR, params), params).create(stack)
                holder = open(state.mount_dir("/") / "busy", "w")
        assert leaked_mounts(sandbox) == []          # detached lazily
    finally:
        if holder:
            holder.close()
    for _ in range(50):                              # the loop autoclears once released
        if not leaked_loops(sandbox):
            break
        time.sleep(0.1)
    assert_nothing_left(sandbox)


# -- the journal's stale blocks ------------------------------------------------------------------

def test_stale_journal_blocks_are_punched_and_the_filesystem_stays_whole(sandbox: Path) -> None:
    from dib.blockdev import journal

    params = params_for(sandbox, image_size=96 * MiB)
    cfg = load_config(MBR, params)
    with contextlib.ExitStack() as stack:
        state = BlockDevice(cfg, params).create(stack)
        root = state.mount_dir("/")
        for i in range(3000):  # enough metadata to cycle through the journal
            (root / f"d{i % 30}").mkdir(exist_ok=True)
            (root / f"d{i % 30}" / f"f{i}").write_text(f"file {i}\n")
        subprocess.run(["sync", "-f", str(root)], check=True)
    image = state.image_files["image0"]
    start = table(image)["partitions"][0]["start"]
    offset = start * 512
    fields = journal.superblock_fields(subprocess.run(
        ["dumpe2fs", "-h", f"{image}?offset={offset}"], capture_output=True, text=True,
        check=True, env=cmd.base_env()).stdout)
    block = int(fields["Block size"])
    [(lstart, pstart, count)] = journal.journal_extents(debugfs(image, start, "stat <8>"))
    assert lstart == 0 and count > 1

    def journal_bytes() -> bytes:
        with open(image, "rb") as f:
            f.seek(offset + pstart * block)
            return f.read(count * block)

    before = journal_bytes()
    assert before[block:].strip(b"\0"), "the copy left nothing in the journal: nothing tested"
    allocated = os.stat(image).st_blocks * 512
    punched = journal.punch_stale_journal(image, offset)
    after = journal_bytes()
    assert punched == (count - 1) * block
    assert after[:block] == before[:block]           # the journal superblock stays
    assert not after[block:].strip(b"\0")            # the rest reads as zeros ...
    fsck = subprocess.run(["e2fsck", "-fn", f"{image}?offset={offset}"], capture_output=True,
                          text=True, env=cmd.base_env())
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr   # ... and the filesystem is whole
    assert debugfs(image, start, "cat /d7/f2977") == "file 2977\n"
    assert os.stat(image).st_size == 96 * MiB        # holes, not a shorter file ...
    assert os.stat(image).st_blocks * 512 < allocated  # ... and not zeros written over them
