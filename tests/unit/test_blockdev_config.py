"""Block-device config: notation, naming, validation, sizes, order, and partition tables.

Nothing here needs root: partition tables are written to sparse regular files, and command
lines are checked through a fake runner (dib.cmd.use_runner).
"""
from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any, List, Optional

import pytest
import yaml

from dib import cmd
from dib.blockdev import Params, default_config_text, load_config, mkfs, partition, parttable
from dib.blockdev.partition import PartitioningSpec
from dib.blockdev.size import GiB, MiB, Percent, parse_abs_size, parse_size
from dib.errors import ConfigError, NotYetSupported
from tests.lib.blockdev_configs import EFI_TREE

EFI_GRAPH = """
- local_loop:
    name: image0
- partitioning:
    name: partitioning_image0
    base: image0
    label: gpt
    partitions:
      - {name: ESP, type: 'EF00', size: 64MiB}
      - {name: BSP, type: 'EF02', size: 8MiB}
      - {name: root, type: '8300', size: 100%}
- mkfs: {name: mkfs_ESP, base: ESP, type: vfat}
- mount: {name: mount_mkfs_ESP, base: mkfs_ESP, mount_point: /boot/efi}
- fstab: {name: fstab_mount_mkfs_ESP, base: mount_mkfs_ESP, options: defaults, fsck-passno: 2}
- mkfs: {name: mkfs_root, base: root}
- mount: {name: mount_mkfs_root, base: mkfs_root, mount_point: /}
- fstab: {name: fstab_mount_mkfs_root, base: mount_mkfs_root, options: defaults, fsck-passno: 1}
"""

MIXED = """
- local_loop:
    name: image0
    partitioning:
      label: gpt
      partitions:
        - {name: ESP, type: 'EF00', size: 64MiB}
        - {name: BSP, type: 'EF02', size: 8MiB}
        - name: root
          type: '8300'
          size: 100%
          mkfs:
            name: mkfs_root
            mount:
              mount_point: /
              fstab: {options: defaults, fsck-passno: 1}
- mkfs:
    base: ESP
    type: vfat
    mount:
      mount_point: /boot/efi
- fstab: {base: mount_mkfs_ESP, options: defaults, fsck-passno: 2}
"""

MBR = """
- local_loop:
    name: image0
    size: 100MiB
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
"""


@pytest.fixture
def params(tmp_path: Path) -> Params:
    return Params(image_dir=tmp_path / "img", mount_base=tmp_path / "mnt", image_size=GiB)


def load(text: str, params: Params) -> Any:
    return load_config(text, params)


# -- notation and naming -------------------------------------------------------------------------

def test_tree_and_graph_notation_give_the_same_graph(params: Params) -> None:
    tree, graph = load(EFI_TREE, params), load(EFI_GRAPH, params)
    assert sorted(tree.specs, key=repr) == sorted(graph.specs, key=repr)
    assert sorted(tree.edges) == sorted(graph.edges)
    assert tree.order == graph.order
    assert tree.fstab() == graph.fstab()


def test_mixed_notation_gives_the_same_graph(params: Params) -> None:
    mixed, graph = load(MIXED, params), load(EFI_GRAPH, params)
    assert sorted(mixed.specs, key=repr) == sorted(graph.specs, key=repr)
    assert sorted(mixed.edges) == sorted(graph.edges)


def test_implicit_node_names(params: Params) -> None:
    cfg = load(default_config_text(), params)
    assert cfg.order == ("image0", "mkfs_root", "mount_mkfs_root", "fstab_mount_mkfs_root")
    names = {s.name for s in load(EFI_TREE, params).specs}
    assert {"partitioning_image0", "mkfs_ESP", "mount_mkfs_ESP", "fstab_mount_mkfs_ESP",
            "mount_mkfs_root", "fstab_mount_mkfs_root", "ESP", "BSP", "root"} <= names


