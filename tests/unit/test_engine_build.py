"""dib.build without root: the checks that run before any work, and how the boot test is
wired from the settings (QEMU itself is replaced; tests/unit/test_boottest.py drives it)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from dib import boottest, build, config
from dib import log as dlog
from dib.errors import ConfigError, DibError, ElementNotFound

ELEMENTS = Path(__file__).resolve().parents[1] / "elements"


def _cfg(tmp_path: Path, *argv: str, **env: str) -> config.BuildConfig:
    environ = {"ELEMENTS_PATH": str(ELEMENTS), "TMP_DIR": str(tmp_path / "work"),
               "DIB_IMAGE_CACHE": str(tmp_path / "cache"), **env}
    return config.parse_args(["-o", str(tmp_path / "out" / "img"), *argv], environ)


def test_an_unknown_element_fails_before_anything_is_made(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "-t", "tar", "fake-os", "no-such-element")
    with pytest.raises(ElementNotFound) as exc:
        build.build_image(cfg)
    assert "ELEMENTS_PATH" in (exc.value.hint or "")
    assert not (tmp_path / "out" / "img.d").exists() and not (tmp_path / "work").exists()


def test_a_break_point_without_a_terminal_is_refused_up_front(tmp_path: Path,
                                                             monkeypatch: Any) -> None:
    monkeypatch.setattr(build.os, "geteuid", lambda: 0)
    monkeypatch.setattr(build.cmd, "require_tools", lambda *a, **k: None)
    monkeypatch.setattr(build.sys.stdin, "isatty", lambda: False, raising=False)
    cfg = _cfg(tmp_path, "-t", "tar", "fake-os", **{"break": "after-install"})
    with pytest.raises(ConfigError, match="break=after-install"):
        build._check_host(cfg)


def test_building_needs_root(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(build.os, "geteuid", lambda: 1000)
    with pytest.raises(DibError, match="needs root"):
        build._check_host(_cfg(tmp_path, "-t", "tar", "fake-os"))


@pytest.mark.parametrize("firmware,has_esp,uefi", [
    ("auto", True, True), ("auto", False, False), ("bios", True, False), ("uefi", False, True),
])
def test_the_boot_test_takes_firmware_accelerator_and_limits_from_the_settings(
        tmp_path: Path, monkeypatch: Any, firmware: str, has_esp: bool, uefi: bool) -> None:
    calls: List[Dict[str, Any]] = []

    def fake_boot(image: Path, workdir: Path, **kw: Any) -> boottest.BootResult:
        calls.append({"image": image, **kw})
        return boottest.BootResult(True, 12.0, "tcg", workdir / "serial.log", {"ready": 11.0},
                                   None, "DIB_BOOT_TEST_ACCEL=tcg")

    monkeypatch.setattr(boottest, "boot", fake_boot)
    cfg = _cfg(tmp_path, "--boot-test", "-t", "raw,qcow2", "fake-os",
               DIB_BOOT_TEST_FIRMWARE=firmware, DIB_BOOT_TEST_ACCEL="tcg",
               DIB_BOOT_TEST_TIMEOUT="77", DIB_BOOT_TEST_STALL="9",
               DIB_BOOT_TEST_EXPECT="ready")
    report = tmp_path / "report.json"
    report.write_text('{"status": "ok"}\n')
    build._boot_test(cfg, uefi=has_esp, timings=dlog.Timings(), report_path=report)
    (call,) = calls
    assert call["image"] == cfg.output_path(cfg.formats[0])  # the first disk output
    assert (call["uefi"], call["accel"], call["timeout"], call["stall_seconds"],
            call["expect"]) == (uefi, "tcg", 77.0, 9.0, ["ready"])
    recorded = json.loads(report.read_text())["boot_test"]
    assert recorded["firmware"] == ("UEFI" if uefi else "BIOS")
    assert (recorded["accel"], recorded["accel_reason"]) == ("tcg", "DIB_BOOT_TEST_ACCEL=tcg")


def test_an_automatic_accelerator_is_left_to_the_boot_test(tmp_path: Path,
                                                         monkeypatch: Any) -> None:
    seen: List[Any] = []

    def fake_boot(image: Path, workdir: Path, **kw: Any) -> boottest.BootResult:
        seen.append(kw["accel"])
        return boottest.BootResult(False, 3.0, "tcg", workdir / "serial.log", {},
                                   "the console shows 'Kernel panic'", "/dev/kvm not usable")

    monkeypatch.setattr(boottest, "boot", fake_boot)
    cfg = _cfg(tmp_path, "--boot-test", "fake-os")
    report = tmp_path / "report.json"
    report.write_text("{}\n")
    (tmp_path / "out" / "img.d" / "boot-test").mkdir(parents=True)
    (tmp_path / "out" / "img.d" / "boot-test" / "serial.log").write_text("Kernel panic\n")
    with pytest.raises(DibError, match="boot test failed: the console shows 'Kernel panic' "
                                       r"\(BIOS, tcg: /dev/kvm not usable; 3 s\)"):
        build._boot_test(cfg, uefi=False, timings=dlog.Timings(), report_path=report)
    assert seen == [None]
    assert json.loads(report.read_text())["boot_test"]["passed"] is False
