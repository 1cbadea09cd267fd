"""The output pipeline: every ``-t`` format, written from the final tree or the finished disk.

One module per format family; each declares a :class:`~dib.outputs.base.Family` (its formats,
whether it needs the tree or the disk, its cache-key inputs, how to write it and how to store
and restore it with the finished-image cache):

==================  ============================================================  =========
module              outputs                                                       needs
==================  ============================================================  =========
:mod:`.tar`         ``-t tar``, ``-t tgz``: an archive of the tree                tree
:mod:`.container`   ``-t docker`` (docker-archive), ``-t oci`` (image layout)     tree
:mod:`.qemu`        ``-t qcow2,raw,vmdk,vhd,vdi``: ``qemu-img convert``           disk
:mod:`.vhdx`        ``-t vhdx``: Hyper-V / Azure (dynamic VHDX)                   disk
:mod:`.ova`         ``-t ova``: OVF descriptor + streamOptimized VMDK (+ .mf)     disk
:mod:`.vagrant`     ``-t vagrant``: a vagrant-libvirt box                         disk
:mod:`.libvirt`     ``<image>.xml``: a libvirt domain for the disk output         outputs
:mod:`.manifest`    ``<image>.d/manifest.json``, ``sbom.cdx.json``                tree
:mod:`.checksums`   ``--checksum``: ``<output>.md5`` / ``.sha256``                outputs
==================  ============================================================  =========

The build engine makes one :class:`Run` per build and calls :func:`write_tree` once (with the
final tree, nothing mounted below it) and, for disk builds, :func:`write_disk` once (with the
finished raw disk); :func:`finish` writes the sidecars after the build. :func:`restore` and
:func:`store` move the outputs in and out of the finished-image cache. Everything a build
learns lives on its :class:`Run`; nothing here keeps state at module level.

A new format is one module with a ``FAMILY`` listed in :data:`FAMILIES` (and its name in
:class:`dib.config.ImageFormat`).
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from dib.cache import ArtifactCache
from dib.config import BuildConfig, ImageFormat
from dib.outputs import container, libvirt, manifest, ova, qemu, tar, vagrant, vhdx
from dib.outputs.base import Family, Needs, Run
from dib.outputs.manifest import BuildSummary, TreeFacts

__all__ = ["FAMILIES", "BuildSummary", "Family", "Needs", "Run", "TreeFacts", "cache_entries",
           "cache_inputs", "check", "family_of", "finish", "restore", "store", "write_disk",
           "write_tree"]

log = logging.getLogger("dib.outputs")

#: every family, in the order the pipeline writes them (vagrant after qemu: it reuses the
#: -t qcow2 output)
FAMILIES: Tuple[Family, ...] = (tar.FAMILY, container.FAMILY, qemu.FAMILY, vhdx.FAMILY,
                                ova.FAMILY, vagrant.FAMILY)


def family_of(fmt: ImageFormat) -> Family:
    return next(f for f in FAMILIES if fmt in f.formats)


def _wanted(cfg: BuildConfig, needs: Needs) -> List[Tuple[Family, List[ImageFormat]]]:
    return [(f, w) for f in FAMILIES if f.needs is needs and (w := f.wanted(cfg))]


def check(cfg: BuildConfig) -> None:
    """What the requested outputs need beyond their parsed settings; raises ConfigError
    before the build starts."""
    for family in FAMILIES:
        if family.wanted(cfg):
            family.check(cfg)


def cache_inputs(cfg: BuildConfig) -> Dict[str, Any]:
    """The requested families' settings that change their outputs (part of the
    finished-image key; a family without any adds nothing, so such keys stay as they were)."""
    inputs: Dict[str, Any] = {}
    for family in FAMILIES:
        if family.wanted(cfg) and (extra := family.cache_inputs(cfg)):
            inputs[family.name] = extra
    return inputs


def write_tree(run: Run, tree: Path) -> None:
    """Every tree output, from ``tree`` (nothing but the image mounted below it); records
    the tree's packages for the manifest on ``run.facts``."""
    releases = run.facts.releases  # recorded before cleanup.d removed the lists
    run.facts = manifest.record_tree(run, tree)
    run.facts.releases = releases
    for family, formats in _wanted(run.cfg, Needs.TREE):
        family.write(run, tree, formats)


def write_disk(run: Run, raw: Path) -> None:
    """Every disk output, from the finished raw disk file."""
    for family, formats in _wanted(run.cfg, Needs.DISK):
        family.write(run, raw, formats)


def restore(run: Run, images: ArtifactCache, key: str) -> bool:
    """Put every output cached for ``key`` in place; False (nothing written) unless all of
    them and the tree's facts are cached."""
    facts = manifest.restore_facts(images, key)
    if facts is None:
        return False
    entries = [images.get(f"{key}-{f.value}") for f in run.cfg.formats]
    if any(e is None for e in entries):
        return False
    run.facts = facts
    for fmt, entry in zip(run.cfg.formats, entries):
        assert entry is not None
        dest = run.cfg.output_path(fmt)
        log.info("writing %s (cached image)", dest)
        family_of(fmt).restore(run, fmt, Path(entry.path), dest)
        run.has_esp = bool(entry.inputs.get("has_esp"))
        images.touch(entry.key)
    return True


def store(run: Run, images: ArtifactCache, key: str, inputs: Mapping[str, Any]) -> None:
    """Keep every output of this build (and the tree's facts) in the cache under ``key``."""
    for fmt in run.cfg.formats:
        family = family_of(fmt)
        images.store(f"{key}-{fmt.value}", family.cache_suffix(fmt),
                     {**inputs, "has_esp": run.has_esp},
                     functools.partial(family.store, run.cfg.output_path(fmt)))
    manifest.store_facts(images, key, run.facts)


def cache_entries(cfg: BuildConfig, key: str) -> List[str]:
    """The finished-image cache entries :func:`store` makes for ``key`` (and :func:`restore`
    needs): the tree's facts, then one per output format."""
    return [f"{key}-state"] + [f"{key}-{fmt.value}" for fmt in cfg.formats]


def finish(run: Run, summary: BuildSummary) -> Optional[Path]:
    """After the build: the libvirt domain XML (disk builds) and the manifest and SBOM.
    Returns the XML's path when one was written."""
    xml = libvirt.write_xml(run)
    manifest.write_sidecars(run, summary)
    return xml