def test_default_config(params: Params) -> None:
    cfg = load(default_config_text(), params)
    assert [type(s).__name__ for s in cfg.specs] == ["LoopSpec", "MkfsSpec", "MountSpec",
                                                     "FstabSpec"]
    assert cfg.fstab() == "LABEL=cloudimg-rootfs / ext4 defaults 0 1\n"
    assert cfg.root_filesystem is not None and cfg.root_filesystem.type == "ext4"


def test_root_defaults_come_from_params(tmp_path: Path) -> None:
    p = Params(image_dir=tmp_path, mount_base=tmp_path / "m", root_fs_type="xfs",
               root_mkfs_opts="-m crc=1 -i size=512")
    root = load(default_config_text(), p).node("mkfs_root")
    assert (root.type, root.label, root.opts) == ("xfs", "img-rootfs",
                                                  ("-m", "crc=1", "-i", "size=512"))
    p = Params(image_dir=tmp_path, mount_base=tmp_path / "m", root_label="myroot")
    assert load(default_config_text(), p).node("mkfs_root").label == "myroot"
    # values in the node win over the params
    text = default_config_text().replace("base: image0", "base: image0\n    type: ext2\n"
                                         "    label: other")
    root = load(text, p).node("mkfs_root")
    assert (root.type, root.label) == ("ext2", "other")


def test_vfat_label_upper_case_and_default_label(params: Params) -> None:
    cfg = load(EFI_TREE, params)
    assert cfg.node("mkfs_ESP").label == "MKFS_ESP"
    assert cfg.fstab() == ("LABEL=cloudimg-rootfs / ext4 defaults 0 1\n"
                           "LABEL=MKFS_ESP /boot/efi vfat defaults 0 2\n")


def test_swap_fstab_line(params: Params) -> None:
    text = MBR.replace("flags: [boot, primary]\n        size: 100%",
                       "flags: [boot, primary]\n        size: 50%") + """
      - name: swap
        flags: [primary]
        type: '0x82'
        size: 100%
        mkfs:
          type: swap
          label: swap0
          fstab: {}
"""
    cfg = load(text.replace("mount_point: /\n", "mount_point: /\n            fstab: {}\n"),
               params)
    assert cfg.fstab().splitlines() == ["LABEL=cloudimg-rootfs / ext4 defaults 0 2",
                                        "LABEL=swap0 none swap sw 0 0"]


# -- validation ----------------------------------------------------------------------------------

LOOP = "- local_loop: {name: image0, size: 1GiB}\n"

