"""The build orchestrator: reads top to bottom like the data flow in docs/architecture.md.

    resolve -> work dir -> hooks tree -> tree steps (root.d ... post-root.d, each a cached
    overlay layer: dib.steps) -> [finished image cached? copy it out] -> disk (dib.disk) or
    final phases on the tree -> outputs -> report -> [boot test]

Every resource is entered on one ExitStack (or a ``with`` nested in it) right after it is
acquired; failure or a signal unwinds it, so nothing stays mounted or attached and no
partial file appears at the output path.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, FrozenSet, List, Optional, cast

from dib import (
    __version__,
    chroot,
    cmd,
    config,
    disk,
    element,
    hooks,
    interrupt,
    layers,
    outputs,
    reproducible,
    resolver,
    steps,
)
from dib import log as dlog
from dib.beside import Beside, RunInSequence
from dib.cache import ArtifactCache
from dib.config import BuildConfig, describe
from dib.context import BuildContext, hook_environment
from dib.errors import ConfigError, DibError
from dib.layers import LayerStore
from dib.tree import LayeredTree
from dib.workdir import workdir

if TYPE_CHECKING:
    from dib.boottest import BootResult
    from dib.remote.cache import RemoteCache

log = logging.getLogger("dib.build")


@dataclass
class BuildResult:
    outputs: List[Path]
    report: Path
    logfile: Path


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



def _with_epoch(cfg: BuildConfig, res: resolver.Resolution) -> BuildConfig:
    """``--reproducible`` without SOURCE_DATE_EPOCH: the epoch taken from the newest input,
    and given to the hooks as SOURCE_DATE_EPOCH (docs/reproducibility.md)."""
    if cfg.source_date_epoch is not None or not cfg.reproducible:
        return cfg
    epoch, origin = reproducible.derive_epoch(res.elements[n].path for n in res.order)
    return dataclasses.replace(cfg, source_date_epoch=epoch, source_date_epoch_origin=origin,
                               env={**cfg.env, "SOURCE_DATE_EPOCH": str(epoch)})


def _disk_seed(b: BuildContext, tree_key: str) -> str:
    """What seeds the disk's UUIDs unless DIB_UUID_SEED is set: the tree's key; in a
    reproducible build a key of the inputs alone (the tree's key also depends on which
    layers came from the cache, so a cached and a --no-cache build would differ)."""
    cfg = b.cfg
    if cfg.source_date_epoch is None:
        return tree_key
    return layers.step_key({
        "epoch": cfg.source_date_epoch,
        "build": layers.build_inputs(cfg.arch, cfg.env, cfg.packages),
        "elements": {e.name: layers.tree_digest(e.path, skip_top=steps.NOT_INPUTS)
                     for e in b.res.ordered()}})


def _image_inputs(b: BuildContext, tree_key: str, disk_config: Optional[str]) -> Dict[str, Any]:
    """Everything besides the tree that makes the finished outputs what they are."""
    cfg = b.cfg
    return {"tree": tree_key, "final_scripts": steps.final_scripts_digest(b),
            "block_device": disk_config, "formats": [f.value for f in cfg.formats],
            "compress": cfg.compress, "qemu_img_options": cfg.qemu_img_options,
            "compression_type": cfg.qcow2_compression_type,
            "size": [cfg.image_size_gib, cfg.image_extra_size_mib], "fs_type": cfg.fs_type,
            "root_label": cfg.root_label, "mkfs_options": cfg.root_mkfs_options,
            "block_size": cfg.block_size, "seed": cfg.uuid_seed,
            **({"epoch": cfg.source_date_epoch} if cfg.source_date_epoch is not None else {}),
            **({"artifacts": extra} if (extra := outputs.cache_inputs(cfg)) else {})}


def _build(b: BuildContext, run: outputs.Run, disk_config: Optional[str],
           sequential: FrozenSet[str]) -> None:
    tree = LayeredTree(b.store.dir, b.wd.mnt)
    with Beside(b, tree, sequential) as beside:
        _build_tree(b, run, disk_config, tree, beside)


def _build_tree(b: BuildContext, run: outputs.Run, disk_config: Optional[str],
                tree: LayeredTree, beside: Beside) -> None:
    tree_key = b.record.tree_key = steps.run_tree_steps(b, tree, beside)
    # the apt Release files the packages came from (cleanup.d removes the lists)
    with tree.view(b.wd.built) as view:
        run.facts.releases = reproducible.release_files(view)
    images = ArtifactCache(b.cfg.image_cache, "images") if b.store.enabled else None
    inputs = _image_inputs(b, tree_key, disk_config)
    key = layers.step_key(inputs)
    if images is not None and outputs.restore(run, images, key):
        b.record.has_esp = run.has_esp
        return
    entries = outputs.cache_entries(b.cfg, key)
    share = b.remote if b.cfg.remote_cache_images else None
    if images is not None and share is not None and \
            share.fetch_images(images, entries) and outputs.restore(run, images, key):
        b.record.has_esp = run.has_esp
        return
    if disk_config is None:
        steps.finalise_tree_only(b, tree)
        with tree.view(b.wd.built) as view:
            outputs.write_tree(run, view)
    else:
        # the tree outputs are written from the finished disk's mounted root filesystem
        result = disk.build_disk(b, tree, disk_config, _disk_seed(b, tree_key),
                                 tree_outputs=lambda root: outputs.write_tree(run, root),
                                 beside=beside)
        b.record.has_esp = run.has_esp = result.has_esp
        outputs.write_disk(run, result.raw)
    if images is not None:
        with b.timings.measure("phase", "(cache image)"):
            outputs.store(run, images, key, inputs)
        if share is not None:
            share.push_images(images, entries)


def build_image(cfg: BuildConfig) -> BuildResult:
    """Build the image ``cfg`` describes. Raises DibError on anything the user can fix."""
    config.preflight(cfg)
    catalogue = element.discover(element.search_path(cfg.elements_path))
    names = resolver.implicit_elements(cfg.elements, skip_base=cfg.skip_base, arch=cfg.arch)
    res = resolver.resolve(names, catalogue)
    cfg = _with_epoch(cfg, res)
    outputs.check(cfg)
    _check_host(cfg)
    disk_config = disk.block_device_config_text(cfg, res) if cfg.needs_block_device else None
    if disk_config is not None:
        disk.check_block_device_config(cfg, disk_config)

    cfg.report_dir.mkdir(parents=True, exist_ok=True)
    logfile = cfg.logfile or cfg.report_dir / "build.log"
    report_path = cfg.report_dir / "build-report.json"
    timings = dlog.Timings()
    started = time.time()
    status, error = "failed", None
    b: Optional[BuildContext] = None
    run: Optional[outputs.Run] = None
    dlog.build_started(report_path)  # the status line's estimate: the last build's report
    with dlog.logfile(logfile), interrupt.signals_raise() as guard:
        log.info("dib %s: %s", __version__, describe(cfg))
        log.info("elements: %s", " ".join(res.order))
        if cfg.source_date_epoch is not None:
            log.info("reproducible build: SOURCE_DATE_EPOCH=%d (%s, from %s)",
                     cfg.source_date_epoch, time.strftime(
                         "%Y-%m-%d %H:%M:%S UTC", time.gmtime(cfg.source_date_epoch)),
                     cfg.source_date_epoch_origin)
            if cfg.source_date_epoch > time.time():
                log.warning("SOURCE_DATE_EPOCH is in the future: what the build makes now "
                            "keeps its own times, so the outputs are not reproducible")
        log.info("log file: %s", logfile)
        _prune_cache(cfg, check_room=True)
        stack = contextlib.ExitStack()
        try:
            with timings.measure("build", "total"):
                wd = stack.enter_context(workdir(cfg.tmp_dir, use_tmpfs=cfg.use_tmpfs,
                                                 min_tmpfs_gib=cfg.min_tmpfs_gib,
                                                 keep=cfg.keep_workdir))
                use_cache = not (cfg.no_cache or cfg.break_points)
                store = LayerStore(cfg.image_cache, wd.layers, enabled=use_cache)
                stack.callback(store.close)
                b = BuildContext(cfg, res, wd, hooks.assemble(res, wd.hooks),
                                 hook_environment(cfg, res, wd, catalogue, disk_config),
                                 logfile, timings,
                                 store, chroot.host_resolv_copy(wd.base / "resolv.conf"),
                                 remote=_remote_cache(cfg, store, timings, stack))
                run = outputs.Run(cfg, timings, tuple(res.order), written=b.outputs)
                sequential: FrozenSet[str] = frozenset()
                while True:
                    try:
                        _build(b, run, disk_config, sequential)
                        break
                    except RunInSequence as again:  # once per step at most
                        sequential |= {again.step}
                        b.steps.clear()
            status = "ok"
        except DibError as exc:
            error = str(exc)
            if NO_SPACE in error:
                exc.hint = "; ".join(filter(None, [
                    _space_report(cfg, b.wd.base if b is not None else None), exc.hint]))
            raise
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            with guard.unwinding():
                stack.close()
            if status == "ok":
                log.info("where the time went:\n%s", timings.table())
            _write_report(report_path, cfg, res, timings, b, status, error, logfile,
                          time.time() - started)
        _prune_cache(cfg)
        hits = sum(1 for s in b.steps if s.hit)
        pulled = sum(1 for s in b.steps if s.remote == "hit")
        log.info("build completed successfully (%d of %d steps from the cache%s)", hits,
                 len(b.steps), f", {pulled} of them pulled from the remote cache"
                 if b.remote is not None else "")
        assert run is not None
        outputs.finish(run, outputs.BuildSummary(
            elements={n: res.elements[n].path for n in res.order},
            steps=[(s.label, s.hit, s.seconds) for s in b.steps],
            cache_enabled=b.store.enabled, tree_key=b.tree_key,
            seconds=time.time() - started))
        if cfg.boot_test:
            _boot_test(cfg, uefi=b.has_esp, timings=timings, report_path=report_path)
    return BuildResult(b.outputs, report_path, logfile)


def _remote_cache(cfg: BuildConfig, store: LayerStore, timings: dlog.Timings,
                  stack: contextlib.ExitStack) -> Optional["RemoteCache"]:
    """--remote-cache, when set and the layer cache is on (imported only then); in a farm
    worker's build (DIB_FARM_LAYER_LOCKS), with its misses built once in the farm."""
    if cfg.remote_cache is None:
        return None
    if not store.enabled:
        log.info("remote cache %s not used: the layer cache is off (--no-cache or break=)",
                 cfg.remote_cache)
        return None
    from dib.remote.cache import open_remote

    remote = open_remote(cfg.remote_cache, store, arch=cfg.arch,
                         strict=cfg.remote_cache_strict, caller_env=cfg.env,
                         credentials=cfg.remote_cache_credentials, timings=timings)
    if cfg.farm_layer_locks is None:
        return remote
    from dib.farmlock import LockedRemote  # docs/farm.md: imports Dask

    locked = LockedRemote(remote, cfg.farm_layer_locks)
    stack.callback(locked.close)
    return cast("RemoteCache", locked)


