"""Image chroot (install.d): the staged source into DOCKLET_HOME with its generated files,
/etc/docklet, this package and its launchers, system settings and the enabled units."""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path
from typing import List, Optional

from .base import (ENV_FILE, LIB_DIR, PACKAGE, PATCH_META, PATCHES_FILE, SOURCE_INFO_FILE,
                   SOURCE_META, UNIT_DIR, DockletError)
from .render import conf_values, enabled_units, render_conf, render_etcd_default, render_units
from .settings import Settings
from .source import check_layout, executable_files


def _unit_path(root: Path, unit: str) -> Optional[Path]:
    for d in ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"):
        p = root / d / unit
        if p.is_file():
            return p
    return None


def install_units(root: Path, s: Settings) -> List[str]:
    """Write the units and enable them (WantedBy symlinks, as systemctl enable would)."""
    written = []
    for name, text in render_units(s).items():
        path = root / UNIT_DIR.lstrip("/") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, 0o644)
        written.append(name)
    for unit, target in enabled_units(s):
        src = _unit_path(root, unit)
        if src is None:
            raise DockletError(f"cannot enable {unit}: no unit file in the image",
                               hint="was its package installed (package-installs.yaml)?")
        wants = root / UNIT_DIR.lstrip("/") / f"{target}.wants"
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/" + os.fspath(src.relative_to(root)))
    if not s.has_master:
        # worker mode: nothing of the master side may start
        for unit in ("etcd.service", "nginx.service"):
            link = root / UNIT_DIR.lstrip("/") / "multi-user.target.wants" / unit
            if link.is_symlink():
                link.unlink()
    return written


LAUNCHER = """#!/usr/bin/python3 -I
# dib docklet element: {what}
import sys
sys.path.insert(0, {lib!r})
import docklet_image
sys.exit(docklet_image.main({args!r} + sys.argv[1:]))
"""


