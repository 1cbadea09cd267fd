"""docklet element: its files and conventions, defaults, settings validation, packages per
mode and distribution."""
from __future__ import annotations

import os
import re
import subprocess

import pytest
import yaml

from dib import package_installs, pkgmap
from tests.lib import docklet_tree

di = docklet_tree.element_module()
ELEMENT = docklet_tree.ELEMENT
ENV_FILE = ELEMENT / "environment.d" / "60-docklet.bash"
HOOK_NAME = re.compile(r"^[0-9A-Za-z_-]+$")
PHASES = ("root.d", "extra-data.d", "pre-install.d", "install.d", "post-install.d",
          "post-root.d", "block-device.d", "pre-finalise.d", "finalise.d", "cleanup.d")


def source_env(extra=None):
    """environment.d/60-docklet.bash sourced (set -eu) with only ``extra`` set."""
    env = {"PATH": os.environ["PATH"], **(extra or {})}
    out = subprocess.run(["bash", "-c", 'set -eu -o pipefail; source "$1"; env -0', "x",
                          os.fspath(ENV_FILE)], env=env, capture_output=True, check=True).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


def hooks():
    for phase in PHASES:
        d = ELEMENT / phase
        if d.is_dir():
            for p in sorted(d.iterdir()):
                yield p


# -- element files ---------------------------------------------------------------------------

def test_hooks_follow_the_conventions():
    found = list(hooks())
    assert {p.parent.name for p in found} == {"root.d", "extra-data.d", "install.d"}
    for p in found:
        assert HOOK_NAME.match(p.name) and "docklet" in p.name, p
        assert os.access(p, os.X_OK), f"{p} is not executable"
        text = p.read_text()
        assert text.startswith("#!/bin/bash\n"), p
        assert "set -eu" in text and "set -o pipefail" in text, p
        assert 'DIB_DEBUG_TRACE:-0}" -gt 0' in text and "set -x" in text, p
        subprocess.run(["bash", "-n", os.fspath(p)], check=True)


def test_element_deps_and_no_source_repositories():
    deps = (ELEMENT / "element-deps").read_text().split()
    assert deps == sorted(deps)
    assert {"package-installs", "pkg-map", "dib-init-system"} <= set(deps)
    assert "source-repositories" not in deps


def test_no_package_mirror_or_registry_host_names_in_the_element():
    pattern = re.compile(r"deb\.debian|archive\.ubuntu|security\.ubuntu|pypi\.org|"
                         r"pythonhosted|registry\.npmjs|npm\.taobao|"
                         r"\bmirrors?\.[a-z]+\.[a-z]", re.I)
    for p in ELEMENT.rglob("*"):
        if p.is_file() and "__pycache__" not in p.parts:
            assert not pattern.search(p.read_text(errors="replace")), p


def test_module_runs_on_python_39_syntax():
    # the chroot's python3 runs it: bookworm 3.11, jammy 3.10, noble 3.12; the host >= 3.9
    import ast
    files = docklet_tree.package_files()
    assert {"__init__.py", "__main__.py", "cli.py"} <= {p.name for p in files}
    for path in (*files, docklet_tree.SHIM):
        ast.parse(path.read_text(), os.fspath(path), feature_version=(3, 9))


def test_package_imports_point_one_way():
    """Each module imports only modules listed before it in the package docstring (no
    cycles), and only the standard library besides."""
    import ast
    import sys
    order = re.findall(r"^\* ``(\w+)``", di.__doc__, re.M)
    stdlib = getattr(sys, "stdlib_module_names", None)  # Python >= 3.10
    assert order[0] == "base" and order[-1] == "cli"
    for path in docklet_tree.package_files():
        if path.stem not in order:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and node.module in order, (path.name, node.module)
                assert order.index(node.module) < order.index(path.stem), \
                    f"{path.name} imports {node.module}"
            elif isinstance(node, (ast.Import, ast.ImportFrom)) and stdlib:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) \
                    else [node.module]
                for name in names:
                    assert name.split(".")[0] in stdlib, (path.name, name)


def test_package_runs_by_path_and_with_dash_m(tmp_path):
    """The hooks run ``python3 "$(dirname "$0")/../docklet-lib/docklet_image" COMMAND`` (any
    working directory, relative path); ``python3 -m docklet_image`` works as well."""
    env = {"PATH": os.environ["PATH"], **BOOKWORM}
    for cwd, path in ((tmp_path, os.fspath(docklet_tree.PACKAGE)),
                      (ELEMENT / "install.d", "../docklet-lib/docklet_image")):
        proc = subprocess.run(["python3", path, "--help"], env=env, cwd=cwd,
                              capture_output=True, text=True)
        assert proc.returncode == 0 and "wait-master" in proc.stdout, proc.stderr
    dash_m = subprocess.run(["python3", "-m", "docklet_image", "check"], env=env,
                            cwd=docklet_tree.PACKAGE.parent, capture_output=True, text=True)
    assert dash_m.returncode == 0 and "settings OK: mode single" in dash_m.stderr, \
        dash_m.stderr


