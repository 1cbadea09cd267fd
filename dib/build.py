"""The build orchestrator: reads top to bottom like the data flow in docs/architecture.md.

    resolve -> work dir -> hooks tree -> root.d (base layer) -> extra-data.d ->
    pre-install.d / install.d (+ -p packages) / post-install.d in the chroot -> post-root.d ->
    [block device] -> pre-finalise.d -> finalise.d -> cleanup.d -> outputs -> report

Every resource is entered on one ExitStack (or a ``with`` nested in it) right after it is
acquired; failure or a signal unwinds it, so nothing stays mounted or attached and no
partial file appears at the output path.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from dib import __version__, blockdev, chroot, cmd, element, hooks, interrupt, outputs
from dib import log as dlog
from dib import resolver
from dib.config import BuildConfig, ImageFormat, describe
from dib.blockdev.partition import PartitioningSpec
from dib.errors import ConfigError, DibError
from dib.phases import BY_NAME, Phase
from dib.runparts import PhaseContext, phase_environment, run_phase
from dib.tree import LayeredTree
from dib.workdir import Workdir, workdir

log = logging.getLogger("dib.build")

#: the caller's variables that never reach hooks
DROPPED_ENV = {"TMPDIR", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PATH", "LD_PRELOAD",
               "LD_LIBRARY_PATH", "PWD", "OLDPWD", "SHLVL", "_", "PS1", "PROMPT_COMMAND",
               "BASH_ENV", "ENV"}

#: phases whose steps run after the tree is complete, when there is no disk to build
FINAL_PHASES = ("pre-finalise.d", "finalise.d", "cleanup.d")
CHROOT_PHASES = ("extra-data.d", "pre-install.d", "install.d", "post-install.d", "post-root.d")


@dataclass
class BuildResult:
    outputs: List[Path]
    report: Path
    logfile: Path


@dataclass
class _Build:
    cfg: BuildConfig
    res: resolver.Resolution
    wd: Workdir
    tree_hooks: hooks.HooksTree
    env: Dict[str, str]
    logfile: Path
    timings: dlog.Timings
    outputs: List[Path] = field(default_factory=list)
    #: the disk has an EFI system partition (set by _build_disk)
    has_esp: bool = False

    @property
    def chroot_cache(self) -> Path:
        return self.cfg.image_cache / "chroot"

    @property
    def block_size(self) -> Optional[int]:
        value = self.cfg.env.get("DIB_BLOCK_SIZE", "").strip()
        if not value:
            return None
        if not value.isdigit():
            raise ConfigError(f"DIB_BLOCK_SIZE must be a number of bytes, not '{value}'")
        return int(value)

    def add_output(self, path: Path) -> None:
        self.outputs.append(path)
        self.outputs.extend(outputs.write_checksums(path, self.cfg.checksums))

    # -- phases ------------------------------------------------------------------------

    def phase_env(self, phase: Phase, root: Path) -> Dict[str, str]:
        env = dict(self.env)
        if phase.target_root:
            env["TARGET_ROOT"] = os.fspath(root)
        if phase.in_chroot:
            env["HOME"] = "/root"
        return env

    def context(self, name: str, root: Path) -> PhaseContext:
        phase = BY_NAME[name]
        return PhaseContext(phase, self.tree_hooks, self.phase_env(phase, root),
                            root=root if phase.in_chroot else None, logfile=self.logfile,
                            break_points=self.cfg.break_points)

    def run(self, name: str, root: Path) -> None:
        ctx = self.context(name, root)
        self.maybe_break(f"before-{ctx.phase.short}", ctx)
        with self.timings.measure("phase", name):
            run_phase(ctx, self.timings,
                      open_shell=lambda why: self.open_shell(why, ctx))
        self.maybe_break(f"after-{ctx.phase.short}", ctx)

    def has_work(self, name: str) -> bool:
        phase = BY_NAME[name]
        return bool(self.tree_hooks.scripts(name)) or any(
            p in self.cfg.break_points for p in (f"before-{phase.short}", f"after-{phase.short}"))

    # -- debugging -----------------------------------------------------------------------

    def maybe_break(self, point: str, ctx: PhaseContext) -> None:
        if point in self.cfg.break_points:
            self.open_shell(point, ctx)

    def open_shell(self, why: str, ctx: PhaseContext) -> None:
        inside = ctx.phase.in_chroot and not self.cfg.env.get("break_outside_target")
        shell = self.cfg.env.get("break_cmd") or "bash"
        log.warning("break (%s): starting %s %s; exit the shell to continue", why, shell,
                    f"in the chroot {ctx.root}" if inside else f"in {self.wd.base}")
        env = phase_environment(ctx)
        argv = shlex.split(shell)
        if inside:
            assert ctx.root is not None
            argv = chroot.chroot_argv(ctx.root, argv)
        cmd.run(argv, env=env, interactive=True, check=False,
                cwd=None if inside else self.wd.base)

    # -- steps -----------------------------------------------------------------------------

    def install_extra_packages(self, root: Path) -> None:
        if not self.cfg.packages:
            return
        if not (root / "usr/local/bin/install-packages").exists():
            raise DibError("-p needs the install-packages command in the image",
                           hint="include an element that provides it (the dpkg element, "
                                "pulled in by the debian and ubuntu elements)")
        log.info("installing -p packages: %s", " ".join(self.cfg.packages))
        env = phase_environment(self.context("install.d", root))
        with self.timings.measure("phase", "-p packages"):
            cmd.run(chroot.chroot_argv(root, ["install-packages", *self.cfg.packages]), env=env)


def _hook_environment(cfg: BuildConfig, res: resolver.Resolution, wd: Workdir,
                      catalogue: element.Catalogue) -> Dict[str, str]:
    """What every hook sees (dib-contract §b), before environment.d adds its part."""
    env = {k: v for k, v in cfg.env.items() if k not in DROPPED_ENV and "%%" not in k}
    paths = {n: os.fspath(res.elements[n].path) for n in res.order}
    array = " ".join(f"[{n}]={p}" for n, p in paths.items())
    root_label = cfg.root_label or ("img-rootfs" if cfg.fs_type == "xfs" else "cloudimg-rootfs")
    env.update({
        "PATH": f"{cmd.SAFE_PATH}:{wd.hooks}/bin",
        "LANG": "C.UTF-8", "LC_ALL": "C",
        "ARCH": cfg.arch,
        "IMAGE_NAME": cfg.image_name,
        "IMAGE_ELEMENT": " ".join(res.order),
        "IMAGE_ELEMENT_YAML": yaml.safe_dump(paths, default_flow_style=False),
        "BASH_FUNC_get_image_element_array%%": f'() {{  echo "{array}"\n}}',
        "ELEMENTS_PATH": ":".join(os.fspath(p) for p in catalogue.search_path),
        "TMP_BUILD_DIR": os.fspath(wd.base),
        "TMP_IMAGE_DIR": os.fspath(wd.image),
        "TMP_HOOKS_PATH": os.fspath(wd.hooks),
        "TMP_MOUNT_PATH": os.fspath(wd.mnt),
        "DIB_IMAGE_CACHE": os.fspath(cfg.image_cache),
        "DIB_LOCKFILES": os.fspath(cfg.image_cache / "lockfiles"),
        "DIB_CHROOT_CACHE": "/" + chroot.CHROOT_CACHE,
        "DIB_OFFLINE": "1" if cfg.offline else "",
        "DIB_DEBUG_TRACE": str(cfg.trace),
        "DIB_PYTHON_EXEC": sys.executable,
        "DIB_ARGS": shlex.join(cfg.argv),
        "DIB_ENV": "".join(f"export {k}={shlex.quote(v)}\n"
                           for k, v in sorted(cfg.env.items()) if k.startswith("DIB_")),
        "DIB_ROOT_LABEL": root_label,
        "DIB_ROOT_FSTYPE": cfg.fs_type,
        "FS_TYPE": cfg.fs_type,
        "DIB_CHECKSUM": ",".join(cfg.checksums) or "0",
        "DIB_NO_TMPFS": "0" if cfg.use_tmpfs else "1",
        "DIB_MIN_TMPFS": f"{cfg.min_tmpfs_gib:g}",
        "DIB_DEFAULT_INSTALLTYPE": cfg.install_type,
    })
    return env


def _check_host(cfg: BuildConfig) -> None:
    if os.geteuid() != 0:
        raise DibError("disk-image-create needs root: it mounts, chroots and attaches loop "
                       "devices", hint="run it with sudo")
    cmd.require_tools("mount", "umount", "chroot", "tar", "bash",
                      package_hint={"chroot": "coreutils", "mount": "mount"})
    if cfg.break_points and not sys.stdin.isatty():
        raise ConfigError(f"break={','.join(cfg.break_points)} opens a debug shell, "
                          "but standard input is not a terminal",
                          hint="run the build from an interactive terminal, or unset break")


def _not_empty(root: Path) -> bool:
    return any(p.name not in ("lost+found", "tmp", "proc", "sys", "dev") for p in root.iterdir())


def _finish_tree(root: Path) -> None:
    """What every image gets after cleanup.d: its own resolv.conf back, no hook mount point."""
    chroot.restore_resolv_conf(root)
    for mountpoint in (chroot.IN_TARGET, chroot.CHROOT_CACHE):
        with contextlib.suppress(OSError):
            (root / mountpoint).rmdir()


def _run_steps(b: _Build, tree: LayeredTree) -> None:
    """root.d through post-root.d."""
    with tree.base() as mnt:
        b.run("root.d", mnt)
        if not _not_empty(mnt):
            raise DibError("root.d left the tree empty: no element created the root filesystem",
                           hint="the operating-system element's root.d must populate "
                                "$TARGET_ROOT")
        chroot.install_host_resolv_conf(mnt)
    for name in CHROOT_PHASES:
        extra = name == "install.d" and b.cfg.packages
        if not (b.has_work(name) or extra):
            continue
        with tree.step(name) as mnt, chroot.chroot_mounts(mnt, b.wd.hooks, b.chroot_cache):
            b.run(name, mnt)
            if extra:
                b.install_extra_packages(mnt)


def _finalise_tree_only(b: _Build, tree: LayeredTree) -> None:
    """No disk output: the final phases run on the tree itself (no block device)."""
    if b.tree_hooks.scripts("block-device.d"):
        log.info("no disk output requested: block-device.d skipped")
    for name in FINAL_PHASES:
        if b.has_work(name):
            with tree.step(name) as mnt, chroot.chroot_mounts(mnt, b.wd.hooks, b.chroot_cache):
                b.run(name, mnt)
    with tree.step("finish") as mnt:
        _finish_tree(mnt)


def _write_archives(b: _Build, tree: Path) -> None:
    """tar/tgz outputs of ``tree``, which must have nothing but the image mounted below it."""
    for fmt in (f for f in b.cfg.formats if not f.is_disk):
        dest = b.cfg.output_path(fmt)
        log.info("writing %s", dest)
        with b.timings.measure("output", fmt.value), \
                outputs.atomic_output(dest, b.cfg.overwrite) as tmp:
            outputs.write_tar(tree, tmp, gzip=fmt is ImageFormat.TGZ)
        b.add_output(dest)


# -- disk images -------------------------------------------------------------------------------

def _block_device_config_text(cfg: BuildConfig, res: resolver.Resolution) -> str:
    """DIB_BLOCK_DEVICE_CONFIG (inline or file://), else the first element (in resolution
    order) with block-device-<ARCH>.yaml or block-device-default.yaml, else dib's fallback:
    one filesystem with no partition table."""
    value = cfg.env.get("DIB_BLOCK_DEVICE_CONFIG", "").strip()
    if value.startswith("file://"):
        path = Path(value[len("file://"):])
        try:
            return path.read_text()
        except OSError as exc:
            raise ConfigError(f"DIB_BLOCK_DEVICE_CONFIG: cannot read {path}: {exc.strerror}")
    if value:
        return value
    arch = "ppc64el" if cfg.arch in ("ppc64le", "ppc64el") else cfg.arch
    for name in (f"block-device-{arch}.yaml", "block-device-default.yaml"):
        for e in res.ordered():
            if (e.path / name).is_file():
                log.info("block-device config: %s from element %s", name, e.name)
                return (e.path / name).read_text()
    return blockdev.default_config_text()


def _tree_bytes(tree: Path) -> int:
    """Disk usage of the tree (du -sx, bytes)."""
    return int(cmd.output(["du", "-sx", "--block-size=1", tree]).split()[0])


#: partition types of an EFI system partition (sgdisk code, GPT GUID, MBR type)
ESP_TYPES = {"EF00", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "0XEF", "EF"}

#: filesystem overhead beyond the files themselves: metadata, journal, reserved blocks
FS_OVERHEAD = 0.12
FS_FIXED = 96 << 20


def image_size(cfg: BuildConfig, tree_bytes: int, config: "blockdev.Config") -> int:
    """Bytes for the disk: ``--image-size``, else the tree plus a measured margin (12 %% and
    96 MiB for metadata and journal, where dib divides by 0.6) plus every fixed-size
    partition, plus ``DIB_IMAGE_EXTRA_SIZE``; rounded up to a whole MiB."""
    if cfg.image_size_gib is not None:
        return int(cfg.image_size_gib * (1 << 30)) // (1 << 20) * (1 << 20)
    fixed = sum(p.size for spec in config.ordered() if isinstance(spec, PartitioningSpec)
                for p in spec.partitions if isinstance(p.size, int))
    tables = 4 << 20  # alignment gaps, GPT headers
    extra = (cfg.image_extra_size_mib or 0) << 20
    size = int(tree_bytes * (1 + FS_OVERHEAD)) + FS_FIXED + fixed + tables + extra
    mib = 1 << 20
    return (size + mib - 1) // mib * mib


def _build_disk(b: _Build, tree: LayeredTree, config_text: str) -> None:
    """Lay the tree onto the block device, run the final phases there, write the outputs."""
    cfg, wd = b.cfg, b.wd
    root_label = b.env["DIB_ROOT_LABEL"]
    with tree.view(wd.built) as view, contextlib.ExitStack() as disk:
        with b.timings.measure("phase", "(size tree)"):
            tree_bytes = _tree_bytes(view)
        probe = blockdev.Params(image_dir=wd.image, mount_base=wd.mnt, image_size=None,
                                root_fs_type=cfg.fs_type, root_label=root_label,
                                root_mkfs_opts=cfg.mkfs_options, block_size=b.block_size,
                                uuid_seed=Path(cfg.image_name).name)
        config = blockdev.load_config(config_text, probe)
        size = image_size(cfg, tree_bytes, config)
        params = blockdev.Params(**{**probe.__dict__, "image_size": size})
        config = blockdev.load_config(config_text, params)
        b.has_esp = any(str(p.type).upper() in ESP_TYPES for spec in config.ordered()
                        if isinstance(spec, PartitioningSpec) for p in spec.partitions)
        log.info("disk: %d MiB for a %d MiB tree", size >> 20, tree_bytes >> 20)
        with b.timings.measure("phase", "(block device)"):
            state = blockdev.BlockDevice(config, params).create(disk)
        with b.timings.measure("phase", "(copy tree)"):
            cmd.run(["cp", "-a", "--sparse=always", f"{view}/.", f"{wd.mnt}/"])
        (wd.mnt / "etc").mkdir(exist_ok=True)
        (wd.mnt / "etc" / "fstab").write_text(state.fstab())
        b.env.update({
            "IMAGE_BLOCK_DEVICE": state.image_block_device,
            "IMAGE_BLOCK_DEVICES": " ".join(f"[{k}]={v}"
                                            for k, v in state.image_block_devices.items()),
            "DIB_ROOT_LABEL": state.root_label or root_label,
            "DIB_ROOT_FSTYPE": state.root_fstype or cfg.fs_type,
            "DIB_IMAGE_SIZE": str(size),
        })
        if b.has_work("block-device.d"):
            b.run("block-device.d", wd.mnt)
        with chroot.chroot_mounts(wd.mnt, wd.hooks, b.chroot_cache):
            for name in FINAL_PHASES:
                if b.has_work(name):
                    b.run(name, wd.mnt)
        _finish_tree(wd.mnt)
        _write_archives(b, wd.mnt)
        raw = state.image_files[config.loops[0].name]
    # the disk stack has unmounted, written the ESP and detached: the raw file is complete
    _convert_disks(b, raw)


def _convert_disks(b: _Build, raw: Path) -> None:
    disks = [f for f in b.cfg.formats if f.is_disk]
    # raw last: it can take the file itself when nothing else needs it any more
    for fmt in sorted(disks, key=lambda f: f is ImageFormat.RAW):
        dest = b.cfg.output_path(fmt)
        log.info("writing %s", dest)
        with b.timings.measure("output", fmt.value), \
                outputs.atomic_output(dest, b.cfg.overwrite) as tmp:
            if fmt is ImageFormat.RAW:
                cmd.run(["cp", "--sparse=always", raw, tmp])
            else:
                cmd.run(outputs.qemu_img_convert_argv(
                    raw, fmt.value, tmp, compress=b.cfg.compress,
                    options=b.cfg.qemu_img_options,
                    compression_type=b.cfg.env.get("DIB_QCOW2_COMPRESSION_TYPE")
                    or outputs.DEFAULT_COMPRESSION_TYPE))
        b.add_output(dest)


def build_image(cfg: BuildConfig) -> BuildResult:
    """Build the image ``cfg`` describes. Raises DibError on anything the user can fix."""
    catalogue = element.discover(element.search_path(cfg.elements_path))
    names = resolver.implicit_elements(cfg.elements, skip_base=cfg.skip_base, arch=cfg.arch)
    res = resolver.resolve(names, catalogue)
    _check_host(cfg)
    disk_config = _block_device_config_text(cfg, res) if cfg.needs_block_device else None

    cfg.report_dir.mkdir(parents=True, exist_ok=True)
    logfile = cfg.logfile or cfg.report_dir / "build.log"
    report_path = cfg.report_dir / "build-report.json"
    timings = dlog.Timings()
    started = time.time()
    status, error = "failed", None
    b: Optional[_Build] = None
    with dlog.logfile(logfile), interrupt.signals_raise() as guard:
        log.info("dib %s: %s", __version__, describe(cfg))
        log.info("elements: %s", " ".join(res.order))
        log.info("log file: %s", logfile)
        stack = contextlib.ExitStack()
        try:
            with timings.measure("build", "total"):
                wd = stack.enter_context(workdir(cfg.tmp_dir, use_tmpfs=cfg.use_tmpfs,
                                                 min_tmpfs_gib=cfg.min_tmpfs_gib,
                                                 keep=cfg.keep_workdir))
                b = _Build(cfg, res, wd, hooks.assemble(res, wd.hooks),
                           _hook_environment(cfg, res, wd, catalogue), logfile, timings)
                tree = LayeredTree(wd.layers, wd.mnt)
                _run_steps(b, tree)
                if disk_config is None:
                    _finalise_tree_only(b, tree)
                    with tree.view(wd.built) as view:
                        _write_archives(b, view)
                else:
                    _build_disk(b, tree, disk_config)
            status = "ok"
        except DibError as exc:
            error = str(exc)
            raise
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            with guard.unwinding():
                stack.close()
            if status == "ok":
                log.info("where the time went:\n%s", timings.table())
            _write_report(report_path, cfg, res, timings, b.outputs if b else [], status,
                          error, logfile, time.time() - started)
        log.info("build completed successfully")
        if cfg.boot_test:
            _boot_test(cfg, uefi=bool(b and b.has_esp), timings=timings)
    return BuildResult(b.outputs if b else [], report_path, logfile)


def _boot_test(cfg: BuildConfig, *, uefi: bool, timings: dlog.Timings) -> None:
    """Boot the first disk output (under UEFI when the disk has an ESP, unless
    DIB_BOOT_TEST_FIRMWARE=bios); raise DibError unless the console shows the pattern(s)."""
    from dib import boottest

    fmt = next(f for f in cfg.formats if f.is_disk)
    image = cfg.output_path(fmt)
    expect = [cfg.env["DIB_BOOT_TEST_EXPECT"]] if cfg.env.get("DIB_BOOT_TEST_EXPECT") \
        else list(boottest.DEFAULT_EXPECT)
    uefi = uefi and cfg.env.get("DIB_BOOT_TEST_FIRMWARE") != "bios"
    workdir = cfg.report_dir / "boot-test"
    with timings.measure("phase", "(boot test)"):
        result = boottest.boot(image, workdir, image_format=fmt.value, uefi=uefi, expect=expect,
                               timeout=float(cfg.env.get("DIB_BOOT_TEST_TIMEOUT", "300")))
    if not result.passed:
        tail = "\n".join(result.serial_text().replace("\r", "").splitlines()[-15:])
        raise DibError(f"boot test failed: {result.failure} ({'UEFI' if uefi else 'BIOS'}, "
                       f"{result.accel}, {result.seconds:.0f} s)\nlast console lines:\n{tail}",
                       hint=f"the image is {image}; the whole console log is "
                            f"{result.serial_log}")
    log.info("boot test passed: %s after %.0f s (%s, %s)", ", ".join(result.seen),
             result.seconds, "UEFI" if uefi else "BIOS", result.accel)


def _write_report(path: Path, cfg: BuildConfig, res: resolver.Resolution,
                  timings: dlog.Timings, outs: List[Path], status: str,
                  error: Optional[str], logfile: Path, seconds: float) -> None:
    report = {
        "dib_version": __version__,
        "status": status,
        "error": error,
        "argv": list(cfg.argv),
        "elements": list(res.order),
        "requested": list(cfg.elements),
        "arch": cfg.arch,
        "seconds": round(seconds, 3),
        "phases": [{"phase": n, "seconds": round(s, 3)} for n, s, _ in timings.of("phase")],
        "scripts": [{"script": n, "element": x.get("element"), "seconds": round(s, 3)}
                    for n, s, x in timings.of("script")],
        "outputs": [{"path": os.fspath(p), "bytes": p.stat().st_size}
                    for p in outs if p.exists()],
        "log": os.fspath(logfile),
    }
    path.write_text(json.dumps(report, indent=2) + "\n")
