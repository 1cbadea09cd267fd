"""The farm on a real Debian image (docs/farm.md): ``vm debian-minimal`` built through a Dask
cluster on 127.0.0.1 with a registry as the shared cache, then ``vm debian-minimal
openssh-server`` built on a machine with an empty cache, which pulls the base layers from the
registry instead of building them."""
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
             "--remote-cache", oci_registry.url, "-o", os.fspath(dib.out / "ssh"),
             "vm", "debian-minimal", "openssh-server"], env=fresh, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=3000)
        assert proc.returncode == 0, proc.stderr
        second = json.loads((dib.out / "ssh.d" / "build-report.json").read_text())
        base = [s for s in second["steps"] if s["step"] == first["steps"][0]["step"]]
        assert base and base[0].get("remote") == "hit"        # root.d: pulled, not built
        assert second["remote_cache"]["bytes_pulled"] > 0
        assert Path(dib.out / "ssh.qcow2").stat().st_size > 0
