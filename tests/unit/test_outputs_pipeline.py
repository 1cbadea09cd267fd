"""The output pipeline itself (no root): every format has exactly one family, families say
truthfully whether they need the tree or the disk, a run leaves no state behind in any
module, and the finished-image cache round-trips a run's outputs and the tree's facts."""
from __future__ import annotations

import copy
import importlib
import json
import pkgutil
import tarfile
from pathlib import Path
from typing import Any, Dict

import pytest

import dib.outputs
from dib import outputs
from dib.cache import ArtifactCache
from dib.config import ImageFormat, parse_args
from dib.log import Timings
from dib.outputs import BuildSummary, Needs, Run


def _modules():
    return [importlib.import_module(f"dib.outputs.{m.name}")
            for m in pkgutil.iter_modules(dib.outputs.__path__)] + [dib.outputs]


def _mutable_globals() -> Dict[str, Any]:
    """Every module-level dict, list, set or bytearray of the package (deep copies)."""
    return {f"{mod.__name__}.{name}": copy.deepcopy(value)
            for mod in _modules() for name, value in vars(mod).items()
            if isinstance(value, (dict, list, set, bytearray)) and not name.startswith("__")}


def test_every_format_has_exactly_one_family():
    for fmt in ImageFormat:
        assert [f.name for f in outputs.FAMILIES if fmt in f.formats] == \
            [outputs.family_of(fmt).name], fmt


def test_families_need_the_disk_exactly_for_disk_formats():
    for family in outputs.FAMILIES:
        for fmt in family.formats:
            assert fmt.is_disk == (family.needs is Needs.DISK), (family.name, fmt)


def test_every_module_of_the_package_declares_or_serves_the_pipeline():
    names = {m.__name__.rsplit(".", 1)[-1] for m in _modules()}
    families = {f.write.__module__.rsplit(".", 1)[-1] for f in outputs.FAMILIES}
    assert families <= names
    assert names - families == {"outputs", "base", "files", "checksums", "libvirt", "manifest",
                                "stable_ids"}


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text('ID=debian\nPRETTY_NAME="Debian test"\n')
    (root / "bin").mkdir()
    (root / "bin" / "sh").write_text("#!/bin/true\n")
    return root


def _run(tmp_path: Path, name: str, types: str) -> Run:
    cfg = parse_args(["-t", types, "-o", str(tmp_path / "out" / name), "--checksum", "x"],
                     {"SOURCE_DATE_EPOCH": "0"})
    return Run(cfg, Timings(), ("x",))


def _summary() -> BuildSummary:
    return BuildSummary(elements={}, steps=[("root.d", True, 0.1)], cache_enabled=True,
                        tree_key="k", seconds=1.0)


def test_a_run_writes_its_outputs_and_leaves_no_module_state(tmp_path, tree):
    before = _mutable_globals()
    run = _run(tmp_path, "img", "tar,docker")
    outputs.write_tree(run, tree)
    assert _mutable_globals() == before  # nothing carried between the calls but the run
    outputs.finish(run, _summary())
    assert _mutable_globals() == before
    out = tmp_path / "out"
    assert [p.name for p in run.written] == [
        "img.tar", "img.tar.md5", "img.tar.sha256",
        "img.docker.tar", "img.docker.tar.md5", "img.docker.tar.sha256"]
    with tarfile.open(out / "img.tar") as tar:
        assert {"./etc/os-release", "./bin/sh"} <= set(tar.getnames())
    m = json.loads((out / "img.d" / "manifest.json").read_text())
    assert m["os_release"]["ID"] == "debian"
    assert [a["format"] for a in m["artifacts"]] == ["tar", "docker"]
    # a second run in the same process starts from nothing the first one learned
    other = _run(tmp_path, "two", "tar")
    assert other.facts.os_release == {} and other.written == []


def test_store_and_restore_round_trip_outputs_and_facts(tmp_path, tree):
    images = ArtifactCache(tmp_path / "cache", "images")
    run = _run(tmp_path, "img", "tar,oci")
    outputs.write_tree(run, tree)
    outputs.store(run, images, "key1", {"tree": "t"})
    again = _run(tmp_path, "copy", "tar,oci")
    assert not outputs.restore(again, images, "other-key")
    assert outputs.restore(again, images, "key1")
    out = tmp_path / "out"
    assert (out / "copy.tar").read_bytes() == (out / "img.tar").read_bytes()
    assert (out / "copy.oci" / "index.json").read_bytes() == \
        (out / "img.oci" / "index.json").read_bytes()
    assert again.facts == run.facts and again.facts.os_release["ID"] == "debian"
    assert [n for n, _, _ in again.timings.of("output")] == ["tar (cached)", "oci (cached)"]
