"""Boot an image under QEMU and watch its serial console.

The image is never modified: QEMU boots a throw-away qcow2 overlay on top of it. The test
passes when the serial console shows every expected pattern (by default a login prompt) and
fails fast on signs of a dead boot (GRUB rescue prompt, kernel panic, no bootable device).
KVM is used when it actually works on the host (a short probe), else TCG.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

from dib import cmd
from dib.errors import DibError

log = logging.getLogger("dib.boottest")

OVMF_CODE = ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = ("/usr/share/OVMF/OVMF_VARS_4M.fd", "/usr/share/OVMF/OVMF_VARS.fd")
FAILURES = (r"grub rescue>", r"Kernel panic", r"No bootable device", r"error: no such device",
            r"Boot failed", r"You are in emergency mode", r"Give root password for maintenance")
DEFAULT_EXPECT = (r"login: ",)


@dataclass(frozen=True)
class BootResult:
    passed: bool
    seconds: float
    accel: str
    serial_log: Path
    #: pattern -> seconds after start when first seen
    seen: Dict[str, float] = field(default_factory=dict)
    failure: Optional[str] = None

    def serial_text(self) -> str:
        return self.serial_log.read_text(errors="replace")


def kvm_works() -> bool:
    """KVM present *and* usable (on some hosts QEMU aborts setting MSRs)."""
    if os.environ.get("DIB_BOOT_TEST_ACCEL") in ("tcg", "kvm"):
        return os.environ["DIB_BOOT_TEST_ACCEL"] == "kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    argv = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "64", "-display",
            "none", "-monitor", "none", "-serial", "none", "-nodefaults", "-no-reboot"]
    with cmd.background(argv) as proc:
        time.sleep(2)
        return proc.poll() is None


def _firmware(uefi: bool, workdir: Path) -> list:
    if not uefi:
        return []
    code = next((p for p in OVMF_CODE if os.path.exists(p)), None)
    vars_ = next((p for p in OVMF_VARS if os.path.exists(p)), None)
    if code is None or vars_ is None:
        raise DibError("UEFI boot test needs OVMF firmware", hint="apt-get install ovmf")
    local_vars = workdir / "OVMF_VARS.fd"
    shutil.copyfile(vars_, local_vars)
    return ["-machine", "q35",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={local_vars}"]


def boot(image: Path, workdir: Path, *, image_format: str = "qcow2", uefi: bool = False,
         expect: Sequence[str] = DEFAULT_EXPECT, timeout: float = 300,
         memory_mib: int = 1024, extra_args: Sequence[str] = (),
         interact: Optional[Callable[[Path], None]] = None) -> BootResult:
    """Boot ``image`` and wait until every regex in ``expect`` has appeared on the serial
    console (in any order), a failure pattern appears, QEMU exits, or ``timeout`` passes.

    ``extra_args`` go to QEMU as they are (e.g. ``["-nic", "user,hostfwd=..."]``); unless
    they hold a ``-nic`` or ``-netdev``, the VM has no NIC. With ``interact``, the serial
    console is also a unix socket, and ``interact(socket_path)`` is called once every
    pattern has shown, while the VM still runs; what it raises propagates after QEMU is
    stopped."""
    cmd.require_tools("qemu-system-x86_64", "qemu-img",
                      package_hint={"qemu-system-x86_64": "qemu-system-x86",
                                    "qemu-img": "qemu-utils"})
    workdir.mkdir(parents=True, exist_ok=True)
    overlay = workdir / "boot-overlay.qcow2"
    overlay.unlink(missing_ok=True)
    cmd.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.abspath(image),
             "-F", image_format, overlay])
    serial = workdir / "serial.log"
    serial.unlink(missing_ok=True)
    accel = "kvm" if kvm_works() else "tcg"
    socket = workdir / "serial.sock"
    if interact is not None and len(os.fsencode(socket.absolute())) > 100:
        raise DibError(f"boot test: the console socket path is too long for a unix socket: "
                       f"{socket}", hint="use a shorter work directory")
    serial_args = ["-serial", f"file:{serial}"] if interact is None else [
        "-chardev", f"socket,id=console,path={socket},server=on,wait=off,logfile={serial}",
        "-serial", "chardev:console"]
    argv = ["qemu-system-x86_64", "-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
            "-m", str(memory_mib), "-smp", "2", "-display", "none", "-monitor", "none",
            *serial_args, "-no-reboot",
            *(extra_args if any(a in ("-nic", "-netdev") for a in extra_args)
              else ["-nic", "none", *extra_args]),
            *_firmware(uefi, workdir),
            "-drive", f"file={overlay},if=virtio,format=qcow2"]
    log.info("boot test (%s, %s): waiting for %s", accel, "UEFI" if uefi else "BIOS",
             ", ".join(expect))
    seen: Dict[str, float] = {}
    failure = None
    start = time.monotonic()
    with cmd.background(argv, stdout_path=workdir / "qemu.out") as proc:
        while True:
            elapsed = time.monotonic() - start
            text = serial.read_text(errors="replace") if serial.exists() else ""
            for pat in expect:
                if pat not in seen and re.search(pat, text):
                    seen[pat] = round(elapsed, 1)
                    log.info("boot test: %r after %.1f s", pat, elapsed)
            if len(seen) == len(expect):
                if interact is not None:
                    interact(socket)
                break
            bad = next((p for p in FAILURES if re.search(p, text)), None)
            if bad:
                failure = f"the console shows {bad!r}"
                break
            if proc.poll() is not None:
                failure = f"QEMU exited (status {proc.returncode}) before the boot finished"
                break
            if elapsed > timeout:
                failure = f"timed out after {timeout:.0f} s"
                break
            time.sleep(0.5)
    overlay.unlink(missing_ok=True)
    return BootResult(failure is None, round(time.monotonic() - start, 1), accel, serial,
                      seen, failure)
