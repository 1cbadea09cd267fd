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


def test_the_boot_profile_is_spans_between_console_milestones(bench: ModuleType) -> None:
    marks = {"bootloader": 3.5, "kernel": 9.0, "initramfs": 13.5, "root": 19.0, "login": 36.0}
    spans = bench.boot_spans(marks)
    assert spans["firmware, GRUB"] == 3.5
    assert spans["kernel and initrd loaded, kernel unpacked"] == 5.5
    assert spans["initramfs"] == 5.5
    assert spans["root's systemd to login"] == 17.0
    assert spans["all: QEMU's start to the login prompt"] == 36.0
    # a milestone that did not show (a GRUB that prints nothing) leaves its spans out
    no_grub = bench.boot_spans({k: v for k, v in marks.items() if k != "bootloader"})
    assert no_grub["firmware, GRUB"] is None
    assert no_grub["kernel and initrd loaded, kernel unpacked"] is None
    assert no_grub["kernel (initramfs unpacked)"] == 4.5


def test_the_boot_profile_table_has_each_tools_medians(bench: ModuleType) -> None:
    def booted(tool: str, rnd: int, login: float) -> dict:
        r = row(tool, "boot", login)
        marks = {"bootloader": 2.0, "kernel": 8.0, "initramfs": 12.0, "root": 18.0,
                 "login": login}
        r.update(round=rnd, boot_marks=marks, boot_spans=bench.boot_spans(marks))
        return r
    rows = [booted("dib", 1, 40.0), booted("dib", 2, 44.0), booted("dib", 3, 60.0),
            booted("dib-project", 1, 30.0), booted("dib-project", 2, 34.0),
            booted("dib-project", 3, 32.0)]
    lines = bench.render_boot_spans(rows)
    table = {ln.split(" | ")[0].lstrip("| "): ln.rstrip(" |").split(" | ")[1:]
             for ln in lines if ln.startswith("| ") and not ln.startswith("| span")}
    assert table["root's systemd to login"] == ["26.0", "14.0"]   # 44-18, 32-18
    assert table["all: QEMU's start to the login prompt"] == ["44.0", "32.0"]
    assert table["firmware, GRUB"] == ["2.0", "2.0"]
    assert bench.render_boot_spans([row("dib", "boot", 40.0)]) == []   # no profile, no table


def test_an_extra_variable_for_our_builds_is_parsed_and_named_in_the_report(
        bench: ModuleType) -> None:
    args = bench.parse_args(["--ours-env", "DIB_DEBIAN_KERNEL_FLAVOUR=cloud",
                             "--ours-env", "DIB_X=a=b"])
    assert args.ours_env == {"DIB_DEBIAN_KERNEL_FLAVOUR": "cloud", "DIB_X": "a=b"}
    assert bench.parse_args([]).ours_env == {}
    for bad in ("DIB_X", "=x", "1X=y", "A B=c"):
        with pytest.raises(SystemExit):
            bench.parse_args(["--ours-env", bad])
    meta = {"started_utc": "t", "rounds": 1, "host": {"cpus": 2, "mem_gib": 1, "kernel": "k",
                                                      "python": "3"},
            "project_rev": "r", "env": {"DIB_RELEASE": "bookworm"}, "quiet_wait": 0,
            "verify": []}
    rows = [row("dib", "cold", 100.0, 90.0), row("dib-project", "cold", 50.0, 40.0)]
    assert "not like for like" not in bench.render(meta, rows, bench.summarize(rows))
    text = bench.render({**meta, "ours_env": args.ours_env}, rows, bench.summarize(rows))
    named = [ln for ln in text.splitlines() if "not like for like" in ln]
    assert len(named) == 1 and "`DIB_DEBIAN_KERNEL_FLAVOUR=cloud`" in named[0]
