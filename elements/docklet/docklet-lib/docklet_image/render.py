"""The texts the element generates from the settings, without touching any file:
docklet.conf (and how Docklet reads it back), /etc/default/etcd, and the systemd units."""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

from .base import DockletError
from .settings import CONF_TOKEN, Settings

CONF_BEGIN = "# >>> dib docklet element: generated, edit /etc/docklet/docklet.env instead"
CONF_END = "# <<< dib docklet element"


# -- docklet.conf ------------------------------------------------------------------------------

def conf_values(s: Settings, *, device: str, ip: str, auth_key: str) -> List[Tuple[str, str]]:
    """The KEY=value pairs the element writes into docklet.conf, in order."""
    portal = s["DOCKLET_PORTAL_URL"]
    if portal == "auto":
        portal = f"http://{ip}:{s.port('NGINX')}"
    pairs = [
        ("FS_PREFIX", s.fs_prefix),
        ("CLUSTER_NAME", s["DOCKLET_CLUSTER_NAME"]),
        ("CLUSTER_NET", s["DOCKLET_CLUSTER_NET"]),
        ("BATCH_NET", s["DOCKLET_BATCH_NET"]),
        ("ETCD", s.etcd),
        ("NETWORK_DEVICE", device),
        ("PUBLIC_IP", ip),
        ("PORTAL_URL", portal),
        ("MASTER_PORT", str(s.port("MASTER"))),
        ("WORKER_PORT", str(s.port("WORKER"))),
        ("NGINX_PORT", str(s.port("NGINX"))),
        ("PROXY_PORT", str(s.port("PROXY"))),
        ("PROXY_API_PORT", str(s.port("PROXY_API"))),
        ("WEB_PORT", str(s.port("WEB"))),
        ("STORAGE", s["DOCKLET_STORAGE"]),
    ]
    if s["DOCKLET_STORAGE"] == "disk":
        pairs.append(("DISK", s["DOCKLET_DISK"]))
    pairs += [
        ("DISKPOOL_SIZE", s["DOCKLET_DISKPOOL_SIZE"]),
        ("DISTRIBUTED_GATEWAY", s["DOCKLET_DISTRIBUTED_GATEWAY"]),
        ("BATCH_ON", s["DOCKLET_BATCH_ON"]),
        ("AUTH_KEY", auth_key),
    ]
    pairs += s.extra_conf()
    pairs.append(("PYTHONPATH", s.pylib))
    for key, value in pairs:
        if not value or not CONF_TOKEN.match(value):
            raise DockletError(f"docklet.conf: {key}={value!r} cannot be written safely "
                               "(empty, or spaces/quotes/'=')")
    return pairs


def render_conf(template: str, pairs: Sequence[Tuple[str, str]], *, note: str = "") -> str:
    """docklet.conf: the upstream template (comments) without any earlier generated block,
    then one generated block of unquoted KEY=value lines."""
    kept, skipping = [], False
    for line in template.splitlines():
        if line.strip() == CONF_BEGIN:
            skipping = True
            continue
        if skipping:
            if line.strip() == CONF_END:
                skipping = False
            continue
        kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    block = [CONF_BEGIN]
    if note:
        block += [f"# {x}" for x in note.splitlines()]
    block += [f"{k}={v}" for k, v in pairs]
    block += ["export PYTHONPATH", CONF_END]
    return "\n".join(kept + [""] + block) + "\n"


def loadenv(text: str) -> Dict[str, str]:
    """What docklet's utils/tools.loadenv makes of a config file (split on '=', keep the
    second field, strip spaces); the lines bin/* copies into docklet-running.conf."""
    out = {}
    for line in text.splitlines():
        if not re.match(r"^[\s]*[a-zA-Z]", line):
            continue
        line = line.strip()
        parts = line.split("=")
        if len(parts) < 2:
            continue
        out[parts[0].strip()] = parts[1].strip()
    return out


# -- etcd, units ------------------------------------------------------------------------------

def render_etcd_default(s: Settings, ip: str) -> str:
    listen = s.etcd_listen
    client_port = s.etcd.rsplit(":", 1)[1] if s.mode != "worker" else "2379"
    advertise = ip if listen == "0.0.0.0" else listen
    return "\n".join([
        "# Written by docklet-setup (dib docklet element) at every boot; edit",
        "# /etc/docklet/docklet.env (DOCKLET_ETCD_LISTEN) instead.",
        "# Docklet speaks etcd's v2 API, which etcd >= 3.4 serves only when enabled.",
        "ETCD_NAME=docklet",
        "ETCD_DATA_DIR=/var/lib/etcd/default",
        f"ETCD_LISTEN_CLIENT_URLS=http://{listen}:{client_port}",
        f"ETCD_ADVERTISE_CLIENT_URLS=http://{advertise}:{client_port}",
        "ETCD_LISTEN_PEER_URLS=http://127.0.0.1:2380",
        "ETCD_INITIAL_ADVERTISE_PEER_URLS=http://127.0.0.1:2380",
        "ETCD_INITIAL_CLUSTER=docklet=http://127.0.0.1:2380",
        "ETCD_ENABLE_V2=true",
        "",
    ])


