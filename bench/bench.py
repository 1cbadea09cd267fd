#!/usr/bin/env python3
"""Benchmark this project against OpenStack diskimage-builder on the same element set.

Builds ``vm debian-minimal`` with diskimage-builder (from PyPI, in a throwaway venv) and with
this project's ``bin/disk-image-create``, in one run, and reports ratios (ours / theirs):

    cold         empty image cache
    warm         the same command again, same cache
    elem-v1      plus a trivial custom element (one install.d script, version 1)
    incremental  that one script edited (version 2), rebuilt
    no-op        the incremental command again, nothing changed
    boot         the cold images booted under the same QEMU: seconds to a login prompt
    edit-to-login  the incremental build plus the boot of its image to a login prompt

For every build: wall seconds, CPU seconds of the build's own process tree (os.wait4), the
CPU other processes used meanwhile, the load average before it started and the qcow2 size.
The custom element's stamp file is read back out of the incremental and no-op images (qcow2
-> raw -> read-only loop device), so a build that skipped the edit cannot look fast.

Results go to bench/results/<UTC timestamp>.md and .json and are printed. See
bench/README.md. Standard library only; run as root:

    python3 bench/bench.py [--rounds N] [--only dib|dib-project] [--skip-dib]

Host changes (all undone on exit, also on Ctrl-C / SIGTERM): on kernels without
device-mapper, diskimage-builder's ``kpartx`` / ``dmsetup`` are replaced by shims generated
into a temporary directory (partitions via the loop driver, ``/dev/mapper/loopNpM`` symlinks);
diskimage-builder reaches them through ``sudo``: without sudo on the host a ``sudo`` shim
(we run as root) goes first on its PATH, with sudo a sudoers ``secure_path`` drop-in is
written for the run and removed afterwards.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
OUR_CLI = REPO / "bin" / "disk-image-create"
RESULTS_DIR = BENCH_DIR / "results"

ELEMENTS = ["vm", "debian-minimal"]
STAMP_ELEMENT = "bench-stamp"
STAMP_FILE = "etc/dib-bench-stamp"
BUILD_STAGES = ["cold", "warm", "elem-v1", "incremental", "no-op"]
#: stages that boot an image (of a build stage, see BOOTS)
BOOT_STAGES = ["boot", "edit-to-login"]
STAGES = BUILD_STAGES + BOOT_STAGES
#: boot stage -> (the build stage whose image it boots, the stages it needs run before it)
BOOTS = {"boot": ("cold", ["cold"]),
         "edit-to-login": ("incremental", ["cold", "elem-v1", "incremental"])}
#: the one QEMU setup both tools' images boot with (dib.boottest adds the rest: -m 1024,
#: -smp 2, the disk as virtio, the serial console to a file): a virtio NIC on QEMU's user
#: network, as a VM has; the accelerator is --boot-accel (TCG by default: KVM may not work)
BOOT_QEMU_ARGS = ["-nic", "user,model=virtio-net-pci"]
BOOT_TIMEOUT = 900.0
#: milestones on the serial console, in boot order, timed by the host's clock (the boot's
#: profile; a milestone that does not show leaves its spans out): name, regex
BOOT_MARKS = [("bootloader", r"Loading Linux"), ("kernel", r"\] Linux version "),
              ("initramfs", r"\] Run /init as init process"), ("root", r"Welcome to ")]
#: the spans between them: (label, from milestone, to milestone); "start" is QEMU's start
#: and "login" the login prompt
BOOT_SPANS = [("firmware, GRUB", "start", "bootloader"),
              ("kernel and initrd loaded, kernel unpacked", "bootloader", "kernel"),
              ("kernel (initramfs unpacked)", "kernel", "initramfs"),
              ("initramfs", "initramfs", "root"),
              ("root's systemd to login", "root", "login"),
              ("all: QEMU's start to the login prompt", "start", "login")]
TOOLS = ["dib", "dib-project"]
TOOL_TITLE = {"dib": "diskimage-builder", "dib-project": "this project"}

#: goals (issue 16's): ratio ours/dib (or seconds, for no-op), see README.md
GOALS = {"cold": ("ratio", 0.35), "incremental": ("ratio", 0.10), "no-op": ("seconds", 2.0),
         "qcow2": ("ratio", 0.8), "boot": ("ratio", 0.7), "edit-to-login": ("ratio", 0.25)}

APT_SOURCES = [Path("/etc/apt/sources.list.d/debian.sources")]
SUDOERS_DIR = Path("/etc/sudoers.d")
SUDOERS_DROPIN = SUDOERS_DIR / "zz-dib-bench"
SECURE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HZ = os.sysconf("SC_CLK_TCK")


class Interrupted(KeyboardInterrupt):
    """SIGTERM / SIGHUP, handled like Ctrl-C."""


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: List[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, universal_newlines=True,
                          stdout=kw.pop("stdout", subprocess.PIPE),
                          stderr=kw.pop("stderr", subprocess.PIPE), **kw)


# ------------------------------------------------------------------------------ host facts

def host_mirrors() -> Tuple[str, str]:
    """(mirror, security mirror) from the host's deb822 apt sources."""
    uris: List[Tuple[str, str]] = []     # (uri, suites)
    for path in APT_SOURCES + sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        if not path.is_file():
            continue
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: Dict[str, str] = {}
            for line in stanza.splitlines():
                m = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
                if m:
                    fields[m.group(1).lower()] = m.group(2).strip()
            if "deb" not in fields.get("types", "deb").split():
                continue
            for uri in fields.get("uris", "").split():
                uris.append((uri, fields.get("suites", "")))
    security = [u for u, s in uris if "-security" in u or "-security" in s]
    main = [u for u, s in uris if u not in security]
    if not main or not security:
        raise SystemExit("cannot read the Debian mirror and security mirror from "
                         + ", ".join(map(str, APT_SOURCES)) + " (URIs: lines)")
    return main[0], security[0]


def cpu_busy_seconds() -> float:
    """CPU seconds spent busy on all cores since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    steal = fields[7] if len(fields) > 7 else 0
    return (user + nice + system + irq + softirq + steal) / HZ


def wait_quiet(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (at most ``max_wait`` s) until other processes use < threshold of all cores over
    3 s; returns the last measured busy fraction."""
    ncpu = os.cpu_count() or 1
    waited = 0.0
    while True:
        b0 = cpu_busy_seconds()
        time.sleep(3)
        frac = (cpu_busy_seconds() - b0) / (3 * ncpu)
        waited += 3
        if frac < threshold or waited >= max_wait:
            return frac


def have_device_mapper() -> bool:
    if not shutil.which("dmsetup"):
        return False
    return run(["dmsetup", "version"], check=False).returncode == 0