BAD = {
    "not single key": ("- local_loop: {name: a}\n  mkfs: {name: b, base: a, type: ext4}\n",
                       ["entry #1", "single-key"]),
    "not a mapping": ("- local_loop\n", ["entry #1", "single-key"]),
    "unknown plugin": (LOOP + "- loopy: {name: x, base: image0}\n",
                       ["node 'x'", "'loopy' is not a block-device plugin"]),
    "duplicate name": (LOOP + "- local_loop: {name: image0}\n",
                       ["node 'image0'", "duplicate node name"]),
    "duplicate partition name": (
        LOOP + "- partitioning: {base: image0, label: gpt, partitions: "
               "[{name: image0, size: 10MiB}]}\n", ["node 'image0'", "duplicate"]),
    "dangling base": (LOOP + "- mkfs: {name: fs, base: nope, type: ext4}\n",
                      ["node 'fs'", "base 'nope' is not defined"]),
    "loop without name": ("- local_loop: {size: 1GiB}\n", ["local_loop", "'name'"]),
    "mkfs without base": (LOOP + "- mkfs: {name: fs, type: ext4}\n", ["mkfs", "'base'"]),
    "mkfs without type": (LOOP + "- mkfs: {name: data, base: image0}\n",
                          ["node 'data'", "'type'"]),
    "mount without mount_point": (LOOP + "- mkfs: {name: fs, base: image0, type: ext4, "
                                  "mount: {}}\n", ["node 'mount_fs'", "'mount_point'"]),
    "mount key typo": (LOOP + "- mkfs: {name: fs, base: image0, type: ext4, "
                       "mount: {mount-point: /}}\n", ["node 'mount_fs'", "'mount-point'"]),
    "relative mount point": (LOOP + "- mkfs: {name: fs, base: image0, type: ext4, "
                             "mount: {mount_point: boot}}\n", ["node 'mount_fs'",
                                                               "mount_point"]),
    "partitioning without label": (LOOP + "- partitioning: {base: image0, partitions: "
                                   "[{name: p1, size: 1MiB}]}\n",
                                   ["node 'partitioning_image0'", "'label'"]),
    "bad table label": (LOOP + "- partitioning: {base: image0, label: bsd, partitions: "
                        "[{name: p1, size: 1MiB}]}\n", ["node 'partitioning_image0'",
                                                         "'label'"]),
    "partition without size": (LOOP + "- partitioning: {base: image0, label: gpt, "
                               "partitions: [{name: p1}]}\n", ["node 'p1'", "'size'"]),
    "bad loop size": ("- local_loop: {name: image0, size: 12 parsecs}\n",
                      ["node 'image0'", "'size'", "not a size"]),
    "bad percent": (LOOP + "- partitioning: {base: image0, label: gpt, partitions: "
                    "[{name: p1, size: 150%}]}\n", ["node 'p1'", "'size'"]),
    "bad mbr type": (LOOP + "- partitioning: {base: image0, label: mbr, partitions: "
                     "[{name: p1, size: 1MiB, type: 'zz', flags: [primary]}]}\n",
                     ["node 'p1'", "'type'", "MBR partition type"]),
    "extended mbr type": (LOOP + "- partitioning: {base: image0, label: mbr, partitions: "
                          "[{name: p1, size: 1MiB, type: '0x5', flags: [primary]}]}\n",
                          ["node 'p1'", "'type'"]),
    "bad gpt type": (LOOP + "- partitioning: {base: image0, label: gpt, partitions: "
                     "[{name: p1, size: 1MiB, type: '0x83'}]}\n",
                     ["node 'p1'", "'type'", "GPT partition type"]),
    "bad flag": (LOOP + "- partitioning: {base: image0, label: mbr, partitions: "
                 "[{name: p1, size: 1MiB, flags: [bootable]}]}\n", ["node 'p1'", "'flags'"]),
    "primary on gpt": (LOOP + "- partitioning: {base: image0, label: gpt, partitions: "
                       "[{name: p1, size: 1MiB, flags: [primary]}]}\n",
                       ["node 'p1'", "MBR only"]),
    "five primaries": (LOOP + "- partitioning: {base: image0, label: mbr, partitions: ["
                       + ", ".join(f"{{name: p{i}, size: 1MiB, flags: [primary]}}"
                                   for i in range(5)) + "]}\n",
                       ["node 'partitioning_image0'", "at most 4 primary"]),
    "primary after logical": (LOOP + "- partitioning: {base: image0, label: mbr, "
                              "partitions: [{name: l1, size: 1MiB}, {name: p2, size: 1MiB, "
                              "flags: [primary]}]}\n", ["node 'p2'", "before the logical"]),
    "partitions do not fit": (LOOP + "- partitioning: {base: image0, label: gpt, "
                              "partitions: [{name: big, size: 2GiB}]}\n",
                              ["node 'big'", "does not fit", "'size'"]),
    "duplicate mount point": (LOOP + "- partitioning: {base: image0, label: gpt, partitions: "
                              "[{name: a, size: 10MiB, mkfs: {type: ext4, mount: "
                              "{mount_point: /}}}, {name: b, size: 10MiB, mkfs: {type: ext4, "
                              "mount: {mount_point: '/'}}}]}\n",
                              ["node 'mount_mkfs_b'", "mount point '/'"]),
    "duplicate label": (LOOP + "- partitioning: {base: image0, label: gpt, partitions: "
                        "[{name: a, size: 10MiB, mkfs: {type: ext4, label: data}}, "
                        "{name: b, size: 10MiB, mkfs: {type: xfs, label: data}}]}\n",
                        ["node 'mkfs_b'", "label 'data'", "mkfs_a"]),
    "duplicate vfat label after upper-casing": (
        LOOP + "- partitioning: {base: image0, label: gpt, partitions: "
               "[{name: a, size: 10MiB, mkfs: {type: vfat, label: esp}}, "
               "{name: b, size: 10MiB, mkfs: {type: vfat, label: ESP}}]}\n",
        ["node 'mkfs_b'", "label 'ESP'"]),
    "label too long": (LOOP + "- mkfs: {name: fs, base: image0, type: xfs, "
                       "label: thirteen-char}\n", ["node 'fs'", "'label'", "too long"]),
    "vfat label too long": (LOOP + "- mkfs: {name: fs, base: image0, type: vfat, "
                            "label: twelve-chars}\n", ["node 'fs'", "> 11"]),
    "unsupported fs": (LOOP + "- mkfs: {name: fs, base: image0, type: btrfs}\n",
                       ["node 'fs'", "'type'", "btrfs"]),
    "bad uuid": (LOOP + "- mkfs: {name: fs, base: image0, type: ext4, uuid: nope}\n",
                 ["node 'fs'", "'uuid'"]),
    "two consumers": (LOOP + "- mkfs: {name: a, base: image0, type: ext4}\n"
                             "- mkfs: {name: b, base: image0, type: ext4}\n",
                      ["node 'b'", "already used by 'a'"]),
    "mount on a partition": (LOOP + "- partitioning: {base: image0, label: gpt, partitions: "
                             "[{name: p1, size: 10MiB}]}\n- mount: {name: m, base: p1, "
                             "mount_point: /}\n", ["node 'm'", "is a partition"]),
    "mount on swap": (LOOP + "- mkfs: {name: s, base: image0, type: swap, mount: "
                      "{mount_point: /swap}}\n", ["node 'mount_s'", "swap"]),
    "fstab on a non-swap mkfs": (LOOP + "- mkfs: {name: fs, base: image0, type: ext4, "
                                 "fstab: {}}\n", ["node 'fstab_fs'", "needs a mount"]),
    "fstab bad passno": (LOOP + "- mkfs: {name: fs, base: image0, type: ext4, mount: "
                         "{mount_point: /, fstab: {fsck-passno: x}}}\n",
                         ["node 'fstab_mount_fs'", "'fsck-passno'"]),
    "loop with base": ("- local_loop: {name: image0, base: x}\n", ["node 'image0'", "base"]),
    "loop bad block size": ("- local_loop: {name: image0, block_size: 3000}\n",
                            ["node 'image0'", "'block_size'"]),
    "no loop": ("- mkfs: {name: fs, base: fs0, type: ext4}\n", ["no local_loop"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_validation_errors_name_node_and_key(case: str, params: Params) -> None:
    text, expected = BAD[case]
    with pytest.raises(ConfigError) as info:
        load(text, params)
    for fragment in expected:
        assert fragment in str(info.value), f"{fragment!r} not in {info.value}"


def test_partitions_that_do_not_fit_hint_at_image_size(params: Params) -> None:
    with pytest.raises(ConfigError) as info:
        load(BAD["partitions do not fit"][0], params)
    assert "--image-size" in (info.value.hint or "")
    assert "DIB_IMAGE_EXTRA_SIZE" in (info.value.hint or "")


def test_fit_uses_params_image_size_and_is_deferred_when_unknown(tmp_path: Path) -> None:
    text = ("- local_loop: {name: image0}\n- partitioning: {base: image0, label: mbr, "
            "partitions: [{name: p1, size: 200MiB, flags: [primary]}]}\n")
    small = Params(image_dir=tmp_path, mount_base=tmp_path / "m", image_size=100 * MiB)
    with pytest.raises(ConfigError, match="does not fit"):
        load(text, small)
    load(text, Params(image_dir=tmp_path, mount_base=tmp_path / "m"))   # size unknown: ok


def test_lvm_is_refused_clearly(params: Params) -> None:
    with pytest.raises(NotYetSupported, match="lvm is not supported yet"):
        load(LOOP + "- lvm: {name: lvm0, base: [image0]}\n", params)


@pytest.mark.parametrize("text", ["", "{}", "[", "- []\n"])
def test_not_a_list(text: str, params: Params) -> None:
    with pytest.raises(ConfigError):
        load(text, params)


# -- sizes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("1KiB", 1024), ("1MiB", 2 ** 20), ("2GiB", 2 * 2 ** 30), ("1TiB", 2 ** 40),
    ("1KB", 1000), ("1MB", 10 ** 6), ("1GB", 10 ** 9), ("1TB", 10 ** 12),
    ("1K", 1000), ("1M", 10 ** 6), ("3G", 3 * 10 ** 9), ("1T", 10 ** 12),
    ("512", 512), ("512B", 512), (4096, 4096), ("1.5GiB", 3 * 2 ** 29), (" 8 MiB ", 8 * 2 ** 20),
])
def test_parse_abs_size(spec: Any, expected: int) -> None:
    assert parse_abs_size(spec) == expected


@pytest.mark.parametrize("spec", ["", "MiB", "1 parsec", "1mib", "-1", 0, True, None, "1%"])
def test_parse_abs_size_rejects(spec: Any) -> None:
    with pytest.raises(ValueError):
        parse_abs_size(spec)


def test_parse_relative_size() -> None:
    assert parse_size("40%") == Percent(40)
    assert parse_size("12.5%") == Percent(12.5)
    assert parse_size("8MiB") == 8 * MiB
    assert Percent(50).of(1001) == 500
    for bad in ("0%", "101%", "%", "x%"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_percent_is_of_the_remaining_space(params: Params) -> None:
    text = LOOP.replace("1GiB", "101MiB") + """- partitioning:
    base: image0
    label: mbr
    partitions:
      - {name: a, size: 20MiB, flags: [primary]}
      - {name: b, size: 50%, flags: [primary]}
      - {name: c, size: 100%, flags: [primary]}
"""
    spec = load(text, params).node("partitioning_image0")
    layout = partition.plan(spec, 101 * MiB, 512)
    sizes = [s.size * 512 for s in layout.slots]
    starts = [s.start * 512 for s in layout.slots]
    assert starts[0] == MiB and sizes[0] == 20 * MiB
    assert starts[1] == 21 * MiB and sizes[1] == 40 * MiB      # half of the 80 MiB left
    assert starts[2] == 61 * MiB and sizes[2] == 40 * MiB      # all that is left


# -- order ---------------------------------------------------------------------------------------

def test_order_is_deterministic_and_independent_of_yaml_order(params: Params) -> None:
    entries = yaml.safe_load(EFI_GRAPH)
    expected = load(EFI_GRAPH, params).order
    assert expected == ("image0", "partitioning_image0", "BSP", "ESP", "mkfs_ESP", "root",
                        "mkfs_root", "mount_mkfs_root", "fstab_mount_mkfs_root",
                        "mount_mkfs_ESP", "fstab_mount_mkfs_ESP")
    rng = random.Random(4)
    for _ in range(5):
        rng.shuffle(entries)
        assert load(yaml.safe_dump(entries), params).order == expected


def test_mount_order_parents_first(params: Params) -> None:
    parts = "".join(f"      - {{name: p{i}, size: 10MiB, mkfs: {{type: ext4, mount: "
                    f"{{mount_point: '{mp}'}}}}}}\n"
                    for i, mp in enumerate(["/var/log", "/boot/efi", "/var", "/boot", "/",
                                            "/var-lib"]))
    text = LOOP + "- partitioning:\n    base: image0\n    label: gpt\n    partitions:\n" + parts
    cfg = load(text, params)
    mps = [m.mount_point for m in cfg.mounts()]
    assert mps == ["/", "/boot", "/boot/efi", "/var", "/var/log", "/var-lib"]
    order = cfg.order
    positions = [order.index(m.name) for m in cfg.mounts()]
    assert positions == sorted(positions)


# -- partition tables: command lines and real sparse files --------------------------------------

class FakeRunner:
    """Records every command instead of running it."""

    def __init__(self) -> None:
        self.calls: List[List[str]] = []
        self.inputs: List[Optional[str]] = []

    def __call__(self, argv: List[str], **kwargs: Any) -> cmd.Result:
        self.calls.append(list(argv))
        self.inputs.append(kwargs.get("input"))
        return cmd.Result(tuple(argv), 0, "", "")


def _table(params: Params, text: str) -> PartitioningSpec:
    spec = load(text, params).node("partitioning_image0")
    assert isinstance(spec, PartitioningSpec)
    return spec


MBR_LOGICAL = LOOP.replace("1GiB", "64MiB") + """- partitioning:
    base: image0
    label: mbr
    partitions:
      - {name: boot, size: 10MiB, flags: [boot, primary]}
      - {name: l1, size: 10MiB}
      - {name: l2, size: 100%, type: '0x82'}
"""


def test_sfdisk_script_through_fake_runner(params: Params) -> None:
    layout = partition.plan(_table(params, MBR_LOGICAL), 64 * MiB, 512)
    fake = FakeRunner()
    with cmd.use_runner(fake):
        parttable.write_table("/dev/loop9", layout)
    assert fake.calls == [["sfdisk", "--quiet", "--no-tell-kernel", "/dev/loop9"]]
    disk_id = layout.disk_id
    assert fake.inputs[0] == (
        f"label: dos\nlabel-id: {disk_id}\nunit: sectors\nsector-size: 512\n\n"
        "start=2048, size=20480, type=83, bootable\n"
        "start=22528, size=108544, type=5\n"
        "start=24576, size=20480, type=83\n"
        "start=47104, size=83968, type=82\n")
    assert [s.number for s in layout.slots] == [1, 5, 6]


def test_sgdisk_argv_through_fake_runner(params: Params) -> None:
    layout = partition.plan(_table(params, EFI_TREE), 200 * MiB, 512)
    fake = FakeRunner()
    with cmd.use_runner(fake):
        parttable.write_table("/dev/loop9", layout)
    esp, bsp, root = (s.spec.uuid for s in layout.slots)
    assert fake.calls == [[
        "sgdisk", "--clear", "--disk-guid", layout.disk_id,
        "--new", "1:2048:133119", "--typecode", "1:EF00", "--change-name", "1:ESP",
        "--partition-guid", f"1:{esp}",
        "--new", "2:133120:149503", "--typecode", "2:EF02", "--change-name", "2:BSP",
        "--partition-guid", f"2:{bsp}",
        "--new", "3:149504:409566", "--typecode", "3:8300", "--change-name", "3:root",
        "--partition-guid", f"3:{root}",
        "/dev/loop9"]]


def test_identifiers_are_derived_from_the_seed(tmp_path: Path) -> None:
    def ids(seed: str) -> tuple:
        p = Params(image_dir=tmp_path, mount_base=tmp_path / "m", image_size=GiB,
                   uuid_seed=seed)
        cfg = load(EFI_TREE, p)
        table = cfg.node("partitioning_image0")
        return (table.disk_id, cfg.node("mkfs_root").uuid, cfg.node("mkfs_ESP").uuid,
                tuple(pt.uuid for pt in table.partitions))
    assert ids("a") == ids("a")
    assert ids("a") != ids("b")
    assert all(x != y for x, y in zip(ids("a")[:3], ids("b")[:3]))


@pytest.mark.parametrize("fstype, expected", [
    ("ext4", ["mkfs.ext4", "-q", "-L", "data", "-U", "{uuid}", "-O", "^metadata_csum", "DEV"]),
    ("xfs", ["mkfs.xfs", "-q", "-L", "data", "-m", "uuid={uuid}", "-O", "^metadata_csum",
             "DEV"]),
    ("vfat", ["mkfs.vfat", "-n", "DATA", "-i", "{volid}", "-O", "^metadata_csum", "DEV"]),
    ("swap", ["mkswap", "-L", "data", "-U", "{uuid}", "-O", "^metadata_csum", "DEV"]),
])
def test_mkfs_argv(fstype: str, expected: List[str], params: Params) -> None:
    text = LOOP + f"- mkfs: {{name: data, base: image0, type: {fstype}, " \
                  "opts: '-O ^metadata_csum'}\n"
    spec = load(text, params).node("data")
    fake = FakeRunner()
    with cmd.use_runner(fake):
        mkfs.make(spec, "DEV")
    subst = {"uuid": spec.uuid, "volid": spec.uuid.replace("-", "")}
    assert fake.calls == [[a.format(**subst) for a in expected]]


needs_sfdisk = pytest.mark.skipif(not shutil.which("sfdisk", path=cmd.SAFE_PATH)
                                  or not shutil.which("sgdisk", path=cmd.SAFE_PATH),
                                  reason="sfdisk/sgdisk not installed: run bin/dib-host-setup")


def _read_back(path: Path) -> dict:
    out = subprocess.run(["sfdisk", "--json", str(path)], check=True, capture_output=True,
                         text=True, env=cmd.base_env()).stdout
    return json.loads(out)["partitiontable"]


@needs_sfdisk
def test_mbr_on_a_sparse_file(tmp_path: Path, params: Params) -> None:
    image = tmp_path / "disk.raw"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    layout = partition.plan(_table(params, MBR_LOGICAL), 64 * MiB, 512)
    parttable.write_table(str(image), layout)
    table = _read_back(image)
    assert table["label"] == "dos" and table["id"] == layout.disk_id
    got = [(p["start"], p["size"], p["type"], p.get("bootable", False))
           for p in table["partitions"]]
    assert got == [(2048, 20480, "83", True), (22528, 108544, "5", False),
                   (24576, 20480, "83", False), (47104, 83968, "82", False)]
    assert image.stat().st_blocks * 512 < 1 * MiB     # still sparse


@needs_sfdisk
def test_gpt_on_a_sparse_file(tmp_path: Path, params: Params) -> None:
    image = tmp_path / "disk.raw"
    with open(image, "wb") as f:
        f.truncate(200 * MiB)
    text = EFI_TREE.replace("size: 8MiB", "size: 8MiB\n        flags: [boot]")
    layout = partition.plan(_table(params, text), 200 * MiB, 512)
    parttable.write_table(str(image), layout)
    table = _read_back(image)
    assert table["label"] == "gpt" and table["id"] == layout.disk_id
    parts = table["partitions"]
    assert [p["name"] for p in parts] == ["ESP", "BSP", "root"]
    assert [p["type"] for p in parts] == ["C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                                          "21686148-6449-6E6F-744E-656564454649",
                                          "0FC63DAF-8483-4772-8E79-3D69D8477DE4"]
    assert [p["uuid"] for p in parts] == [s.spec.uuid for s in layout.slots]
    assert [(p["start"], p["size"]) for p in parts] == [(s.start, s.size)
                                                        for s in layout.slots]
    assert parts[1].get("attrs") == "LegacyBIOSBootable"
    assert parts[2]["start"] + parts[2]["size"] - 1 == table["lastlba"]
    # Same config, same seed: byte-identical table.
    again = tmp_path / "again.raw"
    with open(again, "wb") as f:
        f.truncate(200 * MiB)
    parttable.write_table(str(again), layout)
    assert again.read_bytes() == image.read_bytes()
