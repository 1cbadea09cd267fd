"""Block devices for dib: diskimage-builder's block-device YAML, run in one Python process.

A config (``DIB_BLOCK_DEVICE_CONFIG`` or an element's ``block-device-*.yaml``) is a graph of
nodes: ``local_loop`` (a sparse image file on a loop device), ``partitioning`` (an MBR or GPT
table with named partitions), ``mkfs`` (ext2/3/4, xfs, vfat, swap), ``mount`` and ``fstab``.
``lvm`` is recognised and refused ("not supported yet").

Usage::

    cfg = load_config(text, params)          # pure: parse, validate, order; ConfigError
    with contextlib.ExitStack() as stack:
        state = BlockDevice(cfg, params).create(stack)
        ...                                   # fill state.mount_dir("/"), write state.fstab()
    # leaving the stack: unmount (reverse order), partx --delete, losetup --detach

Why it looks like this:

* dib pickled its node objects between separate ``dib-block-device`` invocations and kept
  rollback lists per node. Here one process holds one ExitStack: every undo is registered
  right after its action, so an error or a signal at any point releases exactly what exists.
* Configs are validated completely before anything is created, errors name the node and
  key, and creation order is deterministic (networkx lexicographic topological sort).
* Identifiers dib made random (filesystem UUIDs, disk ids, GPT partition GUIDs) are derived
  from node names and :attr:`Params.uuid_seed`, so identical inputs give identical images.
* No device-mapper: partitions are mapped with ``partx`` (``mknod`` as a fallback), which
  works without udev.
* **vfat is never mounted**, because some build hosts' kernels cannot mount it. The mount of
  a vfat filesystem is a staging directory (next to the mount base) bind-mounted at the mount
  point; on a successful release its contents are copied into the filesystem with mtools
  (``mmd``/``mcopy``) and checked with ``fsck.vfat -n``. So ``grub-install`` writing to
  ``/boot/efi`` in a chroot works, and UEFI images build without kernel vfat support.
  Consequence: during the build the ESP's free space is not enforced; a too-full ESP fails
  at release time.

Modules: :mod:`.config` (YAML → specs → order), :mod:`.size`, :mod:`.params`, :mod:`.node`
(key checking, derived ids), one module per
plugin (:mod:`.loop`, :mod:`.partition` + :mod:`.parttable`, :mod:`.mkfs`, :mod:`.mount` +
:mod:`.vfat`, :mod:`.fstab`), and :mod:`.device` which runs a config.
"""
from __future__ import annotations

from dib.blockdev.config import Config, default_config_text, load_config
from dib.blockdev.device import BlockDevice, MountInfo, State
from dib.blockdev.params import Params

__all__ = ["BlockDevice", "Config", "MountInfo", "Params", "State", "default_config_text",
           "load_config"]
