#!/usr/bin/env python3
"""Benchmark the build farm (docs/farm.md): four Debian images built

    (a) by diskimage-builder, one after another (empty cache),
    (b) by this project on one machine, as one recipe (empty cache; it pushes every layer to
        a fresh registry: the registry is warm afterwards),
    (c) through the farm: a Dask scheduler and --workers workers on this machine, each with
        an empty local cache of its own, sharing the warm registry,
    (d) fresh builder: the first image alone, empty local cache, warm registry.

and reports wall seconds, bytes pulled from and pushed to the registry, and hit rates
(steps from the local cache, from the remote cache), with the ratios the issue sets goals
for: (c) / (a) <= 0.15 and (d) / our cold build of that image <= 0.3.

The images (DIB_RELEASE=bookworm):

    vm debian-minimal                  qcow2
    vm debian growroot                 qcow2
    debian-minimal                     tar (diskimage-builder's -t docker needs a docker
                                       daemon, which this machine has not; tar for both)
    vm debian-minimal openssh-server   qcow2

Everything runs on this machine (the registry is Debian's docker-registry on 127.0.0.1, the
Dask cluster is tests/lib/farm.py's), so (c) measures what sharing layers saves, not what
more machines add. Reuses bench/bench.py's diskimage-builder setup. Run as root:

    python3 bench/farm.py [--skip-dib] [--images N] [--workers 2] [--workdir DIR]

Results: bench/results/farm-<UTC timestamp>.md and .json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path[:0] = [str(BENCH_DIR), str(REPO)]

import bench as b  # noqa: E402  (bench/bench.py: diskimage-builder's venv and host shims)

IMAGES = [("vm-minimal", ["vm", "debian-minimal"], "qcow2"),
          ("vm-growroot", ["vm", "debian", "growroot"], "qcow2"),
          ("tar-minimal", ["debian-minimal"], "tar"),
          ("vm-ssh", ["vm", "debian-minimal", "openssh-server"], "qcow2")]


def say(msg: str) -> None:
    b.say(msg)


def timed(argv: List[str], env: Dict[str, str], log: Path) -> Dict[str, Any]:
    say("$ " + " ".join(argv))
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd="/")
        rc, utime, stime = b.wait_child(proc)
    wall = time.monotonic() - t0
    say(f"  exit {rc}, {wall:.1f} s wall")
    row: Dict[str, Any] = {"rc": rc, "ok": rc == 0, "wall_s": round(wall, 2),
                           "cpu_s": round(utime + stime, 2), "log": str(log)}
    if rc != 0:
        row["log_tail"] = b.tail(log, 30)
    return row


def reports(out: Path, names: List[str]) -> Dict[str, Any]:
    """Totals over the build reports of ``names`` below ``out``."""
    tot = {"steps": 0, "cached": 0, "remote_hits": 0, "pushed": 0, "bytes_pulled": 0,
           "bytes_pushed": 0, "images": 0}
    for n in names:
        try:
            rep = json.loads((out / f"{n}.d" / "build-report.json").read_text())
        except (OSError, ValueError):
            continue
        steps = rep.get("steps") or []
        remote = rep.get("remote_cache") or {}
        tot["images"] += 1
        tot["steps"] += len(steps)
        tot["cached"] += sum(1 for s in steps if s.get("cached"))
        tot["remote_hits"] += sum(1 for s in steps if s.get("remote") == "hit")
        tot["pushed"] += sum(1 for s in steps if s.get("remote") == "pushed")
        tot["bytes_pulled"] += int(remote.get("bytes_pulled") or 0)
        tot["bytes_pushed"] += int(remote.get("bytes_pushed") or 0)
    return tot


def _drop_outputs(out: Path) -> None:
    """The images below ``out`` (their reports stay)."""
    for p in out.iterdir() if out.is_dir() else []:
        if p.is_file():
            p.unlink()
        elif p.is_dir() and not p.name.endswith(".d"):
            shutil.rmtree(p, ignore_errors=True)


def recipe(path: Path, out: Path, images, remote: Optional[str]) -> Path:
    import yaml

    doc = []
    for name, elements, fmt in images:
        entry: Dict[str, Any] = {"imagename": str(out / name), "elements": elements,
                                 "types": [fmt], "no-tmpfs": True}
        if remote:
            entry["remote-cache"] = remote
        doc.append(entry)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skip-dib", action="store_true", help="leave out (a)")
    p.add_argument("--images", type=int, default=len(IMAGES),
                   help=f"build the first N of the {len(IMAGES)} images (default all)")
    p.add_argument("--workers", type=int, default=2, help="farm workers (default 2)")
    p.add_argument("--dib-version", default="3.43.0")
    p.add_argument("--venv", help="venv with diskimage-builder (as bench.py)")
    p.add_argument("--sudo", choices=["auto", "host", "shim"], default="auto")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp/dib-farm-bench"))
    p.add_argument("--keep", action="store_true",
                   help="keep the run's caches, registry and logs (GiBs; default: removed, "
                        "each stage's images as soon as it is measured)")
    args = p.parse_args(argv)
    args.workdir = args.workdir.resolve()
    if not 1 <= args.images <= len(IMAGES):
        p.error(f"--images takes 1 to {len(IMAGES)}")
    return args


def _reexec_in_venv() -> None:
    """Dask and PyYAML live in the checkout's venv: run there (as bin/ scripts do)."""
    try:
        import distributed  # noqa: F401
        import yaml  # noqa: F401
    except ImportError:
        venv_python = REPO / ".venv" / "bin" / "python"
        if venv_python.exists() and Path(sys.executable) != venv_python:
            os.execv(str(venv_python), [str(venv_python), *sys.argv])
        raise SystemExit("farm.py needs dib's farm extra: "
                         "python3 bin/dib-host-setup --test") from None