def git_describe() -> str:
    try:
        rev = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).stdout.strip()
        dirty = run(["git", "-C", str(REPO), "status", "--porcelain"]).stdout.strip()
        return rev + (" (+ uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ------------------------------------------------------------------------------ host setup

KPARTX_SHIM = r"""#!/bin/bash
# Generated by bench/bench.py for this run only: kpartx for a kernel without device-mapper.
# The partitions are the loop driver's own (partx); diskimage-builder finds them at
# /dev/mapper/<loopNpM>, so each gets a symlink there (recorded for the bench's cleanup).
set -u
record=@RECORD@
op=add dev=
for arg in "$@"; do
  case "$arg" in
    -*d*) op=del ;;
    -*) ;;
    *) dev=$arg ;;
  esac
done
if [ -z "$dev" ]; then echo "kpartx (bench shim): no device given" >&2; exit 1; fi
dev=$(readlink -f "$dev")
name=${dev##*/}
mkdir -p /dev/mapper
if [ "$op" = del ]; then
  for link in /dev/mapper/"$name"p*; do
    [ -L "$link" ] && rm -f "$link"
  done
  partx -d "$dev" >/dev/null 2>&1
  echo "del devmap : $name (bench shim)"
  exit 0
fi
# dib attached this device just now: partitions already on it are stale (left by a user that
# detached it without deleting them) and would shadow the new table, so drop them first
partx -d "$dev" >/dev/null 2>&1
partx -a "$dev" >/dev/null 2>&1 || partx -u "$dev" >/dev/null 2>&1
found=0
for _ in $(seq 100); do
  ls -d /sys/block/"$name"/"$name"p* >/dev/null 2>&1 && { found=1; break; }
  sleep 0.05
done
[ "$found" = 1 ] || { echo "kpartx (bench shim): no partitions on $dev" >&2; exit 1; }
for sys in /sys/block/"$name"/"$name"p*; do
  part=${sys##*/}
  if [ ! -b "/dev/$part" ]; then
    IFS=: read -r major minor < "$sys/dev"
    mknod "/dev/$part" b "$major" "$minor"
    echo "node /dev/$part" >> "$record"
  fi
  ln -sfn "/dev/$part" "/dev/mapper/$part"
  echo "link /dev/mapper/$part" >> "$record"
  echo "add map $part (bench shim: /dev/mapper/$part -> /dev/$part)"
done
exit 0
"""

DMSETUP_SHIM = r"""#!/bin/bash
# Generated by bench/bench.py for this run only: the dmsetup calls diskimage-builder makes
# around kpartx, for a kernel without device-mapper (see the kpartx shim next to this file).
args=()
for arg in "$@"; do
  case "$arg" in --*) ;; *) args+=("$arg") ;; esac
done
case "${args[0]:-}" in
  mknodes) exit 0 ;;
  remove)
    link="/dev/mapper/${args[1]:-}"
    [ -L "$link" ] && rm -f "$link"
    exit 0 ;;
esac
if [ -x /usr/sbin/dmsetup ]; then exec /usr/sbin/dmsetup "$@"; fi
echo "dmsetup (bench shim): unsupported: $*" >&2
exit 1
"""

SUDO_SHIM = r"""#!/bin/bash
# Generated by bench/bench.py for this run only: sudo for a caller that already is root, on a
# host without sudo. Like sudo it sets PATH to a secure path (which starts with this
# directory) and, without -E, resets the environment.
preserve=0
while [ $# -gt 0 ]; do
  case "$1" in
    -E|--preserve-env|--preserve-env=*) preserve=1; shift ;;
    -n|-H|-S|-k|--non-interactive|--set-home|--stdin) shift ;;
    -u|--user)
      case "${2:-}" in root|"#0") shift 2 ;;
        *) echo "sudo (bench shim): only root is supported" >&2; exit 1 ;; esac ;;
    --) shift; break ;;
    -*) echo "sudo (bench shim): unsupported option $1" >&2; exit 1 ;;
    *) break ;;
  esac
done
assign=()
while [ $# -gt 0 ] && [[ "$1" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; do assign+=("$1"); shift; done
if [ $# -eq 0 ]; then echo "usage: sudo [-E] [--] COMMAND [ARG]..." >&2; exit 1; fi
export PATH=@SECURE_PATH@
if [ "$preserve" = 1 ]; then exec env "${assign[@]}" "$@"; fi
keep=(PATH="$PATH" HOME=/root USER=root LOGNAME=root SHELL=/bin/bash MAIL=/var/mail/root
      SUDO_USER=root SUDO_UID=0 SUDO_GID=0 "SUDO_COMMAND=$*")
for var in TERM LANG LANGUAGE COLORTERM $(compgen -e | grep '^LC_'); do
  [ -n "${!var+x}" ] && keep+=("$var=${!var}")
done
exec env -i "${keep[@]}" "${assign[@]}" "$@"
"""


class HostSetup:
    """Shims and the sudoers drop-in diskimage-builder needs here; undone by close()."""

    def __init__(self, workdir: Path, sudo_mode: str):
        self.workdir = workdir
        self.sudo_mode = sudo_mode
        self.shims: Optional[Path] = None
        self.dropin = False
        self.made_sudoers_dir = False
        self.notes: List[str] = []

    def dib_path_prefix(self) -> List[str]:
        return [str(self.shims)] if self.shims else []

    def open(self) -> None:
        need_dm_shims = not have_device_mapper() or not shutil.which("kpartx")
        real_sudo = shutil.which("sudo")
        mode = self.sudo_mode
        if mode == "auto":
            mode = "host" if real_sudo else "shim"
        if mode == "host" and not real_sudo:
            raise SystemExit("--sudo host: sudo is not installed")
        if not need_dm_shims and mode == "host":
            self.notes.append("device-mapper works and kpartx is installed: no shims")
            return
        self.shims = Path(tempfile.mkdtemp(prefix="dibbench-shims.", dir=str(self.workdir)))
        os.chmod(self.shims, 0o755)
        secure = f"{self.shims}:{SECURE_PATH}"
        files = {}
        if need_dm_shims:
            files["kpartx"] = KPARTX_SHIM.replace("@RECORD@", str(self.shims / "created"))
            files["dmsetup"] = DMSETUP_SHIM
            self.notes.append("no usable device-mapper (or no kpartx): diskimage-builder runs "
                              "generated kpartx/dmsetup shims (loop partitions via partx, "
                              "/dev/mapper symlinks)")
        if mode == "shim":
            files["sudo"] = SUDO_SHIM.replace("@SECURE_PATH@", secure)
            self.notes.append("diskimage-builder's sudo is a generated shim (we run as root"
                              + ("" if real_sudo else "; sudo is not installed") + ")")
        for name, text in files.items():
            p = self.shims / name
            p.write_text(text)
            p.chmod(0o755)
        if mode == "host" and need_dm_shims:
            self._write_dropin(secure)

    def _write_dropin(self, secure: str) -> None:
        sudoers = Path("/etc/sudoers")
        if not re.search(r"^[@#]includedir\s+/etc/sudoers.d", sudoers.read_text(), re.M):
            raise SystemExit("/etc/sudoers does not include /etc/sudoers.d; use --sudo shim")
        if not SUDOERS_DIR.is_dir():
            SUDOERS_DIR.mkdir(mode=0o750)
            self.made_sudoers_dir = True
        tmp = SUDOERS_DIR / (SUDOERS_DROPIN.name + ".tmp")   # sudo ignores names with a dot
        tmp.write_text(f'Defaults secure_path="{secure}"\n')
        tmp.chmod(0o440)
        if shutil.which("visudo") and run(["visudo", "-c", "-q", "-f", str(tmp)],
                                          check=False).returncode != 0:
            tmp.unlink()
            raise SystemExit("visudo rejected the bench's sudoers drop-in")
        os.replace(tmp, SUDOERS_DROPIN)
        self.dropin = True
        self.notes.append(f"sudo's secure_path extended by {SUDOERS_DROPIN} for the run")

    def close(self) -> None:
        if self.dropin:
            SUDOERS_DROPIN.unlink(missing_ok=True)
            self.dropin = False
        if self.made_sudoers_dir:
            try:
                SUDOERS_DIR.rmdir()
            except OSError:
                pass
            self.made_sudoers_dir = False
        if self.shims:
            record = self.shims / "created"
            if record.exists():
                for line in reversed(record.read_text().splitlines()):
                    kind, _, path = line.partition(" ")
                    p = Path(path)
                    if kind == "link" and p.is_symlink():
                        p.unlink()
                    elif kind == "node" and p.is_block_device():
                        name = p.name
                        if not Path("/sys/class/block", name).exists():
                            p.unlink()
            shutil.rmtree(self.shims, ignore_errors=True)
            self.shims = None


def sweep(roots: List[Path]) -> List[str]:
    """Unmount everything under ``roots`` and detach loop devices backed by files under them
    (what a killed or failed build may leave). Only bench-private directories are passed."""
    done: List[str] = []
    prefixes = [str(r.resolve()) + "/" for r in roots]

    def under(path: str) -> bool:
        return any((path + "/").startswith(p) for p in prefixes)

    for _ in range(3):
        mounts = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split()[4]
                mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), mp)
                if under(mp):
                    mounts.append(mp)
        if not mounts:
            break
        for mp in sorted(mounts, key=len, reverse=True):
            if run(["umount", mp], check=False).returncode != 0:
                run(["umount", "-l", mp], check=False)
            done.append(f"unmounted {mp}")
    for dev in sorted(Path("/sys/block").glob("loop*")):
        try:
            backing = (dev / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        backing = backing.replace(" (deleted)", "")
        if under(backing):
            for link in Path("/dev/mapper").glob(dev.name + "p*"):
                if link.is_symlink():
                    link.unlink()
            run(["partx", "-d", f"/dev/{dev.name}"], check=False)
            run(["losetup", "-d", f"/dev/{dev.name}"], check=False)
            done.append(f"detached /dev/{dev.name} ({backing})")
    return done


def clear_stale_loop_partitions() -> List[str]:
    """Delete partitions left on unattached loop devices. A loop device detached without
    partition scanning keeps partitions added with partx; the next build that gets the
    device would find its old partition (of the old size) instead of its own."""
    done = []
    for dev in sorted(Path("/sys/block").glob("loop*")):
        if (dev / "loop").exists():           # attached: somebody's, leave it alone
            continue
        parts = sorted(p.name for p in dev.glob(dev.name + "p*"))
        if parts:
            run(["partx", "-d", f"/dev/{dev.name}"], check=False)
            done.append(f"/dev/{dev.name} (unattached) had stale partitions {', '.join(parts)}")
    return done


# ------------------------------------------------------------------------------ builds

class Tool:
    def __init__(self, key: str, cmd: List[str], env: Dict[str, str], tmp: Path, cache: Path):
        self.key, self.cmd, self.env, self.tmp, self.cache = key, cmd, env, tmp, cache
        self.version = ""


def snapshot_project(dest: Path) -> Path:
    """Copy this project's code and elements (the working tree, as it is now) to ``dest``
    and return the CLI there: other people's edits during the run then cannot change what
    is measured (an edited element would invalidate the layer cache mid-run)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("bin", "dib", "elements"):
        shutil.copytree(REPO / name, dest / name, symlinks=True, ignore=skip)
    for name in ("setup.cfg", "pyproject.toml"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dest / name)
    # the checkout's venv (bin/dib-host-setup), where dib's dependencies are: bin/ runs the
    # copy in it (bin/_checkout.py), as it runs the checkout; the system python3 has none
    if (REPO / ".venv").is_dir():
        (dest / ".venv").symlink_to(REPO / ".venv")
    return dest / "bin" / OUR_CLI.name


def ensure_venv(args) -> Tuple[Path, str]:
    """The venv with diskimage-builder==version: --venv, /tmp/dibvenv, or one in the
    workdir (created with pip)."""
    def version_in(venv: Path) -> str:
        py = venv / "bin" / "python"
        if not py.exists():
            return ""
        r = run([str(py), "-c", "import importlib.metadata as m; "
                 "print(m.version('diskimage-builder'))"], check=False)
        return r.stdout.strip() if r.returncode == 0 else ""

    candidates = [Path(args.venv)] if args.venv else [Path("/tmp/dibvenv")]
    for venv in candidates:
        if version_in(venv) == args.dib_version:
            return venv, args.dib_version
    venv = Path(args.venv) if args.venv else args.workdir / f"venv-dib-{args.dib_version}"
    if version_in(venv) != args.dib_version:
        say(f"creating venv {venv} with diskimage-builder=={args.dib_version}")
        run([sys.executable, "-m", "venv", str(venv)])
        r = run([str(venv / "bin" / "pip"), "install", "-q",
                 f"diskimage-builder=={args.dib_version}"], check=False)
        if r.returncode != 0:
            raise RuntimeError("pip install diskimage-builder failed:\n" + r.stdout + r.stderr)
    return venv, version_in(venv)


def write_stamp_element(elements_dir: Path, version: str) -> None:
    elem = elements_dir / STAMP_ELEMENT
    (elem / "install.d").mkdir(parents=True, exist_ok=True)
    (elem / "README.rst").write_text(
        "bench-stamp\n===========\nBenchmark element: one install.d script writes "
        f"/{STAMP_FILE}; bench/bench.py edits it between builds.\n")
    script = elem / "install.d" / f"50-{STAMP_ELEMENT}"
    script.write_text("#!/bin/bash\nset -eu\n"
                      f'echo "dib-bench-stamp {version}" > /{STAMP_FILE}\n'
                      f'echo "bench stamp {version} written"\n')
    script.chmod(0o755)


def wait_child(proc: subprocess.Popen) -> Tuple[int, float, float]:
    """Wait for ``proc`` (leader of its own process group); (rc, user s, sys s) of its tree.
    On Ctrl-C / SIGTERM: forward SIGINT to the group once, let the build clean up (SIGTERM
    after 180 s, SIGKILL after 60 s more), then re-raise."""
    try:
        _, status, ru = os.wait4(proc.pid, 0)
    except KeyboardInterrupt:
        say("interrupted: stopping the build (it unmounts and detaches first) ...")
        deadline = [(0, signal.SIGINT), (180, signal.SIGTERM), (240, signal.SIGKILL)]
        start = time.monotonic()
        sent = set()
        while True:
            for after, sig in deadline:
                if time.monotonic() - start >= after and sig not in sent:
                    sent.add(sig)
                    try:
                        os.killpg(proc.pid, sig)
                    except ProcessLookupError:
                        pass
            try:
                pid, _, _ = os.wait4(proc.pid, os.WNOHANG)
            except ChildProcessError:
                break
            except KeyboardInterrupt:
                say("still waiting for the build to clean up")
                continue
            if pid:
                break
            time.sleep(0.5)
        proc.returncode = -1
        raise
    rc = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else \
        (os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status))
    proc.returncode = rc
    return rc, ru.ru_utime, ru.ru_stime


def tail(path: Path, n: int = 30) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no {path})"
    return "\n".join(lines[-n:])


def build(tool: Tool, stage: int, name: str, rnd: int, elements: List[str], dirs: Dict[str, Path],
          quiet_wait: float) -> Dict:
    out_base = dirs["out"] / tool.key / f"{name}-r{rnd}"
    out_base.parent.mkdir(parents=True, exist_ok=True)
    qcow2 = out_base.with_name(out_base.name + ".qcow2")
    report_dir = out_base.with_name(out_base.name + ".d")
    qcow2.unlink(missing_ok=True)
    shutil.rmtree(report_dir, ignore_errors=True)
    logfile = dirs["logs"] / f"r{rnd}-{stage}-{name}-{tool.key}.log"
    stdout = logfile.with_suffix(".out")
    logfile.unlink(missing_ok=True)
    cmd = tool.cmd + ["-o", str(out_base), "--image-cache", str(tool.cache),
                      "--logfile", str(logfile)] + elements
    busy_before = wait_quiet(quiet_wait) if quiet_wait > 0 else None
    stale = clear_stale_loop_partitions()
    for line in stale:
        say(f"deleted stale loop partitions: {line}")
    load = os.getloadavg()
    say(f"{TOOL_TITLE[tool.key]}: {name} (round {rnd}), load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    t0 = time.monotonic()
    b0 = cpu_busy_seconds()
    with open(stdout, "w") as out:
        proc = subprocess.Popen(cmd, env=tool.env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd="/")
        try:
            rc, utime, stime = wait_child(proc)
        finally:
            if proc.returncode != 0:
                left = sweep([tool.tmp, dirs["out"]])
                if left:
                    say("cleaned up after the build: " + "; ".join(left))
    wall = time.monotonic() - t0
    busy = cpu_busy_seconds() - b0
    own = utime + stime
    row = {"round": rnd, "tool": tool.key, "stage": name, "rc": rc, "ok": rc == 0,
           "wall_s": round(wall, 2), "cpu_user_s": round(utime, 2), "cpu_sys_s": round(stime, 2),
           "cpu_s": round(own, 2), "others_cores": round(max(0.0, busy - own) / wall, 2),
           "loadavg_before": [round(x, 2) for x in load],
           "busy_before": None if busy_before is None else round(busy_before, 3),
           "qcow2_bytes": qcow2.stat().st_size if rc == 0 and qcow2.exists() else None,
           "qcow2": str(qcow2), "log": str(logfile), "command": cmd}
    if stale:
        row["stale_loop_partitions_deleted"] = stale
    if rc == 0 and not qcow2.exists():
        row["ok"] = False
        row["error"] = f"exit status 0 but no {qcow2}"
    report = report_dir / "build-report.json"
    if tool.key == "dib-project" and report.exists():
        try:
            rep = json.loads(report.read_text())
            steps = rep.get("steps") or []
            row["report"] = {
                "seconds": rep.get("seconds"),
                "phases": rep.get("phases"),
                "steps_cached": sum(1 for s in steps if s.get("cached")),
                "steps_total": len(steps),
                "slowest_uncached": sorted(
                    ({"step": s.get("step"), "seconds": s.get("seconds"),
                      "changed": s.get("changed")} for s in steps
                     if not s.get("cached")), key=lambda s: -(s["seconds"] or 0))[:6],
                "uncached_because": sorted({c for s in steps if not s.get("cached")
                                            for c in (s.get("changed") or [])}),
                "slowest_scripts": sorted(rep.get("scripts") or [],
                                          key=lambda s: -(s.get("seconds") or 0))[:6],
                "error": rep.get("error")}
        except (OSError, ValueError) as exc:
            row["report"] = {"error": f"unreadable build-report.json: {exc}"}
    status = "ok" if row["ok"] else f"FAILED (rc {rc})"
    size = f", qcow2 {row['qcow2_bytes'] / 2**20:.0f} MiB" if row["qcow2_bytes"] else ""
    say(f"{TOOL_TITLE[tool.key]}: {name}: {status}, {wall:.1f} s wall, {own:.1f} s CPU{size}")
    if not row["ok"]:
        text = ""
        if logfile.exists() and logfile.stat().st_size:
            text = f"--- last 30 lines of {logfile}\n{tail(logfile)}\n"
        text += f"--- last 10 lines of the console ({stdout})\n{tail(stdout, 10)}"
        # results are committed: no mirror or other host names in them
        text = re.sub(r"([a-z][a-z0-9+.-]*://)[^/\s'\"]+", r"\1<host>", text)
        row["log_tail"] = text
        print(f"{text}\n-----", file=sys.stderr, flush=True)
    return row


def boot_to_login(tool: Tool, name: str, rnd: int, qcow2: Path, dirs: Dict[str, Path],
                  accel: str, quiet_wait: float, build_row: Optional[Dict] = None) -> Dict:
    """Boot ``qcow2`` (left unchanged: QEMU writes to an overlay) with dib.boottest's QEMU
    and console watching, BOOT_QEMU_ARGS and ``accel``; the row's wall seconds are those to
    the first login prompt on the serial console, plus ``build_row``'s build seconds for
    edit-to-login."""
    sys.path.insert(0, str(REPO))
    from dib import boottest  # the project's own (standard library only), as --boot-test
    from dib.errors import DibError

    workdir = dirs["scratch"] / f"boot-{name}-r{rnd}-{tool.key}"
    shutil.rmtree(workdir, ignore_errors=True)
    busy_before = wait_quiet(quiet_wait) if quiet_wait > 0 else None
    load = os.getloadavg()
    say(f"{TOOL_TITLE[tool.key]}: {name} (round {rnd}): booting {qcow2.name} under {accel}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    b0 = cpu_busy_seconds()
    t0 = time.monotonic()
    error = None
    try:
        res = boottest.boot(qcow2, workdir, accel=accel, accel_source="--boot-accel",
                            timeout=BOOT_TIMEOUT, extra_args=BOOT_QEMU_ARGS,
                            marks=[pat for _, pat in BOOT_MARKS])
        login = res.seen.get(boottest.DEFAULT_EXPECT[0])
        marks = {mark: res.seen[pat] for mark, pat in BOOT_MARKS if pat in res.seen}
        if login is not None:
            marks["login"] = login
        if not res.passed or login is None:
            error = f"no login prompt: {res.failure}"
        serial = str(res.serial_log)
    except (DibError, OSError) as exc:
        login, serial, error, marks = None, "", f"boot failed: {exc}", {}
    wall = time.monotonic() - t0
    busy = cpu_busy_seconds() - b0
    build_s = build_row["wall_s"] if build_row else 0.0
    ok = error is None and (build_row is None or build_row["ok"])
    row = {"round": rnd, "tool": tool.key, "stage": name, "rc": 0 if ok else 1, "ok": ok,
           "wall_s": round(build_s + (login or 0.0), 2), "boot_s": login, "build_s":
           build_s if build_row else None, "accel": accel,
           # QEMU is not a child process here: no own CPU figure, only the machine's
           "cpu_user_s": None, "cpu_sys_s": None, "cpu_s": None,
           "others_cores": round(max(0.0, busy) / wall, 2) if wall else 0.0,
           "loadavg_before": [round(x, 2) for x in load],
           "busy_before": None if busy_before is None else round(busy_before, 3),
           "qcow2_bytes": None, "qcow2": str(qcow2), "log": serial,
           "boot_marks": marks, "boot_spans": boot_spans(marks),
           "command": ["qemu-system-x86_64", "-accel", accel, *BOOT_QEMU_ARGS, str(qcow2)]}
    if error:
        row["error"] = error
        row["log_tail"] = f"{error}\n--- last 10 console lines ({serial})\n" + (
            tail(Path(serial), 10) if serial else "")
        say(f"{TOOL_TITLE[tool.key]}: {name}: FAILED: {error}")
    else:
        say(f"{TOOL_TITLE[tool.key]}: {name}: login prompt after {login:.1f} s"
            + (f" (+ {build_s:.1f} s build = {row['wall_s']:.1f} s)" if build_row else ""))
    return row


def boot_spans(marks: Dict[str, float]) -> Dict[str, Optional[float]]:
    """Seconds of each BOOT_SPANS span from the milestones' times (seconds since QEMU
    started); None for a span whose either end did not show."""
    at = {"start": 0.0, **marks}
    return {label: (round(at[end] - at[begin], 1) if begin in at and end in at else None)
            for label, begin, end in BOOT_SPANS}


def read_from_image(qcow2: Path, relpath: str, scratch: Path) -> str:
    """The content of ``relpath`` on any partition of ``qcow2``, read through a read-only
    loop device; raises FileNotFoundError if no partition has it."""
    raw = Path(tempfile.mkstemp(prefix="dibbench-verify.", suffix=".raw", dir=str(scratch))[1])
    mnt = Path(tempfile.mkdtemp(prefix="dibbench-mnt.", dir=str(scratch)))
    loop = None
    mounted = False
    try:
        run(["qemu-img", "convert", "-O", "raw", str(qcow2), str(raw)])
        loop = run(["losetup", "-r", "-P", "--show", "-f", str(raw)]).stdout.strip()
        run(["partx", "-a", loop], check=False)       # -P usually did it already
        name = Path(loop).name
        parts = []
        for _ in range(50):
            parts = sorted(Path("/sys/block", name).glob(name + "p*"))
            if parts:
                break
            time.sleep(0.1)
        devs = []
        for sys_part in parts or [Path("/sys/block", name)]:
            dev = Path("/dev", sys_part.name)
            if not dev.exists():
                major, minor = (sys_part / "dev").read_text().strip().split(":")
                os.mknod(dev, 0o600 | 0o060000, os.makedev(int(major), int(minor)))
            devs.append(dev)
        for dev in devs:
            for opts in ("ro,noload", "ro"):
                if run(["mount", "-o", opts, str(dev), str(mnt)], check=False).returncode == 0:
                    mounted = True
                    break
            if not mounted:
                continue
            try:
                f = mnt / relpath
                if f.is_file():
                    return f.read_text().strip()
            finally:
                run(["umount", str(mnt)], check=False)
                mounted = False
        raise FileNotFoundError(f"/{relpath} is on no partition of {qcow2}")
    finally:
        if mounted:
            if run(["umount", str(mnt)], check=False).returncode != 0:
                run(["umount", "-l", str(mnt)], check=False)
        if loop:
            run(["partx", "-d", loop], check=False)
            run(["losetup", "-d", loop], check=False)
        raw.unlink(missing_ok=True)
        try:
            mnt.rmdir()
        except OSError:
            pass


# ------------------------------------------------------------------------------ report

def median(vals: List[float]) -> Optional[float]:
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v: Optional[float], spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def summarize(rows: List[Dict]) -> List[Dict]:
    """Per stage: median over rounds of each tool's successful builds, and the ratio."""
    out = []
    for stage in STAGES:
        entry = {"stage": stage}
        for tool in TOOLS:
            mine = [r for r in rows if r["tool"] == tool and r["stage"] == stage]
            ok = [r for r in mine if r["ok"]]
            entry[tool] = {
                "runs": len(mine), "ok": len(ok),
                "wall_s": median([r["wall_s"] for r in ok]),
                "cpu_s": median([r["cpu_s"] for r in ok]),
                "qcow2_bytes": median([r["qcow2_bytes"] for r in ok]),
                "load1": [r["loadavg_before"][0] for r in mine],
                "others_cores": median([r["others_cores"] for r in mine]),
            }
        d, o = entry["dib"]["wall_s"], entry["dib-project"]["wall_s"]
        entry["ratio"] = round(o / d, 3) if d and o is not None else None
        dc, oc = entry["dib"]["cpu_s"], entry["dib-project"]["cpu_s"]
        entry["cpu_ratio"] = round(oc / dc, 3) if dc and oc is not None else None
        out.append(entry)
    return out


