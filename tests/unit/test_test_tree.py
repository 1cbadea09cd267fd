"""The test tree itself: its tiers share one import namespace (no __init__.py), so two test
files with the same name in different tiers break collection of the whole suite -- which a
run of one tier alone would not show."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Dict, List

TESTS = Path(__file__).resolve().parents[1]


def test_test_file_names_are_unique_across_tiers() -> None:
    seen: Dict[str, List[str]] = defaultdict(list)
    for path in TESTS.glob("*/test_*.py"):
        seen[path.name].append(path.parent.name)
    twice = {name: tiers for name, tiers in seen.items() if len(tiers) > 1}
    assert not twice, f"test files named alike in several tiers (rename one): {twice}"