def main(argv: Optional[List[str]] = None) -> int:
    _reexec_in_venv()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        print("farm.py: run as root", file=sys.stderr)
        return 2
    from tests.lib import registry
    from tests.lib.farm import Cluster

    if not registry.available():
        print(f"farm.py: {registry.SKIP_REASON}", file=sys.stderr)
        return 2
    images = IMAGES[:args.images]
    started = datetime.datetime.now(datetime.timezone.utc)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    wd = args.workdir
    shutil.rmtree(wd / "run", ignore_errors=True)
    dirs = {k: wd / "run" / k for k in ("out", "logs", "tmp", "cache", "registry")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    mirror, security = b.host_mirrors()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DIB_") and k not in ("ELEMENTS_PATH", "TMP_DIR")}
    env.update({"DIB_RELEASE": "bookworm", "DIB_DISTRIBUTION_MIRROR": mirror,
                "DIB_DEBIAN_SECURITY_MIRROR": security, "OVERWRITE_OLD_IMAGE": "1"})
    meta: Dict[str, Any] = {"started_utc": started.strftime("%Y-%m-%d %H:%M:%S"),
                            "images": [" ".join(e) + f" ({f})" for _, e, f in images],
                            "workers": args.workers, "project_rev": b.git_describe(),
                            "host": {"cpus": os.cpu_count()}}
    rows: Dict[str, Any] = {}
    host = b.HostSetup(wd, args.sudo)
    try:
        # (a) diskimage-builder, one image after another
        if not args.skip_dib:
            venv, version = b.ensure_venv(argparse.Namespace(
                venv=args.venv, dib_version=args.dib_version, workdir=wd))
            host.open()
            denv = dict(env, TMP_DIR=str(dirs["tmp"] / "dib"),
                        PATH=":".join(host.dib_path_prefix() + [str(venv / "bin"),
                                                                env.get("PATH", b.SECURE_PATH)]),
                        VIRTUAL_ENV=str(venv))
            Path(denv["TMP_DIR"]).mkdir(parents=True, exist_ok=True)
            t0, ok = time.monotonic(), True
            for name, elements, fmt in images:
                r = timed([str(venv / "bin" / "disk-image-create"), "-t", fmt,
                           "-o", str(dirs["out"] / f"dib-{name}"),
                           "--image-cache", str(dirs["cache"] / "dib"), *elements], denv,
                          dirs["logs"] / f"dib-{name}.log")
                ok = ok and r["ok"]
            rows["a_dib"] = {"wall_s": round(time.monotonic() - t0, 2), "ok": ok,
                             "dib_version": version}
            b.sweep([dirs["tmp"]])
        with registry.running(dirs["registry"]) as reg:
            oenv = dict(env, TMP_DIR=str(dirs["tmp"] / "ours"),
                        DIB_IMAGE_CACHE=str(dirs["cache"] / "ours"))
            Path(oenv["TMP_DIR"]).mkdir(parents=True, exist_ok=True)
            # (b) this project on one machine, one recipe, pushing to the fresh registry
            rec = recipe(wd / "run" / "recipe-b.yaml", dirs["out"] / "b", images, reg.url)
            r = timed([sys.executable, str(b.OUR_CLI), "--recipe", str(rec)], oenv,
                      dirs["logs"] / "b.log")
            r.update(reports(dirs["out"] / "b", [n for n, _, _ in images]))
            rows["b_ours"] = r
            try:
                first = json.loads((dirs["out"] / "b" / f"{images[0][0]}.d" /
                                    "build-report.json").read_text())["seconds"]
            except (OSError, ValueError, KeyError):
                first = None
            rows["b_first_image_s"] = first
            # GiBs nobody reads again: the registry holds what (c) and (d) need
            _drop_outputs(dirs["out"] / "b")
            shutil.rmtree(dirs["cache"] / "ours", ignore_errors=True)
            # (c) the farm: empty worker caches, warm registry
            with Cluster(wd / "run" / "farm", n_workers=args.workers) as cluster:
                rec = recipe(wd / "run" / "recipe-c.yaml", dirs["out"] / "c", images, reg.url)
                r = timed([sys.executable, str(b.OUR_CLI), "--recipe", str(rec), "--farm",
                           cluster.address], oenv, dirs["logs"] / "c.log")
                r.update(reports(dirs["out"] / "c", [n for n, _, _ in images]))
                rows["c_farm"] = r
                _drop_outputs(dirs["out"] / "c")
                for w in cluster.workers:
                    shutil.rmtree(w.cache, ignore_errors=True)
            # (d) a fresh builder: the first image, empty cache, warm registry
            fenv = dict(oenv, DIB_IMAGE_CACHE=str(dirs["cache"] / "fresh"))
            name, elements, fmt = images[0]
            r = timed([sys.executable, str(b.OUR_CLI), "--no-tmpfs", "-t", fmt,
                       "--remote-cache", reg.url, "-o", str(dirs["out"] / "d" / name),
                       *elements], fenv, dirs["logs"] / "d.log")
            r.update(reports(dirs["out"] / "d", [name]))
            rows["d_fresh"] = r
    finally:
        b.sweep([dirs["tmp"], dirs["out"]])
        host.close()
        if not args.keep:
            shutil.rmtree(wd / "run", ignore_errors=True)
    ratios = {}
    if "a_dib" in rows and rows["a_dib"]["wall_s"]:
        ratios["c/a"] = round(rows["c_farm"]["wall_s"] / rows["a_dib"]["wall_s"], 3)
        ratios["b/a"] = round(rows["b_ours"]["wall_s"] / rows["a_dib"]["wall_s"], 3)
    if rows.get("b_first_image_s"):
        ratios["d/b-first"] = round(rows["d_fresh"]["wall_s"] / rows["b_first_image_s"], 3)
    result = {"meta": meta, "rows": rows, "ratios": ratios,
              "goals": {"c/a": 0.15, "d/b-first": 0.3}}
    lines = [f"# Farm benchmark {stamp}", "", f"images: {', '.join(meta['images'])}",
             f"workers: {args.workers} (on this machine)", "",
             "| run | wall s | ok | steps | cached | remote hits | pushed | MiB pulled "
             "| MiB pushed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key in ("a_dib", "b_ours", "c_farm", "d_fresh"):
        r = rows.get(key)
        if not r:
            continue
        lines.append(f"| {key} | {r['wall_s']} | {r['ok']} | {r.get('steps', '')} | "
                     f"{r.get('cached', '')} | {r.get('remote_hits', '')} | "
                     f"{r.get('pushed', '')} | {r.get('bytes_pulled', 0) / 2**20:.1f} | "
                     f"{r.get('bytes_pushed', 0) / 2**20:.1f} |")
    lines += ["", "ratios (goals: c/a <= 0.15, d/b-first <= 0.3): "
              + ", ".join(f"{k} = {v}" for k, v in ratios.items())]
    text = "\n".join(lines) + "\n"
    b.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (b.RESULTS_DIR / f"farm-{stamp}.md").write_text(text)
    (b.RESULTS_DIR / f"farm-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(text)
    return 0 if all(r.get("ok", True) for r in rows.values() if isinstance(r, dict)) else 1


if __name__ == "__main__":
    sys.exit(main())