def goal_text(stage: str, ratio: Optional[float], ours: Optional[float]) -> Tuple[str, str]:
    if stage not in GOALS:
        return "", ""
    kind, limit = GOALS[stage]
    if kind == "ratio":
        met = "-" if ratio is None else ("yes" if ratio <= limit else "no")
        return f"≤ {limit:.2f}×", met
    met = "-" if ours is None else ("yes" if ours <= limit else "no")
    return f"ours ≤ {limit:.0f} s", met


def render_boot_spans(rows: List[Dict]) -> List[str]:
    """The boot stages' profile: per stage, the median seconds of each BOOT_SPANS span
    for each tool (lines of markdown; none without a boot row that has spans)."""
    L: List[str] = []
    for stage in BOOT_STAGES:
        booted = [r for r in rows if r["stage"] == stage and r.get("boot_spans")]
        if not booted:
            continue
        if not L:
            L += ["", "## Where the boot time went (serial console)", "",
                  "Seconds between milestones on the serial console, by the host's clock "
                  "(the console is read every 0.25 s), medians over the rounds: GRUB's "
                  "`Loading Linux`, the kernel's first line (printed once it has been "
                  "unpacked and its console is up), `Run /init`, systemd's `Welcome to` "
                  "on the root filesystem, the login prompt."]
        L += ["", f"**{stage}**", "", "| span | diskimage-builder s | this project s |",
              "|---|---:|---:|"]
        for label, _, _ in BOOT_SPANS:
            cells = [fmt(median([r["boot_spans"][label] for r in booted if r["tool"] == tool]))
                     for tool in TOOLS]
            L.append(f"| {label} | {' | '.join(cells)} |")
    return L


