"""The boot test's accelerator choice, with stand-ins for qemu-system-x86_64 and qemu-img.

The stand-in QEMU understands ``-accel`` and ``-serial file:PATH``. Under KVM it prints what
GRUB prints and then, depending on the scenario, stalls (a half-working KVM: the kernel hangs
after "Loading initial ramdisk") or keeps printing slowly before a login prompt; under TCG it
prints kernel lines and a login prompt. It records each run's accelerator and pid, so the
tests can check which accelerators were tried and that no QEMU outlives boot().
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import List

import pytest

from dib import boottest, cmd
from dib.build import record_boot_test

FAKE_QEMU = r"""#!{python}
import os, sys, time
SCENARIO = {scenario!r}
args = sys.argv[1:]
accel = args[args.index("-accel") + 1]
serial = args[args.index("-serial") + 1]
with open({calls!r}, "a") as f:
    f.write(f"{{accel}} {{serial != 'none'}} {{os.getpid()}}\n")
if serial == "none":          # the KVM probe: stay up, or abort as on some hosts
    if SCENARIO == "probe-abort":
        print("qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69", flush=True)
        os.abort()
    time.sleep(3600)
if accel == "kvm" and SCENARIO == "kvm-exit":
    sys.exit(1)
out = open(serial.removeprefix("file:"), "w", buffering=1)
def say(line, pause=0.0):
    out.write(line + "\r\n")
    time.sleep(pause)
if accel == "kvm":
    for line in ("Booting `Debian GNU/Linux'", "", "Loading Linux 6.1.0-18-amd64 ...",
                 "Loading initial ramdisk ..."):
        say(line, 0.1)
    if SCENARIO == "kvm-slow":
        for i in range(8):     # slower than nothing, steadier than the stall window
            say(f"[  {{i}}.000000] still booting", 1.0)
        say("debian login: ")
    time.sleep(3600)           # kvm-stall: the kernel hangs without a word
else:
    for line in ("[    0.000000] Linux version 6.1.0-18-amd64", "[    1.000000] Run /init",
                 "Debian GNU/Linux 12 debian ttyS0", ""):
        say(line, 0.1)
    say("debian login: ")
    time.sleep(3600)
"""

FAKE_QEMU_IMG = r"""#!{python}
import sys
open(sys.argv[-1], "w").close()   # qemu-img create ... OVERLAY
"""


class Fake:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls_file = root / "calls"
        self.kvm = root / "kvm"          # a stand-in /dev/kvm we may read and write
        self.kvm.write_text("")
        self.image = root / "disk.qcow2"
        self.image.write_text("")

    def calls(self) -> List[str]:
        """The accelerator of each real boot (the probe excluded)."""
        if not self.calls_file.exists():
            return []
        return [line.split()[0] for line in self.calls_file.read_text().splitlines()
                if line.split()[1] == "True"]

    def probes(self) -> int:
        if not self.calls_file.exists():
            return 0
        return sum(1 for line in self.calls_file.read_text().splitlines()
                   if line.split()[1] == "False")

    def alive(self) -> List[int]:
        pids = [int(line.split()[2]) for line in self.calls_file.read_text().splitlines()]
        living = []
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            living.append(pid)
        return living


@pytest.fixture
def fake_qemu(tmp_path, monkeypatch):
    def install(scenario: str) -> Fake:
        fake = Fake(tmp_path)
        bindir = tmp_path / "bin"
        bindir.mkdir()
        for name, text in (("qemu-system-x86_64", FAKE_QEMU), ("qemu-img", FAKE_QEMU_IMG)):
            script = bindir / name
            script.write_text(text.format(python=sys.executable, scenario=scenario,
                                          calls=os.fspath(fake.calls_file)))
            script.chmod(0o755)
        # first on the PATH the command gateway gives its children
        monkeypatch.setattr(cmd, "SAFE_PATH", f"{bindir}:{cmd.SAFE_PATH}")
        monkeypatch.setattr(boottest, "PROBE_SECONDS", 0.3)
        return fake
    return install


def _boot(fake: Fake, **kwargs) -> boottest.BootResult:
    kwargs.setdefault("kvm_device", os.fspath(fake.kvm))
    return boottest.boot(fake.image, fake.root / "boot", timeout=60, stall_seconds=3,
                         **kwargs)


def test_kvm_stall_after_grub_boots_again_under_tcg(fake_qemu, caplog):
    fake = fake_qemu("kvm-stall")
    with caplog.at_level(logging.INFO, logger="dib.boottest"):
        result = _boot(fake)
    assert result.passed, result.failure
    assert result.accel == "tcg"
    assert fake.calls() == ["kvm", "tcg"]
    assert result.accel_reason == "KVM stalled after the bootloader"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "no console output for" in warnings[0]
    assert "after the bootloader handed over; booting again under TCG" in warnings[0]
    # the KVM console is kept beside the TCG one, which holds only the TCG boot
    assert "Loading initial ramdisk" in result.kvm_serial_log.read_text()
    assert "Loading initial ramdisk" not in result.serial_text()
    assert "login: " in result.serial_text()
    assert fake.alive() == []


def test_kvm_printing_slowly_but_steadily_is_not_a_stall(fake_qemu, caplog):
    fake = fake_qemu("kvm-slow")
    with caplog.at_level(logging.INFO, logger="dib.boottest"):
        result = _boot(fake)
    assert result.passed, result.failure
    assert (result.accel, result.accel_reason) == ("kvm", "KVM probe passed")
    assert result.kvm_stall is None
    assert fake.calls() == ["kvm"]
    # the console was busy for longer than the stall window
    assert result.seen["login: "] > 3
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert fake.alive() == []


def test_forced_tcg_never_tries_kvm(fake_qemu):
    fake = fake_qemu("kvm-stall")
    result = _boot(fake, accel="tcg", accel_source="DIB_BOOT_TEST_ACCEL")
    assert result.passed, result.failure
    assert (result.accel, result.accel_reason) == ("tcg", "DIB_BOOT_TEST_ACCEL=tcg")
    assert fake.calls() == ["tcg"]
    assert fake.probes() == 0


def test_marks_are_timed_in_order_and_one_that_never_shows_is_not_waited_for(fake_qemu):
    fake = fake_qemu("kvm-stall")
    marks = (r"\] Linux version", r"Run /init", r"Welcome to ")   # the last never shows
    result = _boot(fake, accel="tcg", marks=marks)
    # passed: a mark waited for would have held the boot until its timeout, and failed it
    assert result.passed, result.failure
    linux, init, login = (result.seen[p] for p in (marks[0], marks[1], "login: "))
    assert linux <= init <= login
    assert marks[2] not in result.seen
    assert fake.alive() == []


def test_forced_kvm_is_not_second_guessed(fake_qemu):
    """Forcing KVM means the caller wants to see KVM's own outcome: no fallback."""
    fake = fake_qemu("kvm-stall")
    result = boottest.boot(fake.image, fake.root / "boot", timeout=5, stall_seconds=1,
                           accel="kvm", kvm_device=os.fspath(fake.kvm))
    assert not result.passed
    assert result.failure == "timed out after 5 s"
    assert fake.calls() == ["kvm"]
    assert fake.alive() == []


