"""A synthetic Docklet source tree for the docklet element's tests (docklet.md §4.1).

Built by the tests themselves, so no test needs the network or Docklet's real code (which
is never copied into this repository). The tree has the layout the element validates, the
two texts its patches look for, and stub commands with the shape of Docklet's: the
``bin/`` scripts source ``conf/docklet.conf``, start small Python HTTP servers in the
background with pid files in ``FS_PREFIX/local/run``, and record how they were started::

    tree = write_tree(tmp_path / "docklet")                  # a plain directory
    repo = make_repo(tmp_path / "repo")                       # git: master and synthetic-v2
    write_tree(d, patched=True)                               # patches already in
    write_tree(d, broken_patch=True)                          # a patch pattern is gone
    write_tree(d, omit=("bin/docklet-worker",))               # invalid layout
    make_basefs_tarball(tmp_path / "basefs.tar.gz")           # for DOCKLET_BASEFS=tarball

:func:`element_module` imports the element's logic (the ``docklet_image`` package) for unit
tests.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List

REPO_ROOT = Path(__file__).resolve().parents[2]
ELEMENT = REPO_ROOT / "elements" / "docklet"
#: the element's logic; the hooks run it as ``python3 <this directory> COMMAND``
PACKAGE = ELEMENT / "docklet-lib" / "docklet_image"
SHIM = ELEMENT / "docklet-lib" / "sitecustomize.py"


def package_files() -> List[Path]:
    """The package's source files (what install_tree copies into the image)."""
    return sorted(p for p in PACKAGE.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def element_module():
    """The element's docklet_image package (imported once)."""
    name = "docklet_image"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, PACKAGE / "__init__.py", submodule_search_locations=[os.fspath(PACKAGE)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# -- the stub scripts ------------------------------------------------------------------------

_PREAMBLE = """#!/bin/sh
# Synthetic docklet {what} (tests only): the shape of upstream's script, stub daemons.
bindir=${{0%/*}}
DOCKLET_BIN=$(cd $bindir; pwd)
DOCKLET_HOME=${{DOCKLET_BIN%/*}}
DOCKLET_CONF=$DOCKLET_HOME/conf
DOCKLET_SRC=$DOCKLET_HOME/src

FS_PREFIX=/opt/docklet
PROXY_PORT=8000
PROXY_API_PORT=8001
WEB_PORT=8888
MASTER_PORT=9000
WORKER_PORT=9001
USER_PORT=9100
PUBLIC_IP=127.0.0.1

. $DOCKLET_CONF/docklet.conf

export FS_PREFIX
RUN_DIR=$FS_PREFIX/local/run
LOG_DIR=$FS_PREFIX/local/log

start_stub () {{ # name port address [delay]
    mkdir -p $RUN_DIR $LOG_DIR
    nohup python3 $DOCKLET_SRC/utils/stubd.py --name $1 --port $2 --bind $3 --delay ${{4:-0}} \\
        >> $LOG_DIR/docklet-$1.log 2>&1 < /dev/null &
    echo $! > $RUN_DIR/docklet-$1.pid
}}

stop_stub () {{ # name
    if [ -f $RUN_DIR/docklet-$1.pid ]; then
        kill $(cat $RUN_DIR/docklet-$1.pid) 2>/dev/null
        rm -f $RUN_DIR/docklet-$1.pid
    fi
}}
"""

_PROXY = {
    "upstream": '    DAEMON_OPTS_PROXY="--port $PROXY_PORT --api-port $PROXY_API_PORT '
                '--default-target=http://localhost:8888"\n',
    "patched": '    DAEMON_OPTS_PROXY="--port $PROXY_PORT --api-port $PROXY_API_PORT '
               '--default-target=http://127.0.0.1:${WEB_PORT:-8888}"\n',
}


def _proxy_fn(patched: bool) -> str:
    return ("do_start_proxy () {\n" + _PROXY["patched" if patched else "upstream"] +
            '    mkdir -p $LOG_DIR\n'
            '    echo "proxy: $DAEMON_OPTS_PROXY" >> $LOG_DIR/docklet-proxy.log\n}\n')


_WAIT_USER = ("        for _i in $(seq 1 300); do curl -s -o /dev/null "
              "http://127.0.0.1:${USER_PORT:-9100}/ && break; sleep 1; done  "
              "# dib-docklet: wait for the user server\n")


def _supermaster(patched: bool, what: str = "supermaster") -> str:
    """Starts user server (slow: it listens after 2 s), proxy, web, then the master, which
    records whether the user server answered when it started."""
    wait = _WAIT_USER if patched else ""
    return _PREAMBLE.format(what=what) + _proxy_fn(patched) + """
do_start_user () {
    start_stub user $USER_PORT 0.0.0.0 2
}

do_start_master () { # mode: new | recovery
    mkdir -p $FS_PREFIX/global $FS_PREFIX/local
    if curl -s -o /dev/null http://127.0.0.1:$USER_PORT/; then user=user-up; else user=user-down; fi
    echo "$1 $user" >> $FS_PREFIX/local/synthetic-master-starts
    if [ "$1" = new ]; then
        printf 'User=root\\nPass=synthetic-password\\n' > $FS_PREFIX/local/generated_password.txt
    fi
    echo "synthetic-token-$$" > $FS_PREFIX/global/token
    start_stub master $MASTER_PORT 0.0.0.0
}

case "$1" in
    init)
        do_start_user
        do_start_proxy
        start_stub web $WEB_PORT 0.0.0.0
""" + wait + """        do_start_master "new"
        ;;
    start)
        do_start_user
        do_start_proxy
        start_stub web $WEB_PORT 0.0.0.0
""" + wait + """        do_start_master "recovery"
        ;;
    stop) stop_stub web; stop_stub master; stop_stub user ;;
    status)
        for n in web master user; do
            kill -0 $(cat $RUN_DIR/docklet-$n.pid 2>/dev/null) 2>/dev/null || exit 3
        done ;;
    *) echo "Usage: docklet-master {init|start|stop|status}"; exit 1 ;;
esac
exit 0
"""


_LXC_UPSTREAM = """update_container_conf () {
    LXC_VERSION=$(lxc-start --version 2>/dev/null | awk -F "." '{print $1}')

    if [ "$LXC_VERSION"x != "2"x ]&&[ "$LXC_VERSION"x != "3"x ];then
      LXC_VERSION=2
    fi

    cp $DOCKLET_CONF/container/lxc$LXC_VERSION.container.conf $DOCKLET_CONF/container.conf
    cp $DOCKLET_CONF/container/lxc$LXC_VERSION.container.batch.conf $DOCKLET_CONF/container.batch.conf
}
"""  # noqa: E501 (upstream's script, verbatim)
_LXC_PATCHED = _LXC_UPSTREAM.replace("      LXC_VERSION=2\n", "      LXC_VERSION=3\n")
_LXC_BROKEN = """update_container_conf () {
    LXC_VERSION=$(lxc-start --version 2>/dev/null | cut -d. -f1)
    cp $DOCKLET_CONF/container/lxc$LXC_VERSION.container.conf $DOCKLET_CONF/container.conf
}
"""


def _worker(patched: bool, broken: bool) -> str:
    lxc = _LXC_BROKEN if broken else (_LXC_PATCHED if patched else _LXC_UPSTREAM)
    return _PREAMBLE.format(what="worker") + lxc + _proxy_fn(patched) + """
do_start () {
    if [ ! -f $FS_PREFIX/global/token ]; then
        echo "synthetic worker: $FS_PREFIX/global/token is missing" >&2
        exit 1
    fi
    if [ ! -d $FS_PREFIX/local/basefs ]; then
        echo "basefs does not exist, run prepare.sh first" >&2
        exit 1
    fi
    update_container_conf
    echo "start $(cat $FS_PREFIX/global/token)" >> $FS_PREFIX/local/synthetic-worker-starts
    start_stub worker $WORKER_PORT $PUBLIC_IP
}

case "$1" in
    start) do_start ;;
    stop) stop_stub worker ;;
    status) kill -0 $(cat $RUN_DIR/docklet-worker.pid 2>/dev/null) 2>/dev/null || exit 3 ;;
    *) echo "Usage: docklet-worker {start|stop|status}"; exit 1 ;;
esac
exit 0
"""


STUBD = '''#!/usr/bin/python3
"""Synthetic docklet daemon (tests only): answers HTTP on one port."""
import argparse
import http.server
import time

ap = argparse.ArgumentParser()
ap.add_argument("--name", required=True)
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--bind", default="127.0.0.1")
ap.add_argument("--delay", type=float, default=0)
args = ap.parse_args()
time.sleep(args.delay)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"synthetic docklet {args.name}: {self.path}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.ThreadingHTTPServer((args.bind, args.port), Handler).serve_forever()
'''

_PY_STUB = '#!/usr/bin/python3\n"""Synthetic docklet {what} (tests only)."""\nprint("{what}")\n'

_LXC3 = """# synthetic lxc3 container config
lxc.include = /usr/share/lxc/config/ubuntu.common.conf
lxc.rootfs.path = %ROOTFS%
lxc.uts.name = %HOSTNAME%
lxc.net.0.type = veth
lxc.net.0.ipv4.address = %IP%
lxc.cgroup.memory.limit_in_bytes = %CONTAINER_MEMORY%M
"""
_LXC2 = """# synthetic lxc2 container config
lxc.include = /usr/share/lxc/config/ubuntu.common.conf
lxc.rootfs = %ROOTFS%
lxc.utsname = %HOSTNAME%
lxc.network.type = veth
lxc.network.ipv4 = %IP%
"""

_TEMPLATE = """# ==================================================
#
#                   [Local config example]
#
# ==================================================

# CLUSTER_NAME: name of host cluster, every host cluster should have
# a unique name, default is docklet-vc
# CLUSTER_NAME=docklet-vc

# FS_PREFIX: path to store global and local data for docklet
# default is /opt/docklet
# FS_PREFIX=/opt/docklet

# NETWORK_DEVICE: network device of this host
# NETWORK_DEVICE=eth0

# AUTH_KEY: the key to request users server from master
# AUTH_KEY=docklet
"""


def tree_files(*, version: str = "synthetic-1", patched: bool = False,
               broken_patch: bool = False) -> Dict[str, str]:
    """relative path -> content of a synthetic docklet tree."""
    return {
        "VERSION": version + "\n",
        "README.md": "# Docklet (synthetic test tree)\n",
        "prepare.sh": "#!/bin/sh\necho 'synthetic prepare.sh: never run by the element'\nexit 1\n",
        "bin/docklet-supermaster": _supermaster(patched),
        "bin/docklet-master": _supermaster(patched, "master"),
        "bin/docklet-worker": _worker(patched, broken_patch),
        "conf/docklet.conf.template": _TEMPLATE,
        "conf/container/lxc2.container.conf": _LXC2,
        "conf/container/lxc2.container.batch.conf": _LXC2,
        "conf/container/lxc3.container.conf": _LXC3,
        "conf/container/lxc3.container.batch.conf": _LXC3.replace("synthetic", "synthetic batch"),
        "conf/lxc-script/lxc-ifup": "#!/bin/sh\n. $LXC_ROOTFS_PATH/../env.conf\n",
        "conf/lxc-script/lxc-ifdown": "#!/bin/sh\n. $LXC_ROOTFS_PATH/../env.conf\n",
        "conf/lxc-script/lxc-prestart": "#!/bin/sh\n. $LXC_ROOTFS_PATH/../env.conf\n"
                                        "echo $HNAME > $LXC_ROOTFS_PATH/etc/hostname\n",
        "conf/lxc-script/lxc-mount": "#!/bin/sh\n",
        "conf/nginx_docklet.conf": "server {\n    listen %NGINX_PORT;\n    location / {\n"
                                   "        proxy_pass http://%MASTER_IP:%WEB_PORT;\n    }\n}\n",
        "src/master/httprest.py": _PY_STUB.format(what="master"),
        "src/master/userinit.sh": "#!/bin/sh\necho synthetic userinit $1\n",
        "src/worker/worker.py": _PY_STUB.format(what="worker"),
        "src/worker/taskworker.py": _PY_STUB.format(what="taskworker"),
        "src/utils/env.py": "import os\n\n\ndef getenv(key):\n    return os.environ.get(key)\n",
        "src/utils/stubd.py": STUBD,
        "web/web.py": _PY_STUB.format(what="web"),
        "web/templates/home.template": "<html><body>synthetic docklet home</body></html>\n",
        "user/user.py": _PY_STUB.format(what="user"),
        "tools/nginx_config.sh": "#!/bin/sh\necho synthetic nginx_config\n",
        "tools/start_jupyter.sh": "#!/bin/sh\n# synthetic start_jupyter.sh\n"
                                  "DAEMON=`which jupyterhub-singleuser`\n",
    }


EXECUTABLE_SUFFIXES = (".sh", ".py")


def write_tree(dest: Path, *, version: str = "synthetic-1", patched: bool = False,
               broken_patch: bool = False, omit: Iterable[str] = (),
               modes: bool = True) -> Path:
    """Write the tree into ``dest`` (created); ``omit`` leaves files out; ``modes=False``
    leaves every file non-executable (as a careless copy would)."""
    omit = set(omit)
    for rel, text in tree_files(version=version, patched=patched,
                                broken_patch=broken_patch).items():
        if rel in omit:
            continue
        p = dest / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        executable = rel.startswith(("bin/", "conf/lxc-script/")) or \
            rel.endswith(EXECUTABLE_SUFFIXES) and not rel.endswith("env.py")
        os.chmod(p, 0o755 if executable and modes else 0o644)
    return dest


@dataclass(frozen=True)
class SyntheticRepo:
    path: Path
    #: ref -> commit
    commits: Dict[str, str]


def _git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid",
               GIT_CONFIG_NOSYSTEM="1", HOME=os.fspath(repo))
    return subprocess.run(["git", "-C", os.fspath(repo), *args], env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def make_repo(dest: Path) -> SyntheticRepo:
    """A git work tree: ``master`` (VERSION synthetic-1, tag synthetic-v1) and branch
    ``next`` one commit later (VERSION synthetic-2, tag synthetic-v2)."""
    write_tree(dest, version="synthetic-1")
    _git(dest, "init", "-q", "-b", "master")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "synthetic docklet 1")
    _git(dest, "tag", "synthetic-v1")
    first = _git(dest, "rev-parse", "HEAD")
    _git(dest, "checkout", "-q", "-b", "next")
    (dest / "VERSION").write_text("synthetic-2\n")
    _git(dest, "commit", "-q", "-am", "synthetic docklet 2")
    _git(dest, "tag", "synthetic-v2")
    second = _git(dest, "rev-parse", "HEAD")
    _git(dest, "checkout", "-q", "master")
    return SyntheticRepo(dest, {"master": first, "synthetic-v1": first, "next": second,
                                "synthetic-v2": second})


def make_basefs_tarball(dest: Path, *, top: str = "basefs",
                        with_host_keys: bool = True) -> Path:
    """A tiny basefs tarball like upstream's: ``basefs/{etc/os-release,sbin/init,
    home/jupyter/}``, plus ssh host keys the element must remove."""
    src = dest.parent / (dest.name + ".d")
    root = src / top
    for d in ("etc/ssh", "sbin", "home/jupyter", "etc/default", "usr/bin"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text('ID=synthetic\nPRETTY_NAME="synthetic basefs"\n')
    (root / "sbin/init").write_text("#!/bin/sh\nexec sleep infinity\n")
    os.chmod(root / "sbin/init", 0o755)
    (root / "etc/inittab").write_text("id:2:initdefault:\n1:2345:respawn:/sbin/getty 38400 tty1\n")
    if with_host_keys:
        for kind in ("rsa", "ed25519"):
            (root / f"etc/ssh/ssh_host_{kind}_key").write_text("SYNTHETIC PRIVATE KEY\n")
            (root / f"etc/ssh/ssh_host_{kind}_key.pub").write_text("ssh-synthetic AAAA\n")
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(root, arcname=top)
    return dest
