"""``disk-image-create --recipe FILE --farm tcp://SCHEDULER:8786``: a recipe built on a Dask
cluster, one task per image (docs/farm.md).

The submitter checks every image exactly as a local recipe run does (:func:`dib.recipe.plan`
and its checks: a typo fails before anything is submitted), packs each into a
:class:`~dib.farmtask.Task` keyed by its inputs, and submits it with ``resources={"dib": 1}``
(workers started with ``--resources dib=1`` run one build at a time) and ``retries=1``. It
then reports each image as it starts (an event the worker sends) and ends, with its log's
last lines when it failed, and exits non-zero if any image failed.

This module is imported only with ``--farm`` (and it alone imports Dask on the submitter):
a build without it never loads Dask.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from dib import config, element, farmtask, farmworker, recipe, resolver
from dib.errors import ConfigError, DibError

log = logging.getLogger("dib.farm")

#: seconds between the submitter's "still waiting" lines
HEARTBEAT = 30.0
#: seconds to wait for the scheduler to answer
CONNECT_TIMEOUT = "20s"


def tasks(argv: Sequence[str], environ: Mapping[str, str],
          cwd: str) -> Tuple[List[farmtask.Task], bool, Any]:
    """Every image of the recipe(s) in ``argv``, checked and packed (nothing is submitted);
    also --stop-on-failure and the checked BuildConfigs."""
    images, stop = recipe.plan(argv, environ)
    cfgs = [recipe.check_image(img) for img in images]
    packed = []
    builtin = element.builtin_elements_dir()
    for img, cfg in zip(images, cfgs):
        values = vars(config._parser().parse_args(img.argv))
        catalogue = element.discover(element.search_path(cfg.elements_path))
        names = resolver.implicit_elements(cfg.elements, skip_base=cfg.skip_base,
                                           arch=cfg.arch)
        res = resolver.resolve(names, catalogue)
        own = {k: str(v) for k, v in (img.entry.get("environment") or {}).items()}
        packed.append(farmtask.make_task(
            img.name, cfg, values, img.env, own,
            [(n, res.elements[n].path) for n in res.order], builtin, cwd))
    return packed, stop, cfgs


def _dask() -> Any:
    """The ``distributed`` package (untyped, hence Any); imported here and only here."""
    import distributed

    return distributed


def _connect(address: str) -> Any:
    try:
        return _dask().Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"--farm {address}: cannot reach the Dask scheduler ({exc})",
                          hint="is `dask scheduler` running there, and the port open? "
                               "(docs/farm.md)") from None


def _check_workers(client: Any, address: str) -> None:
    workers = client.scheduler_info().get("workers", {})
    able = [w for w in workers.values() if (w.get("resources") or {}).get("dib", 0) >= 1]
    if not able:
        log.warning("farm %s: %d worker(s), none with the 'dib' resource: the images wait "
                    "until one joins (start workers with `dask worker --resources dib=1 "
                    "--nthreads 1 --preload dib.farmworker`)", address, len(workers))
    else:
        log.info("farm %s: %d worker(s) can build", address, len(able))


def run(argv: Sequence[str], environ: Mapping[str, str], address: str) -> recipe.Outcome:
    """Build every image of the recipe(s) on the farm at ``address``."""
    from dib import log as dlog

    packed, stop, cfgs = tasks(argv, environ, os.getcwd())
    dlog.setup(verbose=max(c.trace for c in cfgs), quiet=all(c.quiet for c in cfgs))
    client = _connect(address)
    outcome = recipe.Outcome()
    try:
        _check_workers(client, address)
        _run(client, packed, stop, outcome)
    finally:
        client.close()
    recipe.summarize(outcome, len(packed))
    return outcome


def _run(client: Any, packed: Sequence[farmtask.Task], stop: bool,
         outcome: recipe.Outcome) -> None:
    wait = _dask().wait
    where: Dict[str, str] = {}

    def on_event(event: Any) -> None:
        _, msg = event
        if not isinstance(msg, dict) or msg.get("key") not in by_key:
            return
        if msg.get("event") == "started":
            where[msg["key"]] = f"{msg.get('host')} ({msg.get('worker')})"
            log.info("farm: %s: building on %s", msg.get("label"), where[msg["key"]])
        elif msg.get("event") == "killed":
            log.warning("farm: %s: the build on %s was killed (signal %s); it is retried",
                        msg.get("label"), msg.get("worker"), msg.get("signal"))

    by_key = {t.key: t for t in packed}
    client.subscribe_topic(farmworker.TOPIC, on_event)
    futures: Dict[str, Any] = {}
    for t in packed:
        futures[t.key] = client.submit(farmworker.build, t, key=t.key,
                                       resources={"dib": 1}, retries=1, pure=False)
    log.info("farm: submitted %d image%s: %s", len(packed), "" if len(packed) == 1 else "s",
             ", ".join(f"{t.label} ({t.key})" for t in packed))
    pending = set(futures.values())
    done_n = 0
    try:
        while pending:
            try:
                finished, pending = wait(pending, timeout=HEARTBEAT,
                                         return_when="FIRST_COMPLETED")
            except TimeoutError:
                _heartbeat(client, pending, by_key, where)
                continue
            for fut in finished:
                done_n += 1
                ok = _collect(fut, by_key[str(fut.key)], outcome, done_n, len(packed))
                if not ok and stop and pending:
                    client.cancel(list(pending))
                    pending = set()
    except BaseException:
        client.cancel(list(futures.values()))
        raise


def _heartbeat(client: Any, pending: Any, by_key: Mapping[str, farmtask.Task],
               where: Mapping[str, str]) -> None:
    parts = []
    for fut in sorted(pending, key=lambda f: str(f.key)):
        key = str(fut.key)
        state = f"building on {where[key]}" if key in where else "queued"
        parts.append(f"{by_key[key].label} ({state})")
    log.info("farm: waiting for %d image%s: %s", len(parts), "" if len(parts) == 1 else "s",
             ", ".join(parts))


def _collect(fut: Any, task: farmtask.Task, outcome: recipe.Outcome, n: int,
             total: int) -> bool:
    """Record one finished task; True if the image was built."""
    from pathlib import Path

    try:
        result: farmworker.Outcome = fut.result()
    except Exception as exc:  # the task raised (after its retries) or was cancelled
        error = DibError(f"{task.label}: not built on the farm: {type(exc).__name__}: {exc}",
                         hint="the workers' logs say more (docs/farm.md, troubleshooting)")
        log.error("farm: [%d/%d] %s failed: %s", n, total, task.label, error.message)
        outcome.failed.append((task.label, error))
        return False
    if result.ok:
        remote = f", {result.remote_hits} from the remote cache" if result.remote_hits else ""
        log.info("farm: [%d/%d] %s built on %s in %.0f s (%d of %d steps cached%s)", n, total,
                 task.label, result.host, result.seconds, result.hits, result.steps, remote)
        outcome.outputs.extend(Path(p) for p in result.outputs)
        outcome.built.append(task.label)
        return True
    tail = "\n".join("    " + line for line in result.tail.splitlines())
    log.error("farm: [%d/%d] %s failed on %s (exit %d) after %.0f s; the end of its log:\n%s",
              n, total, task.label, result.host, result.returncode, result.seconds, tail)
    error = DibError(f"{result.error.splitlines()[0] if result.error else 'build failed'} "
                     f"(on {result.host})",
                     hint=f"its whole log: {Path(result.report).parent / 'build.log'}")
    error.exit_code = result.returncode if 0 < result.returncode < 126 else 1
    outcome.failed.append((task.label, error))
    return False
