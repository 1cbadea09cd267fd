"""Command-line front ends: ``disk-image-create`` and ``element-info``.

The only module that prints to stdout, maps :class:`~dib.errors.DibError` to exit codes and
shows tracebacks (with ``--debug``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence

from dib import __version__
from dib.errors import DibError, report

if TYPE_CHECKING:
    from dib.config import BuildConfig

log = logging.getLogger("dib")


def _guarded(main: Callable[[List[str]], int], argv: Optional[Sequence[str]]) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("DIB_DEBUG_TRACEBACK", "").strip().lower() in (
        "1", "true", "yes", "on")
    try:
        return main(args)
    except DibError as exc:
        if debug:
            traceback.print_exc()
        sys.stderr.write(report(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        sys.stderr.write("error: interrupted\n")
        return 130


# -- element-info ---------------------------------------------------------------------------

def _element_info_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="element-info",
        description="Resolve elements the way disk-image-create does -- adding 'base' "
                    "(unless -n) and, for 'vm' without a block-device-* element, the default "
                    "block device -- or list what is available. Elements are looked up in "
                    "ELEMENTS_PATH (colon separated, earlier entries win), then in the "
                    "built-in elements.",
        epilog="Output is the same whatever the order of the ELEMENT arguments: dependencies "
               "come before the elements that need them, ties in name order.")
    p.add_argument("elements", nargs="*", metavar="ELEMENT",
                   help="elements to resolve (repeating one is harmless)")
    p.add_argument("-n", dest="skip_base", action="store_true",
                   help="do not add the 'base' element (as disk-image-create -n)")
    p.add_argument("-a", dest="arch",
                   help="target architecture, which picks the default block device "
                        "(default: $ARCH, else the host's)")
    p.add_argument("-d", "--expand-dependencies", action="store_true",
                   help="accepted for compatibility with old diskimage-builder; expansion is "
                        "always on")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("-e", "--env", action="store_true",
                      help="print the IMAGE_ELEMENT and IMAGE_ELEMENT_YAML exports and the "
                           "get_image_element_array function, as diskimage-builder does")
    mode.add_argument("--list", action="store_true",
                      help="list every available element: name, path and the first "
                           "sentence of its README (takes no ELEMENT)")
    mode.add_argument("--builtin-path", action="store_true",
                      help="print the directory of dib's built-in elements (takes no ELEMENT), "
                           "e.g. to put diskimage-builder's library after it: "
                           "ELEMENTS_PATH=$(element-info --builtin-path):<its elements dir>")
    mode.add_argument("--graph", action="store_true",
                      help="print the resolved dependency graph in DOT (A -> B: A depends on B)")
    p.add_argument("--json", action="store_true",
                   help="print JSON instead: with --list, a list of {name, path, summary, deps, "
                        "provides, overrides}; otherwise the resolution {requested, "
                        "implicit, order, provided, elements: [{name, path, deps, provides, "
                        "requires}]} (implicit: what was added to the ELEMENT arguments), "
                        "which holds everything --env and --graph show (so --json wins over "
                        "them)")
    p.add_argument("--debug", action="store_true", help="debug logging; tracebacks on errors")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _element_info(argv: List[str]) -> int:
    from dib import config, element, resolver
    from dib import log as dlog

    parser = _element_info_parser()
    args = parser.parse_args(argv)
    if (args.list or args.builtin_path) and args.elements:
        parser.error(f"{'--list' if args.list else '--builtin-path'} takes no ELEMENT arguments")
    if args.builtin_path:
        print(element.builtin_elements_dir())
        return 0
    if not args.list and not args.elements:
        parser.error("at least one ELEMENT is required (or --list)")
    dlog.setup(verbose=1 if args.debug else 0)
    catalogue = element.discover(element.search_path(os.environ.get("ELEMENTS_PATH")))
    if args.list:
        rows = [{"name": e.name, "path": str(e.path), "summary": e.summary,
                 "deps": list(e.deps), "provides": list(e.provides),
                 "overrides": [str(p) for p in catalogue.overridden.get(e.name, ())]}
                for e in catalogue.elements.values()]
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        name_w = max((len(r["name"]) for r in rows), default=0)
        path_w = max((len(r["path"]) for r in rows), default=0)
        for r in rows:
            print(f"{r['name']:<{name_w}}  {r['path']:<{path_w}}  {r['summary']}".rstrip())
        return 0
    arch = args.arch or os.environ.get("ARCH") or config.host_arch()  # as disk-image-create
    names = resolver.implicit_elements(args.elements, skip_base=args.skip_base, arch=arch)
    res = resolver.resolve(names, catalogue)
    if args.json:
        implicit = [n for n in names if n not in args.elements]
        print(json.dumps({**resolver.to_data(res), "implicit": implicit}, indent=2))
    elif args.graph:
        print(resolver.to_dot(res), end="")
    elif args.env:
        print(resolver.env_exports(res), end="")
    else:
        print(" ".join(res.order))
    return 0


def element_info(argv: Optional[Sequence[str]] = None) -> int:
    try:
        return _guarded(_element_info, argv)
    except BrokenPipeError:  # e.g. `element-info --list | head`: the reader went away
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush is silent
        return 141  # 128 + SIGPIPE, as a shell reports it


# -- disk-image-create ------------------------------------------------------------------------

def _disk_image_create(argv: List[str]) -> int:
    from dib import config
    from dib import log as dlog

    if any(a == "--recipe" or a.startswith("--recipe=") for a in argv):
        from dib import recipe
        if "--dry-run" in argv:
            for n, (img, cfg) in enumerate(recipe.check_all(argv, dict(os.environ)), 1):
                _print_plan(cfg, f"image {n} ({img.name}) ")
            return 0
        address = recipe.farm_address(argv, os.environ)
        try:
            if address is not None:
                from dib import farm  # the only way into Dask (docs/farm.md)
                outcome = farm.run(argv, dict(os.environ), address)
            else:
                outcome = recipe.run(argv, dict(os.environ))
        finally:
            dlog.end_status()
        for path in outcome.outputs:
            print(path)
        if outcome.error is not None:
            raise outcome.error
        return 0
    cfg = config.parse_args(argv, dict(os.environ))
    # the status line stays off while break points may open an interactive shell
    dlog.setup(verbose=cfg.trace, quiet=cfg.quiet,
               progress=cfg.progress and not cfg.break_points and cfg.action != "cleanup"
               and not cfg.dry_run)
    if any(a == "--farm" or a.startswith("--farm=") for a in argv):
        from dib.errors import ConfigError
        raise ConfigError("--farm builds the images of a --recipe",
                          hint="write the image into a recipe file (docs/artifacts.md) and run "
                               "disk-image-create --recipe FILE --farm ...")
    if cfg.action == "cleanup":
        from dib import workdir
        for line in workdir.cleanup_stale(cfg.tmp_dir):
            print(line)
        return 0
    if cfg.dry_run:
        _print_plan(cfg)
        return 0
    from dib import build
    try:
        result = build.build_image(cfg)
    finally:
        dlog.end_status()  # before the paths below, or an error's report
    for path in result.outputs:
        print(path)
    return 0


def _print_plan(cfg: "BuildConfig", title: str = "") -> None:
    from dib import dryrun

    lines = dryrun.plan(cfg)
    print(f"{title}dry run: nothing is built")
    for line in lines:
        print(f"  {line}")


def disk_image_create(argv: Optional[Sequence[str]] = None) -> int:
    return _guarded(_disk_image_create, argv)


# -- dib-cache ----------------------------------------------------------------------------------

def _dib_cache(argv: List[str]) -> int:
    import time

    from dib import cache, config

    p = argparse.ArgumentParser(prog="dib-cache",
                                description="List and prune dib's cache (bootstrap tarballs, "
                                            "tree layers, finished images).")
    cache_setting = config.BY_NAME["image_cache"]
    config.add_argument(p, cache_setting)
    p.add_argument("--debug", action="store_true")
    # the same options after the command too (dib-cache list --image-cache DIR)
    common = argparse.ArgumentParser(add_help=False)
    config.add_argument(common, cache_setting, default=argparse.SUPPRESS)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", parents=[common], help="every entry, least recently used first")
    ls.add_argument("--json", action="store_true")
    pr = sub.add_parser("prune", parents=[common],
                        help="drop least-recently-used entries down to a size")
    group = pr.add_mutually_exclusive_group(required=True)
    group.add_argument("--max-size", help="e.g. 20G (read as DIB_CACHE_MAX_SIZE is)")
    group.add_argument("--all", action="store_true", help="drop everything not in use")
    pr.add_argument("--min-free", default="0",
                    help="also drop entries while the cache's filesystem has less free, e.g. 5G")
    args = p.parse_args(argv)
    root = config.setting_value(cache_setting, args.image_cache, os.environ)
    if args.command == "list":
        entries = cache.all_entries(root)
        if args.json:
            print(json.dumps([e.__dict__ for e in entries], indent=2, default=str))
            return 0
        now = time.time()
        for e in entries:
            label = e.inputs.get("step") or e.inputs.get("release") or ""
            print(f"{e.kind:<10} {e.key[:16]:<17} {e.size / (1 << 20):9.1f} MiB  "
                  f"used {(now - (e.used or e.created)) / 3600:7.1f} h ago  {label}")
        total = sum(e.size for e in entries)
        print(f"{len(entries)} entries, {total / (1 << 20):.1f} MiB in {root}")
        return 0
    # the sizes are read as DIB_CACHE_MAX_SIZE / DIB_CACHE_MIN_FREE are (the settings table)
    limit = 0 if args.all else config.BY_NAME["cache_max_size"].value(args.max_size,
                                                                     "--max-size")
    min_free = config.BY_NAME["cache_min_free"].value(args.min_free, "--min-free")
    dropped = cache.prune_lru(root, limit, min_free=min_free)
    print(f"dropped {len(dropped)} entries, "
          f"{sum(e.size for e in dropped) / (1 << 20):.1f} MiB")
    return 0


def dib_cache(argv: Optional[Sequence[str]] = None) -> int:
    return _guarded(_dib_cache, argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(disk_image_create())
