"""Build host (extra-data.d): the root filesystem of Docklet's containers (bootstrapped, from
a tarball or a directory) at FS_PREFIX/local/basefs, made fit for Docklet."""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional

from .base import MARK, DockletError, log, tail
from .settings import Settings

#: packages of the basefs on top of the bootstrap's minbase (docklet.md §3.5)
BASEFS_PACKAGES = ("sysvinit-core", "openssh-server", "iproute2", "iputils-ping", "procps",
                   "ca-certificates", "python3", "less", "netbase")
JUPYTER_PACKAGES = ("python3-notebook", "jupyterhub")

SSH_DEFAULT = """
# dib docklet element: the basefs ships no ssh host keys (every container would share them);
# each container makes its own the first time ssh starts.
if ! ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1; then
    ssh-keygen -A >/dev/null 2>&1 || true
fi
"""

JUPYTER_STUB = '''#!/usr/bin/python3
# dib docklet element: placeholder for jupyterhub-singleuser. This basefs was built with
# DOCKLET_BASEFS_JUPYTER=0, so the Docklet "workspace" shows this page instead of Jupyter.
import http.server
import sys

port, ip = 10000, "0.0.0.0"
for arg in sys.argv[1:]:
    if arg.startswith("--port="):
        port = int(arg.split("=", 1)[1])
    elif arg.startswith("--ip="):
        ip = arg.split("=", 1)[1] or ip
PAGE = (b"<html><head><title>Docklet workspace</title></head><body><h1>No Jupyter here</h1>"
        b"<p>This Docklet basefs has no Jupyter (DOCKLET_BASEFS_JUPYTER=0). Use the node "
        b"over ssh, or rebuild the image with DOCKLET_BASEFS_JUPYTER=1.</p></body></html>")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer((ip, port), Handler).serve_forever()
'''


def basefs_packages(s: Settings) -> List[str]:
    pkgs = list(BASEFS_PACKAGES)
    if s["DOCKLET_BASEFS_JUPYTER"] == "1":
        pkgs += JUPYTER_PACKAGES
    pkgs += s["DOCKLET_BASEFS_PACKAGES"].replace(",", " ").split()
    return list(dict.fromkeys(pkgs))


def finish_basefs(basefs: Path, source: Path, s: Settings) -> List[str]:
    """Make a root filesystem fit for docklet's containers (any origin; idempotent):
    no ssh host keys (regenerated per container), start_jupyter.sh, a jupyterhub-singleuser
    (or a placeholder), no gettys on ttys a container lacks, DNS if DOCKLET_BASEFS_DNS.
    Returns what it did, for the log."""
    done = []
    if not basefs.is_dir():
        raise DockletError(f"no basefs at {basefs}")
    for key in sorted((basefs / "etc/ssh").glob("ssh_host_*")):
        key.unlink()
        done.append(f"removed {key.relative_to(basefs)}")
    default_ssh = basefs / "etc/default/ssh"
    current = default_ssh.read_text() if default_ssh.is_file() else ""
    if MARK not in current and "dib docklet element" not in current:
        default_ssh.parent.mkdir(parents=True, exist_ok=True)
        default_ssh.write_text(current + SSH_DEFAULT)
        done.append("etc/default/ssh generates host keys on first ssh start")
    jdir = basefs / "home/jupyter"
    jdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "tools/start_jupyter.sh", jdir / "start_jupyter.sh")
    os.chmod(jdir / "start_jupyter.sh", 0o755)
    done.append("home/jupyter/start_jupyter.sh")
    has_jupyter = any((basefs / d / "jupyterhub-singleuser").exists()
                      for d in ("usr/bin", "usr/local/bin", "bin"))
    stub = basefs / "usr/local/bin/jupyterhub-singleuser"
    if not has_jupyter or (stub.is_file() and "dib docklet element" in stub.read_text()):
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text(JUPYTER_STUB)
        os.chmod(stub, 0o755)
        done.append("usr/local/bin/jupyterhub-singleuser placeholder (no Jupyter)")
    inittab = basefs / "etc/inittab"
    if inittab.is_file():
        text = inittab.read_text()
        new = re.sub(r"(?m)^([1-6]:\d+:respawn:\S*getty\b.*)$",
                     r"#\1  # " + MARK + ": containers have no ttys", text)
        if new != text:
            inittab.write_text(new)
            done.append("etc/inittab: no gettys")
    dns = s["DOCKLET_BASEFS_DNS"].split()
    if dns:
        resolv = basefs / "etc/resolv.conf"
        if resolv.is_symlink():
            resolv.unlink()
        resolv.write_text("".join(f"nameserver {x}\n" for x in dns))
        done.append("etc/resolv.conf from DOCKLET_BASEFS_DNS")
    for rel in ("var/lib/dib-build",):
        shutil.rmtree(basefs / rel, ignore_errors=True)
    lists = basefs / "var/lib/apt/lists"
    if lists.is_dir():
        for p in lists.iterdir():
            if p.is_file() and p.name != "lock":
                p.unlink()
    for p in (basefs / "var/cache/apt").glob("*.bin"):
        p.unlink()
    # no timestamp: the same inputs give the same tree (dib's layer cache keys on content)
    (basefs / "etc/docklet-basefs").write_text(
        f"made fit for docklet by the dib docklet element (DOCKLET_BASEFS="
        f"{s['DOCKLET_BASEFS']})\n")
    return done


