"""The farm on a real Debian image (docs/farm.md): ``vm debian-minimal`` built through a Dask
cluster on 127.0.0.1 with a registry as the shared cache, then the same element set as a raw
disk on a machine with an empty cache, which pulls every tree layer from the registry
instead of building it; and ``vm debian-minimal openssh-server`` on another empty machine,
which pulls the base layer (root.d: keyed by root.d's own elements and every environment.d,
docs/caching.md) and builds the rest."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.lib import builds

pytest.importorskip("distributed", reason="the farm tests need Dask: pip install -e "
                                          "'.[farm]' (python3 bin/dib-host-setup --test does)")

from tests.lib.farm import Cluster  # noqa: E402


def test_a_farm_build_warms_the_registry_for_a_fresh_machine(tmp_path, oci_registry):
    with builds.Dib(tmp_path) as dib:
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(yaml.safe_dump([{
            "imagename": os.fspath(dib.out / "minimal"), "elements": ["vm", "debian-minimal"],
            "types": ["qcow2"], "no-tmpfs": True, "remote-cache": oci_registry.url,
            "environment": {"DIB_RELEASE": "bookworm"}}], sort_keys=False))
        with Cluster(tmp_path / "farm", n_workers=1) as cluster:
            farm = dib.cli("--recipe", os.fspath(recipe), "--farm", cluster.address,
                           timeout=3000)
        assert farm.returncode == 0, farm.stderr
        first = dib.report("minimal")
        assert first["status"] == "ok"
        pushed = [s for s in first["steps"] if s.get("remote") == "pushed"]
        assert pushed, "the farm build pushed no layer"

        fresh = dib.env({"DIB_IMAGE_CACHE": os.fspath(tmp_path / "fresh-cache"),
                         "DIB_RELEASE": "bookworm"})
        proc = subprocess.run(
            [sys.executable, os.fspath(builds.DISK_IMAGE_CREATE), "--no-tmpfs",
             "--remote-cache", oci_registry.url, "-t", "raw", "-o", os.fspath(dib.out / "raw"),
             "vm", "debian-minimal"], env=fresh, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=3000)
        assert proc.returncode == 0, proc.stderr
        second = json.loads((dib.out / "raw.d" / "build-report.json").read_text())
        assert [s["key"] for s in second["steps"]] == [s["key"] for s in first["steps"]]
        assert all(s.get("remote") == "hit" for s in second["steps"]), second["steps"]
        assert second["remote_cache"]["bytes_pulled"] > 0
        assert Path(dib.out / "raw.raw").stat().st_size > 0

        other = dib.env({"DIB_IMAGE_CACHE": os.fspath(tmp_path / "other-cache"),
                         "DIB_RELEASE": "bookworm"})
        proc = subprocess.run(
            [sys.executable, os.fspath(builds.DISK_IMAGE_CREATE), "--no-tmpfs",
             "--remote-cache", oci_registry.url, "-t", "tar", "-o", os.fspath(dib.out / "ssh"),
             "vm", "debian-minimal", "openssh-server"], env=other, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=3000)
        assert proc.returncode == 0, proc.stderr
        third = {s["step"]: s for s in
                 json.loads((dib.out / "ssh.d" / "build-report.json").read_text())["steps"]}
        assert third["root.d"]["remote"] == "hit"
        assert third["root.d"]["key"] == first["steps"][0]["key"]
        assert not third["install.d/01-package-installs"]["cached"]