#: what a process prints when a write fails with ENOSPC
NO_SPACE = "No space left on device"


def _space_report(cfg: BuildConfig, workdir: Optional[Path]) -> str:
    """Free space on each filesystem the build writes to, for the hint of an ENOSPC error."""
    from dib import cache

    places = [("the work directory", workdir), ("the image cache", cfg.image_cache),
              ("TMP_DIR", cfg.tmp_dir), ("the output directory", cfg.report_dir.parent)]
    seen, parts = set(), []
    for what, path in places:
        if path is None:
            continue
        try:
            probe = cache.existing_parent(path)
            dev = probe.stat().st_dev
        except OSError:
            continue
        if dev in seen:
            continue
        seen.add(dev)
        parts.append((cache.free_space(probe), f"{what} {path}"))
    room = ", ".join(f"{where}: {free / (1 << 20):.0f} MiB" for free, where in sorted(parts))
    return ("a filesystem ran out of space. Free now (the failed step's files are gone), "
            f"smallest first: {room}. Make room (dib-cache prune --max-size ...) or point "
            "TMP_DIR / DIB_IMAGE_CACHE at a larger filesystem")


def _prune_cache(cfg: BuildConfig, *, check_room: bool = False) -> None:
    """Keep the cache within DIB_CACHE_MAX_SIZE and its filesystem at DIB_CACHE_MIN_FREE free
    (dropping least recently used entries); with ``check_room``, warn when TMP_DIR is short
    of that much room."""
    from dib import cache

    dropped = cache.prune_lru(cfg.image_cache, cfg.cache_max_bytes,
                              min_free=cfg.cache_min_free_bytes)
    if dropped:
        log.info("cache: dropped %d least recently used entries (%.0f MiB) to stay within "
                 "DIB_CACHE_MAX_SIZE (%.1f GiB) and keep DIB_CACHE_MIN_FREE (%.1f GiB) free",
                 len(dropped), sum(e.size for e in dropped) / (1 << 20),
                 cfg.cache_max_bytes / (1 << 30), cfg.cache_min_free_bytes / (1 << 30))
    if check_room:
        free = cache.free_space(cfg.tmp_dir)
        if free < cfg.cache_min_free_bytes:
            log.warning("only %.1f GiB free under %s (TMP_DIR); the build may run out of "
                        "space", free / (1 << 30), cfg.tmp_dir)


