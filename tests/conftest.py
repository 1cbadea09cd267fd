"""Shared pytest setup: tiers by directory, capability-based skips, leak checks.

* tests/unit         pure Python, no root
* tests/integration  root: chroot, mounts, loop devices on tiny trees (skipped without them)
* tests/e2e          real Debian builds from the mirror, booted under qemu TCG
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.lib import caps  # noqa: E402

TEST_ELEMENTS = ROOT / "tests" / "elements"


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT).parts
        tier = parts[1] if len(parts) > 2 else ""
        if tier == "integration":
            item.add_marker(pytest.mark.root)
            if not caps.can_mount():
                item.add_marker(pytest.mark.skip(
                    reason="needs mount capability: run the tests as root, outside an "
                           "unprivileged container"))
        elif tier == "e2e":
            item.add_marker(pytest.mark.e2e)
            if not (caps.can_mount() and caps.can_loop()):
                item.add_marker(pytest.mark.skip(
                    reason="needs mounts and loop devices: run the tests as root, outside an "
                           "unprivileged container"))
            elif not caps.can_reach_mirror():
                mirror = caps.host_mirror() or "(none in the host's apt sources)"
                item.add_marker(pytest.mark.skip(
                    reason=f"the Debian mirror {mirror} is not reachable: set "
                           "DIB_DISTRIBUTION_MIRROR to one that is"))


@pytest.fixture
def test_elements() -> Path:
    return TEST_ELEMENTS


@pytest.fixture
def oci_registry(tmp_path):
    """A running OCI registry on 127.0.0.1 (tests/lib/registry.py): ``.url`` is what
    --remote-cache takes; stopped at the end of the test (``.stop()`` stops it earlier)."""
    from tests.lib import registry

    if not registry.available():
        pytest.skip(registry.SKIP_REASON)
    with registry.running(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
def oci_registry_with_login(tmp_path):
    """Like ``oci_registry``, but it demands a login: ``.credentials`` is (user, password)."""
    from tests.lib import registry

    if not registry.available():
        pytest.skip(registry.SKIP_REASON)
    with registry.running(tmp_path / "registry",
                          credentials=("dib-ci", "pw-7f3a9c-not-in-any-file")) as reg:
        yield reg