def test_unusable_kvm_device_means_tcg_without_a_probe(fake_qemu):
    fake = fake_qemu("kvm-stall")
    missing = fake.root / "no-kvm"
    result = _boot(fake, kvm_device=os.fspath(missing))
    assert result.passed, result.failure
    assert (result.accel, result.accel_reason) == ("tcg", f"{missing} not usable")
    assert fake.calls() == ["tcg"]
    assert fake.probes() == 0


def test_kvm_probe_failure_means_tcg_and_says_what_qemu_said(fake_qemu):
    fake = fake_qemu("probe-abort")
    result = _boot(fake)
    assert result.passed, result.failure
    assert result.accel == "tcg"
    assert result.accel_reason == ("QEMU did not stay up under KVM (killed by SIGABRT): "
                                   "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69")
    assert (fake.probes(), fake.calls()) == (1, ["tcg"])


def test_qemu_exiting_under_kvm_before_any_output_boots_again_under_tcg(fake_qemu, caplog):
    fake = fake_qemu("kvm-exit")
    with caplog.at_level(logging.WARNING, logger="dib.boottest"):
        result = _boot(fake)
    assert result.passed, result.failure
    assert (result.accel, result.accel_reason) == ("tcg", "QEMU exited under KVM")
    assert fake.calls() == ["kvm", "tcg"]
    assert "QEMU exited (status 1) before the console showed anything; booting again " \
        "under TCG" in caplog.text


def test_the_build_report_records_the_boot_test(tmp_path):
    report = tmp_path / "build-report.json"
    report.write_text('{"status": "ok"}\n')
    result = boottest.BootResult(True, 95.0, "tcg", tmp_path / "serial.log", {"login: ": 94.5},
                                 None, "KVM stalled after the bootloader",
                                 "no console output for 45 s after the bootloader handed over",
                                 tmp_path / "serial.kvm.log")
    record_boot_test(report, result, "BIOS")
    data = json.loads(report.read_text())
    assert data["status"] == "ok"
    assert data["boot_test"]["accel"] == "tcg"
    assert data["boot_test"]["accel_reason"] == "KVM stalled after the bootloader"
    assert data["boot_test"]["kvm_stall"].startswith("no console output for 45 s")
    assert data["boot_test"]["seen"] == {"login: ": 94.5}