def systemd_escape_path(path: str) -> str:
    """systemd-escape --path (for mount unit names)."""
    path = path.strip("/")
    out = []
    for i, ch in enumerate(path):
        if ch == "/":
            out.append("-")
        elif ch.isalnum() or ch in ":_" or (ch == "." and i > 0):
            out.append(ch)
        else:
            out.append("".join(f"\\x{b:02x}" for b in ch.encode()))
    return "".join(out) or "-"


def global_mount_unit(s: Settings) -> Optional[Tuple[str, str]]:
    gfs = s.global_fs
    if gfs is None:
        return None
    kind, source = gfs
    where = f"{s.fs_prefix}/global"
    name = systemd_escape_path(where) + ".mount"
    options = "_netdev,defaults" if kind == "nfs" else "_netdev,defaults,acl"
    text = f"""[Unit]
Description=Docklet shared directory {where} ({kind} {source})
Wants=network-online.target
After=network-online.target
Before=docklet-master.service docklet-worker.service

[Mount]
What={source}
Where={where}
Type={kind}
Options={options}

[Install]
WantedBy=remote-fs.target
"""
    return name, text


def render_units(s: Settings) -> Dict[str, str]:
    """unit file name (or drop-in path below /etc/systemd/system) -> text."""
    fs = s.fs_prefix
    mount = global_mount_unit(s)
    needs_mount = f"RequiresMountsFor={fs}/global\n" if mount else ""
    units: Dict[str, str] = {}
    before = ["docklet-master.service", "docklet-worker.service"]
    if s.has_master:
        before = ["etcd.service", "nginx.service"] + before
    units["docklet-setup.service"] = f"""[Unit]
Description=Docklet: configuration for this machine (network, auth key, docklet.conf, etcd)
Wants=network-online.target
After=network-online.target local-fs.target
Before={' '.join(before)}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/docklet-setup
TimeoutStartSec=300

[Install]
WantedBy=multi-user.target
"""
    if s.has_master:
        units["etcd.service.d/50-docklet.conf"] = """# dib docklet element: docklet-setup writes
# /etc/default/etcd (v2 API, listen address) before etcd starts
[Unit]
Wants=docklet-setup.service
After=docklet-setup.service
"""
        units["docklet-master.service"] = f"""[Unit]
Description=Docklet master (master, user server, web portal, proxy; portal through nginx)
Requires=docklet-setup.service etcd.service openvswitch-switch.service
Wants=nginx.service
After=docklet-setup.service etcd.service openvswitch-switch.service nginx.service
After=lxc.service lxcfs.service network-online.target
{needs_mount}
[Service]
Type=forking
PIDFile={fs}/local/run/docklet-master.pid
Environment=PYTHONPATH={s.pylib}
# the first start runs "docklet-supermaster init" (new cluster), every later one "start"
ExecStart=/usr/local/sbin/docklet-service master start
ExecStop=/usr/local/sbin/docklet-service master stop
TimeoutStartSec={int(s['DOCKLET_START_TIMEOUT']) + 120}
TimeoutStopSec=120
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
"""
    if s.has_worker:
        units["docklet-worker.service"] = f"""[Unit]
Description=Docklet worker (LXC containers, LVM volume pool, Open vSwitch networks)
Requires=docklet-setup.service openvswitch-switch.service
After=docklet-setup.service openvswitch-switch.service docklet-master.service
After=lxc.service lxcfs.service network-online.target
# without a basefs (DOCKLET_BASEFS=none) the worker cannot run: put one there, then start it
ConditionPathIsDirectory={fs}/local/basefs
{needs_mount}
[Service]
Type=forking
PIDFile={fs}/local/run/docklet-worker.pid
Environment=PYTHONPATH={s.pylib}
# waits (up to DOCKLET_START_TIMEOUT) for the master: etcd key, global/token, master port
ExecStartPre=/usr/local/sbin/docklet-service wait-master
ExecStart=/usr/local/sbin/docklet-service worker start
ExecStop=/usr/local/sbin/docklet-service worker stop
# containers outlive a worker restart; the worker recovers them
KillMode=process
TimeoutStartSec={2 * int(s['DOCKLET_START_TIMEOUT']) + 120}
TimeoutStopSec=120
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
"""
    if mount:
        units[mount[0]] = mount[1]
    return units


def enabled_units(s: Settings) -> List[Tuple[str, str]]:
    """(unit, target) pairs to enable for the mode (docklet.md §3.7 mode matrix)."""
    out = [("docklet-setup.service", "multi-user.target")]
    if s.has_master:
        out += [("etcd.service", "multi-user.target"),
                ("docklet-master.service", "multi-user.target")]
    if s.has_worker:
        out.append(("docklet-worker.service", "multi-user.target"))
    mount = global_mount_unit(s)
    if mount:
        out.append((mount[0], "remote-fs.target"))
    return out