def _boot_test(cfg: BuildConfig, *, uefi: bool, timings: dlog.Timings,
               report_path: Path) -> None:
    """Boot the first disk output (under UEFI when the disk has an ESP, unless
    DIB_BOOT_TEST_FIRMWARE=bios); record the result in the report; raise DibError unless the
    console shows the pattern(s)."""
    from dib import boottest

    fmt = next(f for f in cfg.formats if f.is_qemu_disk)
    image = cfg.output_path(fmt)
    uefi = {"bios": False, "uefi": True}.get(cfg.boot_test_firmware, uefi)
    firmware = "UEFI" if uefi else "BIOS"
    expect = [cfg.boot_test_expect] if cfg.boot_test_expect else list(boottest.DEFAULT_EXPECT)
    accel = None if cfg.boot_test_accel == "auto" else cfg.boot_test_accel
    workdir = cfg.report_dir / "boot-test"
    with timings.measure("phase", "(boot test)"):
        result = boottest.boot(image, workdir, image_format=fmt.value, uefi=uefi,
                               expect=expect, timeout=cfg.boot_test_timeout,
                               accel=accel, accel_source="DIB_BOOT_TEST_ACCEL",
                               stall_seconds=cfg.boot_test_stall)
    record_boot_test(report_path, result, firmware)
    how = f"{firmware}, {result.accel}: {result.accel_reason}"
    if result.kvm_stall:
        how += f" -- {result.kvm_stall}"
    if not result.passed:
        tail = "\n".join(result.serial_text().replace("\r", "").splitlines()[-15:])
        if not tail.strip():
            tail = ("(nothing: neither a bootloader nor a kernel wrote to the serial console, so "
                    "the disk did not boot -- no boot code or EFI loader on it, or GRUB stopped "
                    "at its rescue prompt, which only the screen shows; is a bootloader "
                    "installed, e.g. by the vm element?)")
        raise DibError(f"boot test failed: {result.failure} ({how}; {result.seconds:.0f} s)\n"
                       f"last console lines:\n{tail}",
                       hint=f"the image is {image}; the whole console log is "
                            f"{result.serial_log}")
    log.info("boot test passed: %s after %.0f s (%s)", ", ".join(result.seen),
             result.seconds, how)


