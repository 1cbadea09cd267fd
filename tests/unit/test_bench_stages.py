"""bench/bench.py's boot stages: what they imply, and that their rows (no CPU figure of
their own) are summarised and rendered like the build rows. No builds, no boots."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dib_bench", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("asked, implied", [
    ("boot", ["cold"]),
    ("edit-to-login", ["cold", "elem-v1", "incremental"]),
    ("cold,boot", []),
    ("no-op", []),
])
def test_a_boot_stage_brings_the_builds_whose_image_it_boots(bench: ModuleType, asked: str,
                                                              implied: list) -> None:
    args = bench.parse_args(["--stages", asked])
    assert args.implied_stages == implied
    assert set(args.stages) == set(asked.split(",")) | set(implied)


def test_the_boot_accelerator_is_one_for_both_tools(bench: ModuleType) -> None:
    assert bench.parse_args([]).boot_accel == "tcg"
    assert bench.parse_args(["--boot-accel", "kvm"]).boot_accel == "kvm"
    with pytest.raises(SystemExit):
        bench.parse_args(["--boot-accel", "hvf"])


def row(tool: str, stage: str, wall: float, cpu: object = None) -> dict:
    return {"round": 1, "tool": tool, "stage": stage, "rc": 0, "ok": True, "wall_s": wall,
            "cpu_s": cpu, "cpu_user_s": cpu, "cpu_sys_s": 0 if cpu is not None else None,
            "others_cores": 0.5, "loadavg_before": [1.0, 1.0, 1.0], "qcow2_bytes": None,
            "qcow2": "x.qcow2", "log": "serial.log"}


def test_boot_rows_are_ratios_with_goals(bench: ModuleType) -> None:
    rows = [row("dib", "boot", 80.0), row("dib-project", "boot", 40.0),
            row("dib", "edit-to-login", 200.0), row("dib-project", "edit-to-login", 50.0),
            row("dib", "cold", 100.0, 90.0), row("dib-project", "cold", 50.0, 40.0)]
    summary = {e["stage"]: e for e in bench.summarize(rows)}
    assert summary["boot"]["ratio"] == pytest.approx(40.0 / 80.0)
    assert summary["edit-to-login"]["ratio"] == pytest.approx(50.0 / 200.0)
    assert summary["boot"]["cpu_ratio"] is None
    meta = {"started_utc": "t", "rounds": 1, "host": {"cpus": 2, "mem_gib": 1, "kernel": "k",
                                                      "python": "3"},
            "project_rev": "r", "env": {"DIB_RELEASE": "bookworm"}, "quiet_wait": 0,
            "verify": []}
    text = bench.render(meta, rows, bench.summarize(rows))
    boot_line = next(ln for ln in text.splitlines() if ln.startswith("| boot |"))
    assert "0.500×" in boot_line and "yes" in boot_line  # goal 0.7
