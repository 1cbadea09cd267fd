"""The phase table: the one place where diskimage-builder's hook contract lives.

Each phase is a hook directory name, where its scripts run (on the host or in the chroot),
and what they work on. The runner, the ``break=`` choices, the docs and the tests all read
this table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class Phase:
    name: str
    in_chroot: bool
    description: str
    #: the phase gets ``TARGET_ROOT`` pointing at the tree
    target_root: bool = False

    @property
    def short(self) -> str:
        """The name used in ``break=`` points: ``install`` for ``install.d``."""
        return self.name[:-2]


PHASES: Tuple[Phase, ...] = (
    Phase("root.d", False, "create the root tree (debootstrap, image extraction, ...) in "
          "TARGET_ROOT", target_root=True),
    Phase("extra-data.d", False, "fetch host-side data into TMP_HOOKS_PATH, which the chroot "
          "sees read-only as /tmp/in_target.d"),
    Phase("pre-install.d", True, "repositories, keys, package index"),
    Phase("install.d", True, "install packages and software"),
    Phase("post-install.d", True, "enable services, clean up"),
    Phase("post-root.d", False, "host-side work on the finished tree before it is sized",
          target_root=True),
    Phase("block-device.d", False, "adjust the block device (IMAGE_BLOCK_DEVICE)"),
    Phase("pre-finalise.d", False, "host-side work on the final filesystems",
          target_root=True),
    Phase("finalise.d", True, "in the final filesystems: bootloader, machine-id, caches"),
    Phase("cleanup.d", False, "undo build-time tweaks", target_root=True),
)

PHASE_NAMES: Tuple[str, ...] = tuple(p.name for p in PHASES)
BY_NAME = {p.name: p for p in PHASES}

#: every value ``break=`` accepts
BREAK_POINTS: Tuple[str, ...] = tuple(
    f"{when}-{p.short}" for p in PHASES for when in ("before", "after")) + ("after-error",)