def render(meta: Dict, rows: List[Dict], summary: List[Dict]) -> str:
    L: List[str] = []
    L.append(f"# Benchmark: `{' '.join(ELEMENTS)}`, this project vs diskimage-builder")
    L.append("")
    L.append(f"- run: {meta['started_utc']} – {meta.get('finished_utc', '?')} (UTC), "
             f"{meta['rounds']} round(s){', INTERRUPTED' if meta.get('interrupted') else ''}")
    L.append(f"- host: {meta['host']['cpus']} CPUs, {meta['host']['mem_gib']} GiB RAM, "
             f"kernel {meta['host']['kernel']}, Python {meta['host']['python']}")
    L.append(f"- diskimage-builder {meta.get('dib_version') or '-'} "
             f"({meta.get('dib_venv') or 'not run'}); this project {meta['project_rev']}"
             + (f", run from a copy of the working tree taken at the start "
                f"({meta['project_snapshot']})" if meta.get("project_snapshot") else ""))
    L.append(f"- release {meta['env']['DIB_RELEASE']}, mirrors from the host's apt sources; "
             "qcow2 output; each tool has its own empty image cache for cold")
    if meta.get("ours_env"):
        L.append("- **this project's builds only** had " + ", ".join(
            f"`{k}={v}`" for k, v in sorted(meta["ours_env"].items()))
                 + ": the two tools' images differ, so the ratios are not like for like")
    for note in meta.get("host_notes", []):
        L.append(f"- {note}")
    L.append(f"- wait for a quiet box before each build: up to {meta['quiet_wait']:.0f} s "
             "(until other processes use < 25 % of the CPUs)")
    L.append("")
    L.append("Seconds are wall-clock medians over the rounds; ratio = this project / "
             "diskimage-builder (lower is better for us). CPU = user+sys of the build's own "
             "process tree. *Load* = 1-minute load average just before each build "
             "(diskimage-builder / this project); *others* = cores other processes kept busy "
             "during the build (median). Other builds may share this machine: compare ratios "
             "from the same run only.")
    L.append("")
    L.append("| build | diskimage-builder s | this project s | ratio | goal | met | "
             "dib CPU s | our CPU s | CPU ratio | load before | others (cores) |")
    L.append("|---|---:|---:|---:|---|---|---:|---:|---:|---|---|")
    for e in summary:
        d, o = e["dib"], e["dib-project"]

        def side(x):
            if x["runs"] and not x["ok"]:
                return "FAILED"
            if x["runs"] > x["ok"]:
                return f"{fmt(x['wall_s'])} ({x['runs'] - x['ok']} failed)"
            return fmt(x["wall_s"])

        goal, met = goal_text(e["stage"], e["ratio"], o["wall_s"])
        load = " / ".join(",".join(f"{v:.2f}" for v in x["load1"]) or "-" for x in (d, o))
        others = " / ".join(fmt(x["others_cores"], ".2f") for x in (d, o))
        L.append(f"| {e['stage']} | {side(d)} | {side(o)} | "
                 f"{fmt(e['ratio'], '.3f') + '×' if e['ratio'] is not None else '-'} | "
                 f"{goal} | {met} | {fmt(d['cpu_s'])} | {fmt(o['cpu_s'])} | "
                 f"{fmt(e['cpu_ratio'], '.3f') + '×' if e['cpu_ratio'] is not None else '-'} | "
                 f"{load} | {others} |")
    cold = next(e for e in summary if e["stage"] == "cold")
    ds, os_ = cold["dib"]["qcow2_bytes"], cold["dib-project"]["qcow2_bytes"]
    ratio = os_ / ds if ds and os_ else None
    goal, met = goal_text("qcow2", ratio, None)
    L.append(f"| qcow2 size (cold), MiB | {fmt(ds and ds / 2**20)} | "
             f"{fmt(os_ and os_ / 2**20)} | "
             f"{fmt(ratio, '.3f') + '×' if ratio is not None else '-'} | {goal} | {met} | "
             "| | | | |")
    L.append("")
    L.append("Stamp check (the custom element's file, read back from the images):")
    L.append("")
    for v in meta.get("verify", []):
        L.append(f"- {TOOL_TITLE[v['tool']]}, {v['stage']} r{v['round']}: "
                 f"{'ok' if v['ok'] else 'FAILED'} — expected `{v['expected']}`, "
                 f"found `{v['found']}`")
    if not meta.get("verify"):
        L.append("- (no image to check)")
    L.append("")
    L.append("## Every build")
    L.append("")
    L.append("| round | tool | build | status | wall s | CPU s (user+sys) | load before "
             "(1/5/15 min) | others (cores) | qcow2 MiB | our cached steps |")
    L.append("|---|---|---|---|---:|---:|---|---:|---:|---|")
    for r in rows:
        rep = r.get("report") or {}
        cached = (f"{rep['steps_cached']}/{rep['steps_total']}"
                  if "steps_total" in rep else "")
        size = fmt(r["qcow2_bytes"] / 2**20, ".0f") if r["qcow2_bytes"] else "-"
        cpu = ("-" if r["cpu_s"] is None else
               f"{r['cpu_s']:.1f} ({r['cpu_user_s']:.0f}+{r['cpu_sys_s']:.0f})")
        L.append(f"| {r['round']} | {TOOL_TITLE[r['tool']]} | {r['stage']} | "
                 f"{'ok' if r['ok'] else 'FAILED rc ' + str(r['rc'])} | {r['wall_s']:.1f} | "
                 f"{cpu} | "
                 f"{' '.join(f'{x:.2f}' for x in r['loadavg_before'])} | "
                 f"{r['others_cores']:.2f} | {size} | {cached} |")
    ours = [r for r in rows if r["tool"] == "dib-project" and r.get("report")]
    if ours:
        L.append("")
        L.append("## Where this project's time went (its build-report.json)")
        for r in ours:
            rep = r["report"]
            if "phases" not in rep:
                continue
            L.append("")
            L.append(f"**{r['stage']} r{r['round']}** ({rep.get('seconds')} s in the report, "
                     f"{rep.get('steps_cached')}/{rep.get('steps_total')} steps cached): "
                     + (", ".join(f"{p['phase']} {p['seconds']:.1f}"
                                  for p in sorted(rep.get("phases") or [],
                                                  key=lambda p: -p["seconds"])
                                  if p["seconds"] >= 0.5) or "every phase under 0.5 s"))
            if rep.get("slowest_uncached"):
                L.append("")
                ran = ", ".join(f"{s['step']} {s['seconds']:.1f}"
                                for s in rep["slowest_uncached"] if s["seconds"] is not None)
                why = ", ".join(rep.get("uncached_because") or []) or "-"
                L.append(f"  slowest steps run: {ran}; inputs that changed: {why}")
    L.extend(render_boot_spans(rows))
    failed = [r for r in rows if not r["ok"]]
    if failed:
        L.append("")
        L.append("## Failed builds")
        for r in failed:
            L.append("")
            L.append(f"**{TOOL_TITLE[r['tool']]} {r['stage']} r{r['round']}** "
                     f"(rc {r['rc']}, log {r['log']}):")
            L.append("")
            L.append("```")
            L.append(r.get("error") or r.get("log_tail", ""))
            L.append("```")
    L.append("")
    return "\n".join(L)


