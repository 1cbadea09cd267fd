"""Boot an image under QEMU and watch its serial console.

The image is never modified: QEMU boots a throw-away qcow2 overlay on top of it. The test
passes when the serial console shows every expected pattern (by default a login prompt) and
fails fast on signs of a dead boot (GRUB rescue prompt, kernel panic, no bootable device).

The accelerator is a decision with a recorded reason (:attr:`BootResult.accel_reason`):
forced by the caller (``accel="kvm"|"tcg"``), or chosen automatically -- TCG when /dev/kvm
is missing or QEMU does not stay up under KVM, else KVM. KVM can be half-working (nested
virtualisation on cloud VMs and CI runners): QEMU runs, firmware and GRUB print, and the guest
kernel then hangs without a word. So under an automatically chosen KVM the console is
watched: once something has been printed, ``stall_seconds`` without new output means KVM does
not really work here, and the image is booted again under TCG (with the full timeout). TCG
runs are never judged by silence: an emulated kernel can be quiet for a long time.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from dib import cmd
from dib.errors import DibError

log = logging.getLogger("dib.boottest")

OVMF_CODE = ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = ("/usr/share/OVMF/OVMF_VARS_4M.fd", "/usr/share/OVMF/OVMF_VARS.fd")
FAILURES = (r"grub rescue>", r"Kernel panic", r"No bootable device", r"error: no such device",
            r"Boot failed", r"You are in emergency mode", r"Give root password for maintenance")
DEFAULT_EXPECT = (r"login: ",)
ACCELS = ("kvm", "tcg")
#: Seconds of console silence under KVM (after the first output) that count as a stall. A
#: kernel under working KVM reaches its first line within a second or two of GRUB's
#: "Loading initial ramdisk" and systemd reports slow jobs every few seconds, so 45 s of
#: silence is far outside a healthy KVM boot, yet short next to a TCG boot (60-200 s).
DEFAULT_STALL_SECONDS = 45.0
#: What the console shows once the bootloader hands over to the kernel (GRUB's messages,
#: the kernel's first line); only used to word the stall message.
HANDOVER = (r"Loading initial ramdisk", r"Loading Linux", r"Booting `", r"Linux version")
KVM_DEVICE = "/dev/kvm"
#: How often the console is read: the resolution of the times in :attr:`BootResult.seen`.
POLL_SECONDS = 0.25
#: How long QEMU must stay up under KVM in the probe.
PROBE_SECONDS = 2.0


@dataclass(frozen=True)
class BootResult:
    passed: bool
    seconds: float
    accel: str
    serial_log: Path
    #: pattern -> seconds after the start of the (last) boot when first seen
    seen: Dict[str, float] = field(default_factory=dict)
    failure: Optional[str] = None
    #: why ``accel`` was used, e.g. "KVM probe passed", "KVM stalled after the bootloader"
    accel_reason: str = ""
    #: when KVM stalled and TCG took over: what happened under KVM, and its console log
    kvm_stall: Optional[str] = None
    kvm_serial_log: Optional[Path] = None

    def serial_text(self) -> str:
        return self.serial_log.read_text(errors="replace")


def _exit_status(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"status {returncode}"


def kvm_usable(device: str = KVM_DEVICE, output: Optional[Path] = None) -> Tuple[bool, str]:
    """Is KVM present *and* does QEMU stay up under it (on some hosts QEMU aborts setting
    MSRs)? Returns the answer and the reason, for the log; QEMU's output goes to ``output``.
    A guest kernel may still hang on a half-working KVM; :func:`boot` watches for that."""
    if not os.access(device, os.R_OK | os.W_OK):
        return False, f"{device} not usable"
    argv = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "64", "-display",
            "none", "-monitor", "none", "-serial", "none", "-nodefaults", "-no-reboot"]
    with cmd.background(argv, stdout_path=output) as proc:
        time.sleep(PROBE_SECONDS)
        if proc.poll() is None:
            return True, "KVM probe passed"
    said = output.read_text(errors="replace").strip().splitlines() if output else []
    return False, (f"QEMU did not stay up under KVM ({_exit_status(proc.returncode)})"
                   + (f": {said[0]}" if said else ""))


def _firmware(uefi: bool, workdir: Path) -> List[str]:
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


@dataclass(frozen=True)
class _Attempt:
    seen: Dict[str, float]
    failure: Optional[str]
    #: set when the run was stopped because KVM misbehaved: what happened, and the short
    #: reason the TCG run records
    stall: Optional[str] = None
    stall_reason: str = ""


def _watch(argv: Sequence[str], serial: Path, qemu_out: Path, expect: Sequence[str],
           timeout: float, stall_seconds: Optional[float],
           interact: Optional[Callable[[], None]] = None,
           marks: Sequence[str] = ()) -> _Attempt:
    """Run QEMU until every ``expect`` pattern is seen, a failure shows, QEMU exits, the
    timeout passes or (when ``stall_seconds`` is set) the console goes silent that long
    after its first output. ``marks`` are timed when they show, not waited for. QEMU is
    killed on every way out."""
    seen: Dict[str, float] = {}
    start = time.monotonic()
    size, changed = 0, start
    with cmd.background(argv, stdout_path=qemu_out) as proc:
        while True:
            now = time.monotonic()
            elapsed = now - start
            text = serial.read_text(errors="replace") if serial.exists() else ""
            if len(text) != size:
                size, changed = len(text), now
            for pat in (*expect, *marks):
                if pat not in seen and re.search(pat, text):
                    seen[pat] = round(elapsed, 1)
                    log.info("boot test: %r after %.1f s", pat, elapsed)
            if all(pat in seen for pat in expect):
                if interact is not None:
                    interact()
                return _Attempt(seen, None)
            bad = next((p for p in FAILURES if re.search(p, text)), None)
            if bad:
                return _Attempt(seen, f"the console shows {bad!r}")
            if proc.poll() is not None:
                status = _exit_status(proc.returncode)
                failure = f"QEMU exited ({status}) before the boot finished"
                if stall_seconds is not None and proc.returncode != 0 and not text:
                    return _Attempt(seen, failure, f"QEMU exited ({status}) before the "
                                    "console showed anything", "QEMU exited under KVM")
                return _Attempt(seen, failure)
            if stall_seconds is not None and size and now - changed >= stall_seconds:
                handed_over = any(re.search(p, text) for p in HANDOVER)
                quiet = f"no console output for {now - changed:.0f} s"
                after = "the bootloader handed over" if handed_over else "its last output"
                return _Attempt(seen, quiet, f"{quiet} after {after}",
                                "KVM stalled after the bootloader" if handed_over
                                else "KVM stalled")
            if elapsed > timeout:
                return _Attempt(seen, f"timed out after {timeout:.0f} s")
            time.sleep(POLL_SECONDS)


def boot(image: Path, workdir: Path, *, image_format: str = "qcow2", uefi: bool = False,
         expect: Sequence[str] = DEFAULT_EXPECT, timeout: float = 300,
         memory_mib: int = 1024, accel: Optional[str] = None, accel_source: str = "accel",
         stall_seconds: float = DEFAULT_STALL_SECONDS,
         kvm_device: str = KVM_DEVICE, extra_args: Sequence[str] = (),
         interact: Optional[Callable[[Path], None]] = None,
         marks: Sequence[str] = ()) -> BootResult:
    """Boot ``image`` and wait until every regex in ``expect`` has appeared on the serial
    console (in any order), a failure pattern appears, QEMU exits, or ``timeout`` passes.
    The result's ``seen`` also times each regex in ``marks`` that showed by then (they are
    not waited for: milestones of the boot, for a profile).

    ``accel`` forces "kvm" or "tcg" (``accel_source`` names where that came from, for the
    reason, e.g. "DIB_BOOT_TEST_ACCEL"); None chooses (see the module docstring). When an
    automatically chosen KVM stalls for ``stall_seconds``, the image boots again under TCG
    with the full ``timeout``.

    ``extra_args`` go to QEMU as they are (e.g. ``["-nic", "user,hostfwd=..."]``); unless
    they hold a ``-nic`` or ``-netdev``, the VM has no NIC. With ``interact``, the serial
    console is also a unix socket, and ``interact(socket_path)`` is called once every
    pattern has shown, while the VM still runs; what it raises propagates after QEMU is
    stopped."""
    if accel is not None and accel not in ACCELS:
        raise ValueError(f"accel must be one of {ACCELS} or None, not {accel!r}")
    if not (stall_seconds > 0 and timeout > 0):
        raise ValueError("timeout and stall_seconds must be positive")
    cmd.require_tools("qemu-system-x86_64", "qemu-img",
                      package_hint={"qemu-system-x86_64": "qemu-system-x86",
                                    "qemu-img": "qemu-utils"})
    workdir.mkdir(parents=True, exist_ok=True)
    socket = workdir / "serial.sock"
    if interact is not None and len(os.fsencode(socket.absolute())) > 100:
        raise DibError(f"boot test: the console socket path is too long for a unix socket: "
                       f"{socket}", hint="use a shorter work directory")
    if accel is not None:
        reason = f"{accel_source}={accel}"
        watch_stall = False
    else:
        usable, reason = kvm_usable(kvm_device, workdir / "kvm-probe.out")
        accel = "kvm" if usable else "tcg"
        watch_stall = usable
    serial = workdir / "serial.log"
    start = time.monotonic()
    kvm_stall: Optional[str] = None
    kvm_serial: Optional[Path] = None
    while True:
        overlay = workdir / "boot-overlay.qcow2"
        overlay.unlink(missing_ok=True)
        cmd.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.abspath(image),
                 "-F", image_format, overlay])
        serial.unlink(missing_ok=True)
        firmware = _firmware(uefi, workdir)     # fresh UEFI variables for every attempt
        serial_args = ["-serial", f"file:{serial}"] if interact is None else [
            "-chardev", f"socket,id=console,path={socket},server=on,wait=off,logfile={serial}",
            "-serial", "chardev:console"]
        nic = [] if any(a in ("-nic", "-netdev") for a in extra_args) else ["-nic", "none"]
        argv = ["qemu-system-x86_64", "-accel", accel,
                "-cpu", "host" if accel == "kvm" else "max",
                "-m", str(memory_mib), "-smp", "2", "-display", "none", "-monitor", "none",
                *serial_args, "-no-reboot", *nic, *extra_args, *firmware,
                "-drive", f"file={overlay},if=virtio,format=qcow2"]
        log.info("boot test (%s: %s; %s): waiting for %s", accel, reason,
                 "UEFI" if uefi else "BIOS", ", ".join(expect))
        try:
            attempt = _watch(argv, serial, workdir / "qemu.out", expect, timeout,
                             stall_seconds if watch_stall else None,
                             None if interact is None else lambda: interact(socket),
                             marks)
        finally:
            overlay.unlink(missing_ok=True)
        if attempt.stall is None:
            break
        kvm_stall = attempt.stall
        kvm_serial = workdir / "serial.kvm.log"
        if serial.exists():
            serial.replace(kvm_serial)
        else:
            kvm_serial.write_text("")
        log.warning("KVM: %s; booting again under TCG (the KVM console: %s)", kvm_stall,
                    kvm_serial)
        accel, reason, watch_stall = "tcg", attempt.stall_reason, False
    return BootResult(attempt.failure is None, round(time.monotonic() - start, 1), accel,
                      serial, attempt.seen, attempt.failure, reason, kvm_stall, kvm_serial)