# -- defaults --------------------------------------------------------------------------------

def test_environment_defaults_match_the_module():
    env = source_env({"DISTRO_NAME": "debian", "DIB_RELEASE": "bookworm"})
    got = {k: v for k, v in env.items() if k in di.DEFAULTS}
    assert got == di.DEFAULTS
    assert env["DOCKLET_PIP_NEEDED"] == "1" and env["DOCKLET_GLOBAL_FS_TYPE"] == "none"


def test_environment_keeps_set_values_and_empty_pins():
    env = source_env({"DOCKLET_MODE": "worker", "DOCKLET_PY_PINS": "",
                      "DOCKLET_GLOBAL_FS": "nfs:filer:/export/docklet"})
    assert env["DOCKLET_MODE"] == "worker"
    assert env["DOCKLET_PY_PINS"] == "" and env["DOCKLET_PIP_NEEDED"] == "0"
    assert env["DOCKLET_GLOBAL_FS_TYPE"] == "nfs"


def test_environment_honours_source_repositories_names():
    env = source_env({"DIB_REPOLOCATION_docklet": "/src/docklet",
                      "DIB_REPOREF_docklet": "v0.4"})
    assert (env["DOCKLET_REPO"], env["DOCKLET_REF"]) == ("/src/docklet", "v0.4")


def test_noble_gets_the_flask_pins_in_bash_and_python():
    env = source_env({"DISTRO_NAME": "ubuntu", "DIB_RELEASE": "noble"})
    assert env["DOCKLET_PY_PINS"].endswith("Flask==2.2.5 Werkzeug==2.2.3")
    s = di.settings_from_env({"DISTRO_NAME": "ubuntu", "DIB_RELEASE": "noble"})
    assert s["DOCKLET_PY_PINS"] == env["DOCKLET_PY_PINS"]


def test_readme_documents_every_variable_mode_and_port():
    readme = (ELEMENT / "README.rst").read_text()
    for name in di.DEFAULTS:
        assert f"``{name}``" in readme, f"{name} is not documented"
    for word in ("single", "master", "worker", "best-effort", "AUTH_KEY", "firewall"):
        assert word in readme
    for port in ("8080", "8888", "9000", "9001", "9100", "8000", "8001", "2379", "50050",
                 "50051"):
        assert port in readme


# -- settings validation ---------------------------------------------------------------------

BOOKWORM = {"DISTRO_NAME": "debian", "DIB_RELEASE": "bookworm"}


def settings(**kw):
    return di.settings_from_env({**BOOKWORM, **kw})


def errors_of(**kw) -> str:
    with pytest.raises(di.DockletError) as exc:
        settings(**kw)
    return str(exc.value)


def test_defaults_are_valid():
    s = settings()
    assert s.mode == "single" and s.has_master and s.has_worker
    assert s.etcd == "127.0.0.1:2379" and s.etcd_listen == "127.0.0.1"
    assert s.pins == ["itsdangerous==2.0.1", "Flask-SQLAlchemy==2.5.1", "Flask-WTF==0.15.1"]
    assert s["DOCKLET_BASEFS_DISTRO"] == "debian" and s["DOCKLET_BASEFS_RELEASE"] == "bookworm"
    assert s.warnings == []


def test_worker_without_etcd_and_auth_key():
    text = errors_of(DOCKLET_MODE="worker")
    assert "DOCKLET_MODE=worker needs DOCKLET_ETCD" in text
    assert "DOCKLET_MODE=worker needs DOCKLET_AUTH_KEY" in text


def test_master_needs_an_auth_key_and_warns_without_shared_global():
    assert "DOCKLET_MODE=master needs DOCKLET_AUTH_KEY" in errors_of(DOCKLET_MODE="master")
    s = settings(DOCKLET_MODE="master", DOCKLET_AUTH_KEY="s3cret-key-1234")
    assert s.etcd_listen == "0.0.0.0" and not s.has_worker
    assert any("DOCKLET_GLOBAL_FS" in w for w in s.warnings)


def test_worker_complete():
    s = settings(DOCKLET_MODE="worker", DOCKLET_ETCD="192.0.2.10:2379",
                 DOCKLET_AUTH_KEY="s3cret-key-1234", DOCKLET_GLOBAL_FS="nfs:192.0.2.10:/srv/g")
    assert s.etcd == "192.0.2.10:2379" and not s.has_master
    assert s.global_fs == ("nfs", "192.0.2.10:/srv/g")