# ------------------------------------------------------------------------------ main

def parse_assignment(p: argparse.ArgumentParser, text: str) -> Tuple[str, str]:
    """``NAME=VALUE`` of --ours-env, NAME a shell variable name."""
    name, eq, value = text.partition("=")
    if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        p.error(f"--ours-env {text!r}: expected NAME=VALUE")
    return name, value


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=1, help="rounds of all builds (default 1)")
    p.add_argument("--only", choices=TOOLS, help="build with one tool only")
    p.add_argument("--skip-dib", action="store_true", help="same as --only dib-project")
    p.add_argument("--dib-version", default="3.43.0", help="diskimage-builder version")
    p.add_argument("--venv", help="venv with diskimage-builder (default /tmp/dibvenv if it "
                                  "has the version, else one under the workdir)")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp/dib-bench"),
                   help="caches, outputs, logs (default /var/tmp/dib-bench)")
    p.add_argument("--stages", default=",".join(STAGES),
                   help="comma-separated subset of " + ",".join(STAGES))
    p.add_argument("--quiet-wait", type=float, default=60.0,
                   help="before each build wait up to this many seconds for the machine to "
                        "be quiet (default 60; 0 = do not wait)")
    p.add_argument("--sudo", choices=["auto", "host", "shim"], default="auto",
                   help="diskimage-builder's sudo: the host's (with a sudoers drop-in when "
                        "shims are needed) or a generated shim (default: shim without sudo)")
    p.add_argument("--no-snapshot", action="store_true",
                   help="run this project from the checkout itself, not from a copy taken "
                        "at the start of the run")
    p.add_argument("--boot-accel", choices=["tcg", "kvm"], default="tcg",
                   help="QEMU accelerator of the boot stages, the same for both tools "
                        "(default tcg)")
    p.add_argument("--keep-images", action="store_true",
                   help="keep the qcow2 files and the tools' caches (default: each image is "
                        "deleted once measured and checked, the caches when the run ends)")
    p.add_argument("--ours-env", action="append", default=[], metavar="NAME=VALUE",
                   help="an extra variable for this project's builds only (repeatable), e.g. "
                        "DIB_DEBIAN_KERNEL_FLAVOUR=cloud; the report names it, since the "
                        "two images then differ")
    args = p.parse_args(argv)
    args.ours_env = dict(parse_assignment(p, a) for a in args.ours_env)
    if args.skip_dib:
        if args.only == "dib":
            p.error("--skip-dib contradicts --only dib")
        args.only = "dib-project"
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in args.stages if s not in STAGES]
    if bad:
        p.error(f"unknown stage(s): {', '.join(bad)}")
    # a boot stage boots the image of a build stage: that build (and those it builds on) runs
    args.implied_stages = [need for st in args.stages if st in BOOTS
                           for need in BOOTS[st][1] if need not in args.stages]
    args.stages += list(dict.fromkeys(args.implied_stages))
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    args.workdir = args.workdir.resolve()
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        print("bench.py: run as root (both tools need mount, loop devices, chroot)",
              file=sys.stderr)
        return 2
    for cmd in ("qemu-img", "losetup", "partx", "mount"):
        if not shutil.which(cmd):
            print(f"bench.py: {cmd} is missing", file=sys.stderr)
            return 2

    def on_signal(signum, _frame):
        raise Interrupted(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    started = datetime.datetime.now(datetime.timezone.utc)
    stamp_id = started.strftime("%Y%m%dT%H%M%SZ")
    wd = args.workdir
    dirs = {"out": wd / "out", "logs": wd / "logs", "cache": wd / "cache", "tmp": wd / "tmp",
            "elements": wd / "elements", "scratch": wd / "scratch"}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    mirror, security = host_mirrors()
    tools_wanted = [args.only] if args.only else TOOLS
    meminfo = Path("/proc/meminfo").read_text()
    mem_kib = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))
    meta: Dict = {
        "started_utc": started.strftime("%Y-%m-%d %H:%M:%S"), "rounds": args.rounds,
        "elements": ELEMENTS, "stages": args.stages, "tools": tools_wanted,
        "implied_stages": args.implied_stages, "boot_accel": args.boot_accel,
        "boot_qemu_args": BOOT_QEMU_ARGS,
        "quiet_wait": args.quiet_wait, "project_rev": git_describe(),
        "host": {"cpus": os.cpu_count(), "mem_gib": round(mem_kib / 2**20, 1),
                 "kernel": platform.release(), "python": platform.python_version()},
        "env": {"DIB_RELEASE": "bookworm"}, "ours_env": args.ours_env, "verify": [],
    }
    rows: List[Dict] = []
    host = HostSetup(wd, args.sudo)
    interrupted = False
    try:
        base_env = dict(os.environ)
        for var in [k for k in base_env if k.startswith("DIB_")] + ["ELEMENTS_PATH", "TMP_DIR"]:
            base_env.pop(var, None)
        base_env.update({"DIB_RELEASE": "bookworm", "DIB_DISTRIBUTION_MIRROR": mirror,
                         "DIB_DEBIAN_SECURITY_MIRROR": security, "OVERWRITE_OLD_IMAGE": "1",
                         "ELEMENTS_PATH": str(dirs["elements"])})
        tools: List[Tool] = []
        if "dib" in tools_wanted:
            try:
                venv, version = ensure_venv(args)
            except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                say(f"diskimage-builder unavailable, its half is skipped: {exc}")
                venv = None
            if venv:
                host.open()
                meta["host_notes"] = host.notes
                env = dict(base_env)
                env["PATH"] = ":".join(host.dib_path_prefix()
                                       + [str(venv / "bin"), env.get("PATH", SECURE_PATH)])
                env["VIRTUAL_ENV"] = str(venv)
                t = Tool("dib", [str(venv / "bin" / "disk-image-create")], env,
                         dirs["tmp"] / "dib", dirs["cache"] / "dib")
                t.version = version
                meta["dib_version"], meta["dib_venv"] = version, str(venv)
                tools.append(t)
        if "dib-project" in tools_wanted:
            cli = OUR_CLI
            if not args.no_snapshot:
                cli = snapshot_project(wd / "project")
                meta["project_snapshot"] = str(cli.parent.parent)
            tools.append(Tool("dib-project", [sys.executable, str(cli)],
                              {**base_env, **args.ours_env},
                              dirs["tmp"] / "ours", dirs["cache"] / "ours"))
        for t in tools:
            t.tmp.mkdir(parents=True, exist_ok=True)
            t.env["TMP_DIR"] = str(t.tmp)
        run_id = stamp_id
        for rnd in range(1, args.rounds + 1):
            order = tools if rnd % 2 else list(reversed(tools))
            for t in tools:
                shutil.rmtree(t.cache, ignore_errors=True)
                t.cache.mkdir(parents=True)
            # v1 from the start of the round: the script edit is the round's only change
            write_stamp_element(dirs["elements"], "v1")
            expected = "dib-bench-stamp v1"
            built: Dict[Tuple[str, str], Dict] = {}   # (tool, build stage) -> row
            booted = {BOOTS[b][0] for b in BOOT_STAGES if b in args.stages}
            for i, stage in enumerate(STAGES, 1):
                if stage not in args.stages:
                    continue
                if stage in BOOTS:
                    source = BOOTS[stage][0]
                    for t in order:
                        src = built.get((t.key, source))
                        if src is None or not src["ok"]:
                            say(f"{TOOL_TITLE[t.key]}: {stage}: skipped, its {source} "
                                "build failed")
                            continue
                        rows.append(boot_to_login(
                            t, stage, rnd, Path(src["qcow2"]), dirs, args.boot_accel,
                            args.quiet_wait, src if stage == "edit-to-login" else None))
                    continue
                elements = list(ELEMENTS)
                if stage in ("elem-v1", "incremental", "no-op"):
                    elements.append(STAMP_ELEMENT)
                if stage == "incremental":
                    write_stamp_element(dirs["elements"], f"v2-{run_id}-r{rnd}")
                    expected = f"dib-bench-stamp v2-{run_id}-r{rnd}"
                for t in order:
                    row = build(t, i, stage, rnd, elements, dirs, args.quiet_wait)
                    rows.append(row)
                    built[(t.key, stage)] = row
                    if stage in ("incremental", "no-op") and row["ok"]:
                        try:
                            found = read_from_image(Path(row["qcow2"]), STAMP_FILE,
                                                    dirs["scratch"])
                        except (OSError, subprocess.CalledProcessError) as exc:
                            found = f"error: {exc}"
                        ok = found == expected
                        meta["verify"].append({"tool": t.key, "stage": stage, "round": rnd,
                                               "expected": expected, "found": found, "ok": ok})
                        say(f"{TOOL_TITLE[t.key]}: {stage}: stamp "
                            f"{'ok' if ok else 'WRONG'}: {found!r}")
                        if not ok:
                            row["ok"] = False
                            row["error"] = f"stamp check: expected {expected!r}, found {found!r}"
                    if row["ok"] and not args.keep_images and stage not in booted:
                        Path(row["qcow2"]).unlink(missing_ok=True)
            if not args.keep_images:   # the images kept for the boot stages
                for row in built.values():
                    Path(row["qcow2"]).unlink(missing_ok=True)
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted; cleaning up and reporting what finished")
    finally:
        # ignore further signals while undoing host changes
        old = {s: signal.signal(s, signal.SIG_IGN)
               for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            left = sweep([dirs["tmp"], dirs["out"], dirs["scratch"]])
            if left:
                say("cleanup: " + "; ".join(left))
            elif not args.keep_images:
                # every round starts from empty caches anyway: GiBs nothing reads again
                shutil.rmtree(dirs["cache"], ignore_errors=True)
            host.close()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    meta["interrupted"] = interrupted
    meta["finished_utc"] = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S")
    summary = summarize(rows)
    text = render(meta, rows, summary)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    md = RESULTS_DIR / f"{stamp_id}.md"
    md.write_text(text)
    (RESULTS_DIR / f"{stamp_id}.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "builds": rows}, indent=2) + "\n")
    print(text)
    say(f"saved {md} and {md.with_suffix('.json')}")
    if interrupted:
        return 130
    return 0 if rows and all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