def install_tree(root: Path, stage: Path, s: Settings, *, package_dir: Path) -> None:
    """install.d: the staged (validated, patched) source to DOCKLET_HOME, its generated files,
    /etc/docklet, this package (``package_dir``) and its launchers, the mount.aufs shim."""
    home = root / s.home.lstrip("/")
    if home.exists():
        shutil.rmtree(home)
    home.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(stage, home, symlinks=True,
                    ignore=shutil.ignore_patterns(SOURCE_META, PATCH_META, ".git"))
    check_layout(home)
    for p in executable_files(home):
        os.chmod(p, stat.S_IMODE(p.stat().st_mode) | 0o755)
    # what prepare.sh and a worker start would create (the master's /settings/ page reads
    # conf/container.conf, which a master-only host never gets otherwise)
    shutil.copyfile(home / "web/templates/home.template", home / "web/templates/home.html")
    shutil.copyfile(home / "conf/container/lxc3.container.conf", home / "conf/container.conf")
    shutil.copyfile(home / "conf/container/lxc3.container.batch.conf",
                    home / "conf/container.batch.conf")
    conf = home / "conf/docklet.conf"
    template = (home / "conf/docklet.conf.template").read_text()
    pairs = [(k, v) for k, v in conf_values(s, device="eth0", ip="127.0.0.1",
                                             auth_key=s["DOCKLET_AUTH_KEY"] or "unset-until-boot")
             if k not in ("NETWORK_DEVICE", "PUBLIC_IP", "PORTAL_URL", "AUTH_KEY")]
    conf.write_text(render_conf(template, pairs, note="NETWORK_DEVICE, PUBLIC_IP, PORTAL_URL "
                                "and AUTH_KEY are added by docklet-setup at boot"))
    os.chmod(conf, 0o640)

    etc = root / "etc/docklet"
    etc.mkdir(parents=True, exist_ok=True)
    os.chmod(etc, 0o755)
    env_file = root / ENV_FILE.lstrip("/")
    env_file.write_text(s.runtime_env())
    os.chmod(env_file, 0o600)
    meta = stage / SOURCE_META
    info = json.loads(meta.read_text()) if meta.is_file() else {}
    (root / SOURCE_INFO_FILE.lstrip("/")).write_text(
        "".join(f"{k}={info.get(k) or '-'}\n" for k in ("repo", "ref", "kind", "commit",
                                                         "version")))
    patches = json.loads((stage / PATCH_META).read_text()) if (stage / PATCH_META).is_file() \
        else []
    (root / PATCHES_FILE.lstrip("/")).write_text(
        "# patch file status (applied here, or already in the source)\n" +
        "".join(f"{p['patch']} {p['file']} {p['status']}\n" for p in patches))

    lib = root / LIB_DIR.lstrip("/")
    lib.mkdir(parents=True, exist_ok=True)
    package = lib / PACKAGE
    if package.exists():
        shutil.rmtree(package)
    shutil.copytree(package_dir, package, copy_function=shutil.copyfile,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    sbin = root / "usr/local/sbin"
    sbin.mkdir(parents=True, exist_ok=True)
    for name, args, what in (("docklet-setup", ["setup"], "configure Docklet for this machine"),
                             ("docklet-service", ["service"],
                              "start/stop Docklet's master and worker for systemd")):
        (sbin / name).write_text(LAUNCHER.format(what=what, lib=LIB_DIR, args=args))
        os.chmod(sbin / name, 0o755)
    shim = root / "sbin/mount.aufs"
    if s["DOCKLET_UNIONFS"] == "overlay":
        shim.parent.mkdir(parents=True, exist_ok=True)
        shim.write_text(LAUNCHER.format(
            what="aufs -> overlayfs: docklet mounts container roots with -t aufs, which "
                 "current kernels lack", lib=LIB_DIR, args=["mount-aufs"]))
        os.chmod(shim, 0o755)
    for sub in ("local", "global"):
        (root / s.fs_prefix.lstrip("/") / sub).mkdir(parents=True, exist_ok=True)


def install_system(root: Path, s: Settings) -> None:
    """install.d: system settings (sysctl, modules, cgroup v1, nginx, lxc-net, etcd), units."""
    def write(rel: str, text: str, mode: int = 0o644) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        os.chmod(p, mode)

    write("etc/sysctl.d/60-docklet.conf",
          "# dib docklet element: containers reach the outside through the host (NAT)\n"
          "net.ipv4.ip_forward=1\n")
    write("etc/modules-load.d/docklet.conf",
          "# dib docklet element: loop (volume pool), overlay (container roots), Open vSwitch,\n"
          "# device-mapper (LVM), fuse (lxcfs)\nloop\noverlay\nopenvswitch\ndm_mod\nfuse\n")
    grub = root / "etc/default/grub.d/60-docklet.cfg"
    if s["DOCKLET_CGROUP"] == "v1":
        write("etc/default/grub.d/60-docklet.cfg",
              "# dib docklet element: docklet's container limits and monitoring use cgroup v1\n"
              'GRUB_CMDLINE_LINUX="${GRUB_CMDLINE_LINUX:-} systemd.unified_cgroup_hierarchy=0"\n')
    elif grub.exists():
        grub.unlink()
    # docklet's daemons run as root and still call "sudo lxc-ls" every few seconds: no
    # syslog line and no PAM session (journal noise) for root's own sudo
    write("etc/sudoers.d/docklet",
          "# dib docklet element: docklet's root daemons run sudo every few seconds\n"
          "Defaults:root !syslog, !pam_session\n", 0o440)
    lxc_net = root / "etc/default/lxc-net"
    text = lxc_net.read_text() if lxc_net.is_file() else ""
    text, n = re.subn(r'(?m)^USE_LXC_BRIDGE=.*$', 'USE_LXC_BRIDGE="false"', text)
    if not n:
        text += 'USE_LXC_BRIDGE="false"\n'
    write("etc/default/lxc-net", text)
    if s.has_master:
        default_site = root / "etc/nginx/sites-enabled/default"
        if default_site.is_symlink() or default_site.exists():
            default_site.unlink()
        # single-mode defaults until docklet-setup knows the machine's address
        write("etc/default/etcd", render_etcd_default(s, "127.0.0.1"))
    install_units(root, s)