@pytest.mark.parametrize("kw, message", [
    ({"DOCKLET_MODE": "cluster"}, "DOCKLET_MODE='cluster'"),
    ({"DOCKLET_AUTH_KEY": "docklet"}, "upstream's public default"),
    ({"DOCKLET_AUTH_KEY": "has space"}, "DOCKLET_AUTH_KEY: at least 8"),
    ({"DOCKLET_AUTH_KEY": "a=b=c=d=e"}, "DOCKLET_AUTH_KEY: at least 8"),
    ({"DOCKLET_ETCD": "nohostport"}, "DOCKLET_ETCD='nohostport'"),
    ({"DOCKLET_WEB_PORT": "9000"}, "port 9000 is used twice"),
    ({"DOCKLET_NGINX_PORT": "9100"}, "port 9100 is used twice"),
    ({"DOCKLET_NGINX_PORT": "http"}, "DOCKLET_NGINX_PORT='http'"),
    ({"DOCKLET_HOME": "relative"}, "DOCKLET_HOME='relative'"),
    ({"DOCKLET_FS_PREFIX": "/opt"}, "DOCKLET_FS_PREFIX='/opt'"),
    ({"DOCKLET_PUBLIC_IP": "10.0.0"}, "DOCKLET_PUBLIC_IP"),
    ({"DOCKLET_PORTAL_URL": "ftp://x"}, "DOCKLET_PORTAL_URL"),
    ({"DOCKLET_CLUSTER_NET": "172.16.0.1"}, "DOCKLET_CLUSTER_NET"),
    ({"DOCKLET_STORAGE": "disk"}, "DOCKLET_DISK"),
    ({"DOCKLET_STORAGE": "nfs"}, "DOCKLET_STORAGE='nfs'"),
    ({"DOCKLET_DISKPOOL_SIZE": "10G"}, "DOCKLET_DISKPOOL_SIZE"),
    ({"DOCKLET_BATCH_ON": "maybe"}, "DOCKLET_BATCH_ON='maybe'"),
    ({"DOCKLET_EXTRA_CONF": "LOG_LEVEL=INFO AUTH_KEY=x"}, "AUTH_KEY is managed"),
    ({"DOCKLET_EXTRA_CONF": "LOG_LEVEL='INFO'"}, "is not KEY=value"),
    ({"DOCKLET_EXTRA_CONF": "log_level=INFO"}, "is not KEY=value"),
    ({"DOCKLET_GLOBAL_FS": "cifs://x"}, "DOCKLET_GLOBAL_FS"),
    ({"DOCKLET_BASEFS": "download"}, "DOCKLET_BASEFS='download'"),
    ({"DOCKLET_BASEFS": "tarball"}, "needs DOCKLET_BASEFS_TARBALL"),
    ({"DOCKLET_BASEFS": "dir"}, "needs DOCKLET_BASEFS_DIR"),
    ({"DOCKLET_BASEFS_DNS": "dns.example"}, "not an IP address"),
    ({"DOCKLET_BASEFS_PACKAGES": "Bad_Name"}, "not a package name"),
    ({"DOCKLET_UNIONFS": "btrfs"}, "DOCKLET_UNIONFS"),
    ({"DOCKLET_CGROUP": "v2"}, "DOCKLET_CGROUP"),
    ({"DOCKLET_PY_PINS": "flask"}, "is not a requirement"),
    ({"DOCKLET_PIP_INDEX_URL": "pypi"}, "DOCKLET_PIP_INDEX_URL"),
    ({"DIB_RELEASE": "trixie"}, "not supported on debian trixie"),
])
def test_invalid_settings(kw, message):
    assert message in errors_of(**kw)


def test_all_problems_are_reported_at_once():
    text = errors_of(DOCKLET_MODE="worker", DOCKLET_CGROUP="v2", DOCKLET_BASEFS="x")
    assert text.count("\n  - ") == 4  # etcd, auth key, cgroup, basefs


def test_host_checks_look_for_basefs_paths(tmp_path):
    with pytest.raises(di.DockletError, match="no such file on the build host"):
        di.settings_from_env({**BOOKWORM, "DOCKLET_BASEFS": "tarball",
                              "DOCKLET_BASEFS_TARBALL": os.fspath(tmp_path / "nope.tar")},
                             host_checks=True)
    with pytest.raises(di.DockletError, match="no such directory on the build host"):
        di.settings_from_env({**BOOKWORM, "DOCKLET_BASEFS": "dir",
                              "DOCKLET_BASEFS_DIR": os.fspath(tmp_path / "nope")},
                             host_checks=True)
    # a URL is only fetched when the basefs is placed
    di.settings_from_env({**BOOKWORM, "DOCKLET_BASEFS": "tarball",
                          "DOCKLET_BASEFS_TARBALL": "https://example.invalid/basefs.tar.gz"},
                         host_checks=True)


