"""The disk's pure parts (dib.disk): which block-device config a build uses, that a bad one
fails before the build, and how big the disk is made. No root, no block devices."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional

import pytest

from dib import blockdev, disk, resolver
from dib.blockdev.size import MiB
from dib.config import BuildConfig, parse_args
from dib.element import Catalogue
from dib.errors import ConfigError
from tests.lib.blockdev_configs import EFI_TREE

GiB = 1 << 30


def config(tmp_path: Path, *args: str, env: Optional[Dict[str, str]] = None) -> BuildConfig:
    return parse_args(["-o", str(tmp_path / "img"), *args, "os"], env or {})


def resolution(catalogue: Callable[..., Catalogue], files: Dict[str, str]) -> resolver.Resolution:
    """``os`` (the operating system) with ``files`` in its element directory."""
    cat = catalogue({"os": {"provides": ["operating-system"]}})
    for name, text in files.items():
        (cat.elements["os"].path / name).write_text(text)
    return resolver.resolve(["os"], cat)


def loaded(cfg: BuildConfig, text: str, tmp_path: Path) -> blockdev.Config:
    return blockdev.load_config(text, blockdev.Params(image_dir=tmp_path, mount_base=tmp_path))


# -- which config --------------------------------------------------------------------------------

def test_without_an_element_config_the_fallback_is_used(tmp_path: Path, catalogue) -> None:
    cfg = config(tmp_path)
    assert disk.block_device_config_text(cfg, resolution(catalogue, {})) == \
        blockdev.default_config_text()


def test_an_element_config_for_the_arch_beats_its_default(tmp_path: Path, catalogue) -> None:
    res = resolution(catalogue, {"block-device-default.yaml": "# default\n",
                                 f"block-device-{config(tmp_path).arch}.yaml": "# arch\n"})
    assert disk.block_device_config_text(config(tmp_path), res) == "# arch\n"
    (res.elements["os"].path / f"block-device-{config(tmp_path).arch}.yaml").unlink()
    assert disk.block_device_config_text(config(tmp_path), res) == "# default\n"


def test_dib_block_device_config_beats_every_element(tmp_path: Path, catalogue) -> None:
    res = resolution(catalogue, {"block-device-default.yaml": "# element\n"})
    cfg = config(tmp_path, env={"DIB_BLOCK_DEVICE_CONFIG": EFI_TREE})
    assert disk.block_device_config_text(cfg, res).strip() == EFI_TREE.strip()


# -- checked before the build ----------------------------------------------------------------------

BAD = "- local_loop:\n    name: image0\n- mkfs:\n    base: nowhere\n    type: ext4\n"


def test_a_bad_config_fails_up_front_naming_where_it_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as from_env:
        disk.check_block_device_config(
            config(tmp_path, env={"DIB_BLOCK_DEVICE_CONFIG": BAD}), BAD)
    assert from_env.value.message.startswith("DIB_BLOCK_DEVICE_CONFIG: ")
    with pytest.raises(ConfigError) as from_element:
        disk.check_block_device_config(config(tmp_path), BAD)
    assert "DIB_BLOCK_DEVICE_CONFIG" not in from_element.value.message


@pytest.mark.parametrize("text", [blockdev.default_config_text(), EFI_TREE])
def test_good_configs_pass_the_check(tmp_path: Path, text: str) -> None:
    disk.check_block_device_config(config(tmp_path), text)


# -- the disk's size -----------------------------------------------------------------------------

def test_the_disk_holds_the_tree_with_room_and_is_whole_mib(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    fallback = loaded(cfg, blockdev.default_config_text(), tmp_path)
    sizes = [disk.image_size(cfg, tree, fallback) for tree in (0, 1, GiB, 3 * GiB + 12345)]
    for tree, size in zip((0, 1, GiB, 3 * GiB + 12345), sizes):
        assert size % MiB == 0
        assert size >= tree * (1 + disk.FS_OVERHEAD) + disk.FS_FIXED
    assert sizes == sorted(sizes) and sizes[2] < sizes[3]


def test_fixed_partitions_and_extra_size_are_added(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    fallback = loaded(cfg, blockdev.default_config_text(), tmp_path)
    efi = loaded(cfg, EFI_TREE, tmp_path)
    # EFI_TREE: a 64 MiB ESP and an 8 MiB BIOS boot partition besides the root
    assert disk.image_size(cfg, GiB, efi) - disk.image_size(cfg, GiB, fallback) == 72 * MiB
    extra = config(tmp_path, env={"DIB_IMAGE_EXTRA_SIZE": "100"})
    assert disk.image_size(extra, GiB, fallback) - disk.image_size(cfg, GiB, fallback) == \
        100 * MiB


def test_image_size_is_taken_as_given(tmp_path: Path) -> None:
    cfg = config(tmp_path, "--image-size", "2.5")
    efi = loaded(cfg, EFI_TREE, tmp_path)
    assert disk.image_size(cfg, 0, efi) == disk.image_size(cfg, 10 * GiB, efi) == \
        int(2.5 * GiB)