def _download(url: str, cache_root: Path, offline: bool) -> Path:
    dest = cache_root / "basefs-tarballs" / (hashlib.sha256(url.encode()).hexdigest()[:16] +
                                             "-" + re.sub(r"[^A-Za-z0-9._-]", "_",
                                                          url.rsplit("/", 1)[-1])[-60:])
    if dest.is_file():
        return dest
    if offline:
        raise DockletError(f"offline build: {url} is not in the cache ({dest})")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".tmp.{os.getpid()}")
    log(f"downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
        os.replace(tmp, dest)
    except (OSError, urllib.error.URLError) as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise DockletError(f"cannot download DOCKLET_BASEFS_TARBALL={url}: {exc}") from None
    return dest


def place_basefs(tree: Path, s: Settings, env: Mapping[str, str], *, source: Path,
                 cache_root: Path, offline: bool,
                 bootstrap: Optional[Callable[[Path, Dict[str, str]], None]] = None) -> str:
    """Host side: put the basefs at <tree>/<FS_PREFIX>/local/basefs and finish it."""
    kind = s["DOCKLET_BASEFS"]
    local = tree / s.fs_prefix.lstrip("/") / "local"
    basefs = local / "basefs"
    if kind == "none":
        log("DOCKLET_BASEFS=none: no basefs in the image")
        return "none"
    if basefs.exists():
        shutil.rmtree(basefs)
    local.mkdir(parents=True, exist_ok=True)
    if kind == "tarball":
        tb = s["DOCKLET_BASEFS_TARBALL"]
        path = _download(tb, cache_root, offline) if re.match(r"^https?://", tb) else Path(tb)
        proc = subprocess.run(["tar", "--numeric-owner", "-xpf", os.fspath(path), "-C",
                               os.fspath(local), "basefs"], capture_output=True, text=True)
        if proc.returncode != 0 or not basefs.is_dir():
            raise DockletError(f"DOCKLET_BASEFS_TARBALL={tb}: cannot extract a top-level "
                               f"basefs/ directory:\n    {tail(proc.stderr)}",
                               hint="the tarball must hold basefs/ (like upstream's "
                                    "basefs-0.11.tar.bz2)")
    elif kind == "dir":
        basefs.mkdir()
        proc = subprocess.run(["cp", "-a", "--", s["DOCKLET_BASEFS_DIR"].rstrip("/") + "/.",
                               os.fspath(basefs) + "/"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise DockletError(f"cannot copy DOCKLET_BASEFS_DIR: {tail(proc.stderr)}")
    else:
        basefs.mkdir()
        (bootstrap or run_bootstrap)(basefs, bootstrap_env(s, env, cache_root))
    if not any(basefs.iterdir()):
        raise DockletError(f"the basefs ({kind}) is empty")
    for line in finish_basefs(basefs, source, s):
        log(f"basefs: {line}")
    return kind


def bootstrap_env(s: Settings, env: Mapping[str, str], cache_root: Path) -> Dict[str, str]:
    """The environment for dib's bootstrap (python -m dib.bootstrap) making the basefs: the
    basefs distribution and packages, its own cache (so it never evicts the image's)."""
    out = dict(env)
    distro, release = s["DOCKLET_BASEFS_DISTRO"], s["DOCKLET_BASEFS_RELEASE"]
    for k in ("TMP_HOOKS_PATH", "DIB_DEBOOTSTRAP_EXTRA_ARGS", "DIB_MMDEBSTRAP_EXTRA_ARGS",
              "DIB_DEBIAN_DEBOOTSTRAP_SCRIPT", "TARGET_ROOT"):
        out.pop(k, None)
    if distro != env.get("DISTRO_NAME"):
        for k in ("DIB_DISTRIBUTION_MIRROR", "DIB_DEBIAN_DISTRIBUTION_MIRROR",
                  "DIB_DEBIAN_SECURITY_MIRROR", "DIB_APT_SOURCES_CONF", "DIB_APT_KEYRING",
                  "DIB_DEBIAN_KEYRING"):
            out.pop(k, None)
    if s["DOCKLET_BASEFS_MIRROR"]:
        out["DIB_DISTRIBUTION_MIRROR"] = s["DOCKLET_BASEFS_MIRROR"]
        out.pop("DIB_APT_SOURCES_CONF", None)
    out.update({
        "DISTRO_NAME": distro, "DIB_RELEASE": release,
        "DIB_DEBOOTSTRAP_INCLUDE": ",".join(basefs_packages(s)),
        "DIB_IMAGE_CACHE": os.fspath(cache_root / "basefs"),
        "DIB_LOCKFILES": os.fspath(cache_root / "basefs" / "lockfiles"),
    })
    return out


def run_bootstrap(target: Path, env: Dict[str, str]) -> None:
    env = dict(env, TARGET_ROOT=os.fspath(target))
    python = env.get("DIB_ENGINE_PYTHON") or env.get("DIB_PYTHON_EXEC") or sys.executable
    if subprocess.run([python, "-c", "import dib.bootstrap"], env=env,
                      capture_output=True).returncode != 0:
        # docklet-lib/docklet_image: the parents of the former docklet-lib/docklet_image.py
        repo = Path(__file__).resolve().parent
        for d in os.environ.get("IMAGE_ELEMENT_YAML", "").splitlines():
            if d.startswith("docklet:"):
                repo = Path(d.split(":", 1)[1].strip())
        env["PYTHONPATH"] = os.fspath(repo.parent.parent)
    log(f"building the basefs ({env['DISTRO_NAME']} {env['DIB_RELEASE']}, "
        f"{env['DIB_DEBOOTSTRAP_INCLUDE']}) in {target}")
    proc = subprocess.run([python, "-m", "dib.bootstrap"], env=env)
    if proc.returncode != 0:
        raise DockletError("building the basefs failed (see the bootstrap output above)",
                           hint="DOCKLET_BASEFS=tarball|dir|none avoid the bootstrap")
