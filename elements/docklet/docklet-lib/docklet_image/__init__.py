"""The docklet element's logic, as a stdlib-only package.

It runs in three places, always as ``python3 docklet_image COMMAND`` (the package directory,
run by its path; see ``__main__``) or ``python3 -m docklet_image COMMAND``:

* on the build host, from the element's root.d / extra-data.d hooks (``$DIB_PYTHON_EXEC``):
  ``check`` (the DOCKLET_* settings), ``fetch-source`` (git URL, local git work tree or plain
  directory; cached under ``$DIB_IMAGE_CACHE/docklet``; layout validation; patches),
  ``basefs`` (the containers' root filesystem);
* in the image chroot, from install.d: ``install`` (the tree, config, shims, units),
  ``pylib`` (the pinned Python packages and the compatibility shim), ``system`` (system
  settings);
* in the booted image, installed as /usr/local/lib/docklet/docklet_image/ and imported by
  its launchers: ``setup`` (docklet-setup.service: network, auth key, docklet.conf, etcd),
  ``service`` (start/stop and readiness of master and worker), ``wait-master``, and
  ``mount-aufs`` (/sbin/mount.aufs).

Every function that touches files takes the root it works on, so the unit tests run it
against a temporary tree without root. Docklet's own files are never part of this package:
they are fetched at build time and patched in a copy.

The modules, each importing only the ones above it:

* ``base``: image paths, hooks-tree records, :class:`DockletError`, logging;
* ``settings``: the DOCKLET_* settings, their validation and the runtime env file;
* ``source``: fetching and caching the source, its required layout;
* ``patches``: the fixes to Docklet's files;
* ``render``: docklet.conf, /etc/default/etcd and the systemd units, as text;
* ``install``: install.d (the tree, this package, launchers, system files, units);
* ``pylib``: install.d (the pinned Python packages);
* ``basefs``: extra-data.d (the containers' root filesystem);
* ``runtime``: the booted image (docklet-setup, docklet-service);
* ``aufs``: the booted image (/sbin/mount.aufs);
* ``cli``: the command line (:func:`main`).

The names below are re-exported, so ``docklet_image.X`` keeps working for the launchers and
the tests; helpers private to a module are reached through it (``docklet_image.runtime._x``).
"""
from .base import (AUTH_KEY_FILE, ENV_FILE, EXTRA_CONF_FILE, LIB_DIR, MARK, PACKAGE,
                   PATCH_META, PATCHES_FILE, SOURCE_INFO_FILE, SOURCE_META, UNIT_DIR,
                   DockletError, log)
from .settings import (BASEFS_KINDS, BUILD_ONLY, DEFAULTS, EXTRA_PINS, MANAGED_KEYS, MODES,
                       SUPPORTED_RELEASES, USER_PORT, Settings, parse_env_file,
                       settings_from_env)
from .source import (BIN_SCRIPTS, EXECUTABLE_GLOBS, REQUIRED_FILES, SourceInfo, check_layout,
                     classify_repo, executable_files, fetch_source, missing_files)
from .patches import PATCHES, Patch, PatchResult, apply_patches
from .render import (CONF_BEGIN, CONF_END, conf_values, enabled_units, global_mount_unit,
                     loadenv, render_conf, render_etcd_default, render_units,
                     systemd_escape_path)
from .install import LAUNCHER, install_system, install_tree, install_units
from .pylib import SITECUSTOMIZE, install_pylib
from .basefs import (BASEFS_PACKAGES, JUPYTER_PACKAGES, JUPYTER_STUB, SSH_DEFAULT,
                     basefs_packages, bootstrap_env, finish_basefs, place_basefs,
                     run_bootstrap)
from .runtime import (auth_key, check_loop0, detect_network, host_nameservers, pick_network,
                      service, setup, wait_master)
from .aufs import AufsMount, mount_aufs, parse_aufs_args
from .cli import cmd_fetch_source, main

__all__ = [
    # base
    "AUTH_KEY_FILE", "ENV_FILE", "EXTRA_CONF_FILE", "LIB_DIR", "MARK", "PACKAGE", "PATCH_META",
    "PATCHES_FILE", "SOURCE_INFO_FILE", "SOURCE_META", "UNIT_DIR", "DockletError", "log",
    # settings
    "BASEFS_KINDS", "BUILD_ONLY", "DEFAULTS", "EXTRA_PINS", "MANAGED_KEYS", "MODES",
    "SUPPORTED_RELEASES", "USER_PORT", "Settings", "parse_env_file", "settings_from_env",
    # source
    "BIN_SCRIPTS", "EXECUTABLE_GLOBS", "REQUIRED_FILES", "SourceInfo", "check_layout",
    "classify_repo", "executable_files", "fetch_source", "missing_files",
    # patches
    "PATCHES", "Patch", "PatchResult", "apply_patches",
    # render
    "CONF_BEGIN", "CONF_END", "conf_values", "enabled_units", "global_mount_unit", "loadenv",
    "render_conf", "render_etcd_default", "render_units", "systemd_escape_path",
    # install, pylib
    "LAUNCHER", "install_system", "install_tree", "install_units", "SITECUSTOMIZE",
    "install_pylib",
    # basefs
    "BASEFS_PACKAGES", "JUPYTER_PACKAGES", "JUPYTER_STUB", "SSH_DEFAULT", "basefs_packages",
    "bootstrap_env", "finish_basefs", "place_basefs", "run_bootstrap",
    # runtime, aufs
    "auth_key", "check_loop0", "detect_network", "host_nameservers", "pick_network", "service",
    "setup", "wait_master", "AufsMount", "mount_aufs", "parse_aufs_args",
    # cli
    "cmd_fetch_source", "main",
]
