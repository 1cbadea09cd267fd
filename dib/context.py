"""What one build knows while it runs, and how it runs a phase there.

* :class:`BuildContext`: what is fixed for the build -- configuration, resolution, work
  directory, hooks tree, hook environment, layer store, break settings -- frozen, plus the
  logs every part of the build appends to (timings, the tree's steps, the outputs written);
* :class:`BuildRecord`: what the build learns as it goes (the finished tree's key, whether
  the disk has an EFI system partition); only :mod:`dib.build` writes it.

:mod:`dib.steps` (the tree's cached steps) and :mod:`dib.disk` (the disk image) receive a
:class:`BuildContext`; :mod:`dib.build` makes it and tears it down.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shlex
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Mapping, Optional

import yaml

from dib import blockdev, chroot, cmd, config, dibcompat, element, hooks, resolver
from dib import log as dlog
from dib.config import BuildConfig
from dib.errors import DibError
from dib.layers import LayerStore, StepRecord
from dib.phases import BY_NAME, Phase, of_stage
from dib.runparts import Breaks, PhaseContext, Runner, phase_environment
from dib.workdir import Workdir

if TYPE_CHECKING:  # the remote cache is imported only when one is configured
    from dib.remote.cache import RemoteCache

log = logging.getLogger("dib.build")

#: the directory that holds the dib package (for PYTHONPATH of host-side hooks)
DIB_IMPORT_ROOT = os.fspath(Path(__file__).resolve().parent.parent)

#: the caller's variables that never reach hooks
DROPPED_ENV = {"TMPDIR", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PATH", "LD_PRELOAD",
               "LD_LIBRARY_PATH", "PWD", "OLDPWD", "SHLVL", "_", "PS1", "PROMPT_COMMAND",
               "BASH_ENV", "ENV"}


@dataclass
class BuildRecord:
    """What the build has learned so far; written by :mod:`dib.build` only."""

    #: the key of the finished tree (after the tree steps); seeds the disk's UUIDs
    tree_key: str = ""
    #: the disk has an EFI system partition (what :func:`dib.disk.build_disk` found, or
    #: what the cached image recorded)
    has_esp: bool = False


@dataclass(frozen=True)
class BuildContext:
    """What is fixed for one build, and the logs its parts append to."""

    cfg: BuildConfig
    res: resolver.Resolution
    wd: Workdir
    tree_hooks: hooks.HooksTree
    #: what every hook sees before a phase adds its part (read-only)
    env: Mapping[str, str]
    logfile: Path
    timings: dlog.Timings
    store: LayerStore
    #: a copy of the host's resolv.conf, bind-mounted into chroots
    resolv: Path
    record: BuildRecord = field(default_factory=BuildRecord)
    #: --remote-cache: layers pulled on a local miss and pushed once built (None: off)
    remote: Optional["RemoteCache"] = None
    #: logs: every output written, every tree step with its cache outcome
    outputs: List[Path] = field(default_factory=list)
    steps: List[StepRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        object.__setattr__(self, "env", types.MappingProxyType(dict(self.env)))

    @property
    def has_esp(self) -> bool:
        return self.record.has_esp

    @property
    def tree_key(self) -> str:
        return self.record.tree_key

    @property
    def chroot_cache(self) -> Path:
        return self.cfg.image_cache / "chroot"

    @property
    def breaks(self) -> Breaks:
        return Breaks(self.cfg.break_points, self.cfg.break_cmd,
                      self.cfg.break_outside_target, self.wd.base)

    @contextlib.contextmanager
    def chroot(self, root: Path) -> Iterator[Path]:
        """The chroot mounts (proc, sys, dev, hooks, cache, resolv.conf) on ``root``."""
        with chroot.chroot_mounts(root, self.wd.hooks, self.chroot_cache, self.resolv):
            yield root

    # -- phases ------------------------------------------------------------------------

    def phase_env(self, phase: Phase, root: Path,
                  extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
        env = {**self.env, **(extra or {})}
        if phase.target_root:
            env["TARGET_ROOT"] = os.fspath(root)
        if phase.in_chroot:
            env["HOME"] = "/root"
            env["PATH"] = dibcompat.chroot_path(cmd.SAFE_PATH)
        else:
            # host-side helpers ("$DIB_PYTHON_EXEC" -m dib.xxx) work from a checkout too
            env["PYTHONPATH"] = DIB_IMPORT_ROOT
        return env

    def context(self, name: str, root: Path,
                env: Optional[Mapping[str, str]] = None) -> PhaseContext:
        """Phase ``name`` on ``root``; ``env``: variables beyond the hook environment (the
        block device's, for the disk and final phases)."""
        phase = BY_NAME[name]
        return PhaseContext(phase, self.tree_hooks, self.phase_env(phase, root, env),
                            root=root if phase.in_chroot else None, logfile=self.logfile,
                            breaks=self.breaks)

    def runner(self, name: str, root: Path,
               env: Optional[Mapping[str, str]] = None) -> Runner:
        return Runner(self.context(name, root, env), self.timings)

    def run(self, name: str, root: Path, env: Optional[Mapping[str, str]] = None) -> None:
        """Run a whole phase (with its break points) on ``root``."""
        self.runner(name, root, env).run()

    def run_final(self, root: Path, env: Optional[Mapping[str, str]] = None) -> None:
        """The ``final`` stage's phases on ``root``, with its chroot mounts; ``env``: the
        block device's variables, on a disk."""
        with self.chroot(root):
            for phase in of_stage("final"):
                if self.has_work(phase.name):
                    self.run(phase.name, root, env)

    def has_work(self, name: str) -> bool:
        """Phase ``name`` has scripts, or a break point around it."""
        return bool(self.tree_hooks.scripts(name)) or self.breaks.around(BY_NAME[name])

    def install_extra_packages(self, root: Path) -> None:
        """``-p``: install-packages in the chroot, once, after install.d."""
        if not (root / "usr/local/bin/install-packages").exists():
            raise DibError("-p needs the install-packages command in the image",
                           hint="include an element that provides it (the dpkg element, "
                                "pulled in by the debian and ubuntu elements)")
        log.info("installing -p packages: %s", " ".join(self.cfg.packages))
        env = phase_environment(self.context("install.d", root))
        with self.timings.measure("phase", "-p packages"):
            cmd.run(chroot.chroot_argv(root, ["install-packages", *self.cfg.packages]), env=env)


def hook_environment(cfg: BuildConfig, res: resolver.Resolution, wd: Workdir,
                     catalogue: element.Catalogue,
                     disk_config: Optional[str] = None) -> Dict[str, str]:
    """What every hook sees (dib-contract §b), before environment.d adds its part.

    Also what diskimage-builder's own elements expect (:mod:`dib.dibcompat`): its shims
    (``sudo``, ``dib-block-device``) installed in the hooks tree and on PATH, a
    ``DIB_PYTHON_EXEC`` that imports diskimage_builder and ``_LIB``, and the block-device
    config's labels and mount points (``disk_config``, else dib's fallback config).
    """
    env = {k: v for k, v in cfg.env.items() if k not in DROPPED_ENV and "%%" not in k
           and not k.startswith(config.REMOTE_CACHE_PREFIX)}
    hookbin = dibcompat.install_hookbin(wd.hooks)
    paths = {n: os.fspath(res.elements[n].path) for n in res.order}
    elements = [(n, res.elements[n].path) for n in res.order]
    array = " ".join(f"[{n}]={p}" for n, p in paths.items())
    root_label = cfg.root_label or ("img-rootfs" if cfg.fs_type == "xfs" else "cloudimg-rootfs")
    env.update({
        "PATH": dibcompat.host_path(hookbin, f"{cmd.SAFE_PATH}:{wd.hooks}/bin"),
        "LANG": "C.UTF-8", "LC_ALL": "C",
        "ARCH": cfg.arch,
        "IMAGE_NAME": cfg.image_name,
        "IMAGE_ELEMENT": " ".join(res.order),
        "IMAGE_ELEMENT_YAML": yaml.safe_dump(paths, default_flow_style=False),
        "BASH_FUNC_get_image_element_array%%": f'() {{  echo "{array} "\n}}',
        # one directory of the elements that won (see dibcompat.winners_dir)
        "ELEMENTS_PATH": os.fspath(dibcompat.winners_dir(wd.base / "elements", elements)),
        "TMP_BUILD_DIR": os.fspath(wd.base),
        "TMP_IMAGE_DIR": os.fspath(wd.image),
        "TMP_HOOKS_PATH": os.fspath(wd.hooks),
        "TMP_MOUNT_PATH": os.fspath(wd.mnt),
        "DIB_IMAGE_CACHE": os.fspath(cfg.image_cache),
        "DIB_LOCKFILES": os.fspath(cfg.image_cache / "lockfiles"),
        "DIB_CHROOT_CACHE": "/" + chroot.CHROOT_CACHE,
        "DIB_OFFLINE": "1" if cfg.offline else "",
        "DIB_NO_CACHE": "1" if cfg.no_cache else "",
        "DIB_DEBUG_TRACE": str(cfg.trace),
        "DIB_ARGS": shlex.join(cfg.argv),
        "DIB_ENV": "".join(f"export {k}={shlex.quote(v)}\n"
                           for k, v in sorted(cfg.env.items()) if k.startswith("DIB_")
                           and not k.startswith(config.REMOTE_CACHE_PREFIX)),
        "DIB_ROOT_LABEL": root_label,
        "DIB_ROOT_FSTYPE": cfg.fs_type,
        "FS_TYPE": cfg.fs_type,
        "DIB_CHECKSUM": ",".join(cfg.checksums) or "0",
        "DIB_NO_TMPFS": "0" if cfg.use_tmpfs else "1",
        "DIB_MIN_TMPFS": f"{cfg.min_tmpfs_gib:g}",
        "DIB_DEFAULT_INSTALLTYPE": cfg.install_type,
    })
    env.update(dibcompat.hook_env(cfg.env, elements))
    params = blockdev.Params(image_dir=wd.image, mount_base=wd.mnt, root_fs_type=cfg.fs_type,
                             root_label=root_label, root_mkfs_opts=cfg.mkfs_options)
    env.update(dibcompat.block_device_env(
        wd.base, disk_config if disk_config is not None else blockdev.default_config_text(),
        params))
    return env


def finish_tree(root: Path) -> None:
    """What every image gets after cleanup.d: a resolv.conf.ORIG put in place (dib
    compatibility), no mount points of the build left behind."""
    chroot.restore_resolv_conf(root)
    for mountpoint in (chroot.IN_TARGET, chroot.CHROOT_CACHE):
        with contextlib.suppress(OSError):
            (root / mountpoint).rmdir()