def test_unsupported_release_can_be_forced():
    s = settings(DIB_RELEASE="trixie", DOCKLET_ALLOW_UNSUPPORTED_RELEASE="1")
    assert s.release == "trixie"


def test_booleans_are_normalised_for_docklet():
    s = settings(DOCKLET_DISTRIBUTED_GATEWAY="true", DOCKLET_BATCH_ON="0")
    assert (s["DOCKLET_DISTRIBUTED_GATEWAY"], s["DOCKLET_BATCH_ON"]) == ("True", "False")


def test_check_command(tmp_path):
    run = lambda env: subprocess.run(  # noqa: E731
        ["python3", os.fspath(docklet_tree.PACKAGE), "check"],
        env={"PATH": os.environ["PATH"], **BOOKWORM, **env}, capture_output=True, text=True)
    ok = run({})
    assert ok.returncode == 0 and "settings OK: mode single" in ok.stderr
    bad = run({"DOCKLET_MODE": "worker"})
    assert bad.returncode == 1
    assert "ERROR: docklet: invalid docklet settings" in bad.stderr
    assert "hint: see elements/docklet/README.rst" in bad.stderr


def test_runtime_env_round_trip():
    s = settings(DOCKLET_EXTRA_CONF="LOG_LEVEL=INFO  CONTAINER_MEMORY=2000",
                 DOCKLET_AUTH_KEY="k3y-with+/chars")
    text = s.runtime_env()
    assert "DOCKLET_REPO" not in text and "DOCKLET_PY_PINS" not in text
    back = di.parse_env_file(text)
    assert back["DOCKLET_EXTRA_CONF"] == "LOG_LEVEL=INFO CONTAINER_MEMORY=2000"
    assert back["DOCKLET_AUTH_KEY"] == "k3y-with+/chars"
    again = di.settings_from_env({**BOOKWORM, **back})
    assert {k: again[k] for k in back} == back
    # the same file sourced by a shell gives the same values
    out = subprocess.run(["bash", "-c", f'{text}\necho "$DOCKLET_EXTRA_CONF|$DOCKLET_MODE"'],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "LOG_LEVEL=INFO CONTAINER_MEMORY=2000|single"


# -- packages --------------------------------------------------------------------------------

def package_lists(env_extra, distro="debian", release="bookworm"):
    env = source_env({"DISTRO_NAME": distro, "DIB_RELEASE": release, **env_extra})
    env.update(ARCH="amd64", DISTRO_NAME=distro, DIB_RELEASE=release)
    specs = package_installs.load_file(ELEMENT, "docklet")
    lists = package_installs.collect([("docklet", specs)], env)
    maps = {"docklet": pkgmap.resolve(pkgmap.load(ELEMENT / "pkg-map", "docklet"), distro,
                                      release, "docklet")}
    install = [p for p, _, _ in package_installs.mapped(lists.install["install.d"], maps)]
    uninstall = [p for p, _, _ in package_installs.mapped(lists.uninstall["install.d"], maps)]
    return install, uninstall


def test_packages_single_mode_bookworm():
    install, uninstall = package_lists({})
    for pkg in ("lxc", "lxc-templates", "lxcfs", "lvm2", "openvswitch-switch", "nginx",
                "etcd-server", "etcd-client", "node-configurable-http-proxy", "python3-lxc",
                "python3-pampy", "python3-flaskext.wtf", "sysvinit-utils", "python3-pip",
                "apparmor", "sudo"):
        assert pkg in install, pkg
    assert uninstall == ["python3-pip"], "pip is build-only"
    for gone in ("cgmanager", "libcgmanager0", "redis-server", "npm", "gdebi-core",
                 "python3-suds", "aufs-tools", "git", "exim4-daemon-light", "nfs-common"):
        assert gone not in install


def test_packages_worker_mode_has_no_master_side():
    install, _ = package_lists({"DOCKLET_MODE": "worker"})
    assert "lxc" in install
    for pkg in ("etcd-server", "etcd-client", "nginx"):
        assert pkg not in install


def test_packages_options():
    install, uninstall = package_lists({"DOCKLET_PY_PINS": "", "DOCKLET_MAIL": "local",
                                        "DOCKLET_GLOBAL_FS": "glusterfs:g1:docklet"})
    assert "python3-pip" not in install and uninstall == []
    assert {"exim4-daemon-light", "glusterfs-client", "attr"} <= set(install)


def test_pkg_map_per_release():
    assert "lsb-base" in package_lists({}, "ubuntu", "jammy")[0]
    noble = package_lists({}, "ubuntu", "noble")[0]
    assert "sysvinit-utils" in noble and "etcd-server" in noble


def test_package_installs_yaml_is_plain_yaml():
    data = yaml.safe_load((ELEMENT / "package-installs.yaml").read_text())
    assert isinstance(data, dict) and "lxc" in data
