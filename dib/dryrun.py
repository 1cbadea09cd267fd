"""``disk-image-create --dry-run``: what a build would do, without building.

Everything the build decides before its first command is decided here the same way -- the
element set with the implicit ones, the checks of the configuration, the output directory
and the other places it writes -- and printed instead of acted on. Needs no root and mounts
nothing; the only thing it makes is config.preflight's probe directory, removed at once.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional, Tuple

from dib import config, element, mirror, resolver, workdir
from dib.config import BuildConfig, ImageFormat
from dib.outputs import check as check_outputs


def _element_default(res: resolver.Resolution, variable: str) -> Tuple[Optional[str], str]:
    """The value an element's environment.d gives ``variable`` (``export V=x`` or
    ``${V:-x}``), and which element: the last one in resolution order wins, as when sourced."""
    found: Tuple[Optional[str], str] = (None, "")
    pattern = re.compile(rf"export {variable}=(?:\$\{{{variable}:-([^}}]+)\}}|([\w.-]+))")
    for e in res.ordered():
        for path in e.environment_files():
            try:
                m = pattern.search(Path(path).read_text(errors="replace"))
            except OSError:
                continue
            if m:
                found = (m.group(1) or m.group(2), e.name)
    return found


def _from_env_or_elements(cfg: BuildConfig, res: resolver.Resolution,
                          variable: str) -> Tuple[Optional[str], str]:
    # a hook variable (not a dib setting): the elements read it from the hook environment
    given = cfg.env.get(variable, "").strip()
    if given:
        return given, variable
    value, owner = _element_default(res, variable)
    return value, f"default of element {owner}" if value else "not set"


def _block_device_source(cfg: BuildConfig, res: resolver.Resolution) -> str:
    if cfg.block_device_config is not None:
        return "DIB_BLOCK_DEVICE_CONFIG"
    arch = "ppc64el" if cfg.arch in ("ppc64le", "ppc64el") else cfg.arch
    for name in (f"block-device-{arch}.yaml", "block-device-default.yaml"):
        for e in res.ordered():
            if (e.path / name).is_file():
                return f"{name} of element {e.name}"
    return "dib's default (one filesystem, no partition table)"


def plan(cfg: BuildConfig) -> List[str]:
    """The resolved build, one line per item (raises DibError as the build would)."""
    config.preflight(cfg)
    catalogue = element.discover(element.search_path(cfg.elements_path))
    names = resolver.implicit_elements(cfg.elements, skip_base=cfg.skip_base, arch=cfg.arch)
    res = resolver.resolve(names, catalogue)
    check_outputs(cfg)

    added = [n for n in names if n not in cfg.elements]
    lines = [f"requested elements: {' '.join(cfg.elements)}",
             f"added: {' '.join(added) if added else '(none)'}",
             f"elements (resolved, in order): {' '.join(res.order)}",
             f"architecture: {cfg.arch}"]
    distro, distro_from = _from_env_or_elements(cfg, res, "DISTRO_NAME")
    release, release_from = _from_env_or_elements(cfg, res, "DIB_RELEASE")
    lines.append(f"distribution: {distro or '(none)'} ({distro_from})")
    lines.append(f"release: {release or '(none)'} ({release_from})")
    if distro:
        choice = mirror.select_mirrors(distro, cfg.env, mirror.host_os_id(),
                                       mirror.host_entries())
        lines.append(f"mirror: {choice.mirror or '(the bootstrap tool default)'} "
                     f"({choice.mirror_origin})")
        if choice.security or distro == mirror.DEBIAN:
            lines.append(f"security mirror: {choice.security or '(none)'} "
                         f"({choice.security_origin})")
    outputs = [os.fspath(cfg.output_path(f)) for f in cfg.formats]
    for f in cfg.formats:
        if cfg.checksums and not f.is_directory:
            outputs += [f"{cfg.output_path(f)}.{alg}" for alg in cfg.checksums]
    if any(f.is_qemu_disk for f in cfg.formats) and (cfg.domain is None or cfg.domain.enabled):
        outputs.append(f"{cfg.image_name}.xml")
    lines.append(f"outputs: {', '.join(outputs)}")
    lines.append(f"report, log, manifest: {cfg.report_dir}/"
                 + (f" (log: {cfg.logfile})" if cfg.logfile else ""))
    if ImageFormat.QCOW2 in cfg.formats:
        lines.append("qcow2 compression: " + (cfg.qcow2_compression_type if cfg.compress
                                                else "off (-u)"))
    if cfg.needs_block_device:
        from dib import disk

        disk.check_block_device_config(cfg, disk.block_device_config_text(cfg, res))
        lines.append(f"block device: {_block_device_source(cfg, res)}; root filesystem "
                     f"{cfg.fs_type}"
                     + (f", mkfs options '{cfg.root_mkfs_options}'" if cfg.root_mkfs_options
                        else "")
                     + (f", size {cfg.image_size_gib:g} GiB" if cfg.image_size_gib
                        else ", size from the tree"))
    lines.append(f"image cache: {cfg.image_cache}"
                 + (" (layers and images neither reused nor stored: --no-cache)"
                    if cfg.no_cache else ""))
    if cfg.remote_cache is not None:
        failed = "an error" if cfg.remote_cache_strict else "a warning"
        lines.append(f"remote cache: {cfg.remote_cache} (layers pulled on a local miss, pushed "
                     f"once built; a failed push is {failed})"
                     + ("; off with --no-cache" if cfg.no_cache else ""))
    if not cfg.use_tmpfs:
        lines.append(f"work directory: on disk under {cfg.tmp_dir} (--no-tmpfs / DIB_NO_TMPFS)")
    else:
        plan = workdir.current_tmpfs_plan(None, int(cfg.min_tmpfs_gib * workdir.GIB))
        lines.append(f"{plan.describe()}, under {cfg.tmp_dir} (decided again when the build "
                     "starts)")
    lines.append(f"network: {'offline' if cfg.offline else 'online'}")
    if cfg.packages:
        lines.append(f"extra packages (-p): {' '.join(cfg.packages)}")
    if cfg.boot_test:
        lines.append(f"boot test: yes (accel {cfg.boot_test_accel}, firmware "
                     f"{cfg.boot_test_firmware}, timeout {cfg.boot_test_timeout:g} s)")
    return lines