def record_boot_test(report_path: Path, result: "BootResult", firmware: str) -> None:
    """Add the boot test's outcome to the build report (written before the boot test)."""
    report = json.loads(report_path.read_text())
    report["boot_test"] = {
        "passed": result.passed,
        "failure": result.failure,
        "seconds": result.seconds,
        "firmware": firmware,
        "accel": result.accel,
        "accel_reason": result.accel_reason,
        "kvm_stall": result.kvm_stall,
        "seen": result.seen,
        "serial_log": os.fspath(result.serial_log),
        "kvm_serial_log": os.fspath(result.kvm_serial_log) if result.kvm_serial_log else None,
    }
    report_path.write_text(json.dumps(report, indent=2) + "\n")


def _write_report(path: Path, cfg: BuildConfig, res: resolver.Resolution,
                  timings: dlog.Timings, b: Optional[BuildContext], status: str,
                  error: Optional[str], logfile: Path, seconds: float) -> None:
    outs = b.outputs if b else []
    report = {
        "dib_version": __version__,
        "status": status,
        "error": error,
        "argv": list(cfg.argv),
        "elements": list(res.order),
        "requested": list(cfg.elements),
        "arch": cfg.arch,
        "seconds": round(seconds, 3),
        "phases": [{"phase": n, "seconds": round(s, 3)} for n, s in timings.totals("phase")],
        "scripts": [{"script": n, "element": x.get("element"), "seconds": round(s, 3)}
                    for n, s, x in timings.of("script")],
        "steps": [{"step": s.label, "key": s.key, "cached": s.hit, "seconds": s.seconds,
                   "changed": list(s.changed), **({"remote": s.remote} if s.remote else {})}
                  for s in (b.steps if b else [])],
        **({"remote_cache": b.remote.report()} if b is not None and b.remote else {}),
        "outputs": [{"path": os.fspath(p), "bytes": p.stat().st_size}
                    for p in outs if p.exists()],
        "log": os.fspath(logfile),
    }
    path.write_text(json.dumps(report, indent=2) + "\n")
