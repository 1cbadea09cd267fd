"""The phase table: the one place where diskimage-builder's hook contract lives.

Each phase is a hook directory name, where its scripts run (on the host or in the chroot),
what they work on, and the stage of the build it belongs to:

* ``tree``: the tree's cached steps (:mod:`dib.steps`), root.d through post-root.d;
* ``disk``: block-device.d, only when a disk is built (:mod:`dib.disk`);
* ``final``: pre-finalise.d through cleanup.d, on the disk's filesystems or, without a disk
  output, on the tree itself.

The runner, the steps, the ``break=`` choices, the docs and the tests all read this table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Literal, Tuple

Stage = Literal["tree", "disk", "final"]
STAGES: Tuple[Stage, ...] = ("tree", "disk", "final")


@dataclass(frozen=True)
class Phase:
    name: str
    in_chroot: bool
    stage: Stage
    description: str
    #: the phase gets ``TARGET_ROOT`` pointing at the tree
    target_root: bool = False
    #: each script is a cached step of its own (root.d is one step, extra-data.d runs every
    #: build: see :mod:`dib.steps`)
    script_steps: bool = False

    @property
    def short(self) -> str:
        """The name used in ``break=`` points: ``install`` for ``install.d``."""
        return self.name[:-2]


PHASES: Tuple[Phase, ...] = (
    Phase("root.d", False, "tree", "create the root tree (debootstrap, image extraction, ...) "
          "in TARGET_ROOT", target_root=True),
    Phase("extra-data.d", False, "tree", "fetch host-side data into TMP_HOOKS_PATH, which the "
          "chroot sees read-only as /tmp/in_target.d"),
    Phase("pre-install.d", True, "tree", "repositories, keys, package index",
          script_steps=True),
    Phase("install.d", True, "tree", "install packages and software", script_steps=True),
    Phase("post-install.d", True, "tree", "enable services, clean up", script_steps=True),
    Phase("post-root.d", False, "tree", "host-side work on the finished tree before it is "
          "sized", target_root=True, script_steps=True),
    Phase("block-device.d", False, "disk", "adjust the block device (IMAGE_BLOCK_DEVICE)"),
    Phase("pre-finalise.d", False, "final", "host-side work on the final filesystems",
          target_root=True),
    Phase("finalise.d", True, "final", "in the final filesystems: bootloader, machine-id, "
          "caches"),
    Phase("cleanup.d", False, "final", "undo build-time tweaks", target_root=True),
)

PHASE_NAMES: Tuple[str, ...] = tuple(p.name for p in PHASES)
BY_NAME: Dict[str, Phase] = {p.name: p for p in PHASES}


def of_stage(*stages: Stage) -> Tuple[Phase, ...]:
    """The phases of ``stages``, in running order."""
    return tuple(p for p in PHASES if p.stage in stages)


#: every value ``break=`` accepts
BREAK_POINTS: Tuple[str, ...] = tuple(
    f"{when}-{p.short}" for p in PHASES for when in ("before", "after")) + ("after-error",)
