"""The command line: one subcommand per hook, launcher and unit (see the package docstring)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from .aufs import mount_aufs
from .base import PATCH_META, SOURCE_META, DockletError, log
from .basefs import place_basefs
from .install import install_system, install_tree
from .patches import apply_patches
from .pylib import install_pylib
from .runtime import service, setup, wait_master
from .settings import Settings, settings_from_env
from .source import check_layout, fetch_source


def _env_settings(host_checks: bool = False) -> Settings:
    s = settings_from_env(os.environ, host_checks=host_checks)
    for w in s.warnings:
        log(f"WARNING: {w}")
    return s


def _offline() -> bool:
    return os.environ.get("DIB_OFFLINE", "").strip() not in ("", "0")


def _cache_root() -> Path:
    base = os.environ.get("DIB_IMAGE_CACHE") or os.path.expanduser("~/.cache/image-create")
    return Path(base) / "docklet"


def cmd_fetch_source(args) -> None:
    s = _env_settings(host_checks=True)
    dest = Path(args.dest)
    repo, ref = s["DOCKLET_REPO"], s["DOCKLET_REF"]
    log(f"source: {repo} at {ref}")
    info = fetch_source(repo, ref, dest, _cache_root(), offline=_offline())
    check_layout(dest, repo)
    results = apply_patches(dest, strict=s["DOCKLET_STRICT_PATCH"] == "1")
    for r in results:
        log(f"patch {r.line()}")
    (dest / SOURCE_META).write_text(json.dumps(info.__dict__, indent=2) + "\n")
    (dest / PATCH_META).write_text(json.dumps([r.__dict__ for r in results], indent=2) + "\n")
    log(f"source ready: {info.kind} {info.commit or ''} version {info.version or '?'}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["mount-aufs"]:
        try:
            return mount_aufs(argv[1:])
        except DockletError as exc:
            print(f"mount.aufs: {exc}", file=sys.stderr)
            return 32
    ap = argparse.ArgumentParser(prog="docklet_image")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check", help="validate the DOCKLET_* settings")
    p = sub.add_parser("fetch-source", help="fetch, validate and patch the source")
    p.add_argument("dest")
    p = sub.add_parser("basefs", help="place the basefs into the tree (host)")
    p.add_argument("tree")
    p.add_argument("source")
    p = sub.add_parser("install", help="install the staged source and config (chroot)")
    p.add_argument("stage")
    p.add_argument("--root", default="/")
    p = sub.add_parser("pylib", help="pinned Python packages and shim (chroot)")
    p.add_argument("--shim", required=True)
    p.add_argument("--wheel-cache", required=True)
    p.add_argument("--wheelhouse", default="")
    p.add_argument("--cert", default="", help="CA bundle for pip (the build host's)")
    p.add_argument("--root", default="/")
    p = sub.add_parser("system", help="system settings and units (chroot)")
    p.add_argument("--root", default="/")
    p = sub.add_parser("setup", help="configure for this machine (boot)")
    p.add_argument("--root", default="/")
    p = sub.add_parser("service", help="start/stop master or worker (systemd)")
    p.add_argument("role", choices=("master", "worker", "wait-master"))
    p.add_argument("action", nargs="?", default="start", choices=("start", "stop"))
    p.add_argument("--root", default="/")
    p = sub.add_parser("wait-master", help="wait until the master is up")
    p.add_argument("--root", default="/")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "check":
            s = _env_settings(host_checks=True)
            log(f"settings OK: mode {s.mode}, basefs {s['DOCKLET_BASEFS']}, "
                f"source {s['DOCKLET_REPO']} ({s['DOCKLET_REF']})")
        elif args.cmd == "fetch-source":
            cmd_fetch_source(args)
        elif args.cmd == "basefs":
            s = _env_settings(host_checks=True)
            place_basefs(Path(args.tree), s, os.environ, source=Path(args.source),
                         cache_root=_cache_root(), offline=_offline())
        elif args.cmd == "install":
            s = _env_settings()
            install_tree(Path(args.root), Path(args.stage), s,
                         package_dir=Path(__file__).resolve().parent)
        elif args.cmd == "pylib":
            s = _env_settings()
            root = Path(args.root)
            install_pylib(root / s.pylib.lstrip("/"), s.pins, shim=Path(args.shim),
                          wheel_cache=Path(args.wheel_cache), wheelhouse=args.wheelhouse,
                          index_url=s["DOCKLET_PIP_INDEX_URL"], offline=_offline(),
                          cert=args.cert)
        elif args.cmd == "system":
            install_system(Path(args.root), _env_settings())
        elif args.cmd == "setup":
            setup(Path(args.root))
        elif args.cmd == "service":
            if args.role == "wait-master":
                wait_master(Path(args.root))
            else:
                service(Path(args.root), args.role, args.action)
        elif args.cmd == "wait-master":
            wait_master(Path(args.root))
    except DockletError as exc:
        print(f"ERROR: docklet: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
