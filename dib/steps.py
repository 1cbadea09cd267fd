"""The tree's steps, root.d through post-root.d, each a cached overlay layer.

* root.d is one step: it writes the base layer.
* extra-data.d runs every build (it fetches into the hooks tree, which is not a layer); if it
  also wrote into the tree, what it wrote becomes a layer keyed by its content.
* every script of pre-install.d, install.d, post-install.d and post-root.d is a step of its
  own, and so is ``-p``.

A step's key chains the previous step's key with its inputs (:func:`_inputs`), so a rebuild
reuses every layer up to the first step whose inputs changed and runs from there; the build
report says, for each step, hit or miss and, on a miss, which inputs changed.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from dib import content_keys, layers
from dib import log as dlog
from dib.beside import Beside
from dib.cache import file_sha256
from dib.context import BuildContext, finish_tree
from dib.errors import ConfigError, DibError
from dib.hooks import Script
from dib.layers import StepRecord
from dib.phases import PHASE_NAMES, Phase, of_stage
from dib.runparts import Runner
from dib.tree import LayeredTree

log = logging.getLogger("dib.build")

#: element files that cannot change the image (documentation, the element's own tests)
NOT_INPUTS = ("README.rst", "README.md", "tests", "test-elements")


class Chain:
    """Keys of the steps so far, and what every step's key depends on."""

    def __init__(self, b: BuildContext) -> None:
        self.b = b
        self.prev = "root"
        self.build = layers.step_key(layers.build_inputs(b.cfg.arch, b.cfg.env, b.cfg.packages))
        # element data (everything but hook scripts): any change re-runs every step
        self.elements = layers.step_key({e.name: layers.tree_digest(
            e.path, skip_top=PHASE_NAMES + NOT_INPUTS) for e in b.res.ordered()})
        self.shared = ""
        self.declared = content_keys.load({e.name: e.path for e in b.res.ordered()},
                                          [p.name for p in of_stage("tree") if p.script_steps])
        self.plan = plan(b)

    def announce(self, step_id: str) -> None:
        """Step ``step_id`` starts (for the status line: k of N, its element)."""
        labels = [label for label, _ in self.plan]
        if step_id in labels:
            k = labels.index(step_id)
            dlog.step_started(k + 1, len(self.plan), step_id, self.plan[k][1])

    def inputs(self, step: str, **extra: Any) -> Dict[str, Any]:
        return {"prev": self.prev, "step": step, "build": self.build,
                "elements": self.elements, "shared": self.shared, **extra}


#: the last step of the plan: everything after the tree (disk or final phases, outputs)
DISK_STEP, FINAL_STEP = "disk and outputs", "final phases and outputs"


def plan(b: BuildContext) -> List[Tuple[str, str]]:
    """The steps of this build in order, (label, element), as the status line counts them:
    the tree's steps, then one for everything after the tree."""
    out: List[Tuple[str, str]] = []
    for phase in of_stage("tree"):
        scripts = b.tree_hooks.scripts(phase.name)
        if phase.name == "root.d":
            out.append(("root.d", ", ".join(sorted({s.element for s in scripts}))))
        elif phase.name == "extra-data.d":
            if b.has_work(phase.name):
                out.append(("extra-data.d", ", ".join(sorted({s.element for s in scripts}))))
        else:
            out.extend((f"{phase.name}/{s.name}", s.element) for s in scripts)
            if phase.name == "install.d" and b.cfg.packages:
                out.append(("-p", ""))
    out.append((DISK_STEP if b.cfg.needs_block_device else FINAL_STEP, ""))
    return out


def _reuse(b: BuildContext, tree: LayeredTree, step_id: str,
           candidates: Sequence[Tuple[str, Mapping[str, Any]]], *, host: bool,
           beside: Optional[Beside]) -> Optional[str]:
    """The layer of the first of ``candidates`` (key, inputs) in the cache, or pulled from
    the remote cache, put on the tree; returns its key (None: a miss)."""
    start = time.monotonic()
    for key, _ in candidates:
        hit = b.store.lookup(key)
        if hit is not None:
            if beside is not None:
                beside.collides(step_id, hit, again=False)
            tree.add_layer(hit)
            if host:
                b.store.restore_hooks_delta(key, b.wd.hooks)
            backfilled = b.remote is not None and b.remote.backfill(key, hit, step_id)
            b.steps.append(StepRecord(step_id, key, True, 0.0,
                                      remote="pushed" if backfilled else ""))
            log.info("%s  (cached)", step_id)
            return key
    for key, candidate in candidates if b.remote is not None else ():
        assert b.remote is not None
        pulled = b.remote.fetch(key, step_id, candidate)
        if pulled is not None:
            if beside is not None:
                beside.collides(step_id, pulled, again=False)
            tree.add_layer(pulled)
            if host:
                b.store.restore_hooks_delta(key, b.wd.hooks)
            b.steps.append(StepRecord(step_id, key, True, round(time.monotonic() - start, 3),
                                      remote="hit"))
            return key
    return None


def _changed(b: BuildContext, step_id: str, inputs: Mapping[str, Any],
             chained: Optional[Mapping[str, Any]]) -> Tuple[str, ...]:
    """Which inputs changed since ``step_id`` was last kept, for the report: against the form
    of key it was last kept under (the chain's, ``chained``, if it strayed)."""
    last = b.store.last_inputs(step_id)
    compare = chained if chained is not None and last and "prev" in last else inputs
    changed = tuple(layers.changed_inputs(last, compare))
    if b.store.enabled:
        log.debug("%s: cache miss, changed: %s", step_id, ", ".join(changed))
    return changed


def _empty(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _step(b: BuildContext, tree: LayeredTree, step_id: str, inputs: Mapping[str, Any],
          body: Callable[[Path], None], *, base: bool = False, host: bool = False,
          declared: Optional[Tuple[content_keys.Declaration, content_keys.Reading,
                                   Mapping[str, Any]]] = None,
          beside: Optional[Beside] = None) -> str:
    """Reuse the layer for ``inputs`` or run ``body`` on a fresh one; returns the key.

    A ``host`` step (root.d, post-root.d) may also write into the hooks tree (e.g. an
    environment.d file for later phases); what it wrote is kept with its layer and put back
    when the layer is reused.

    ``declared`` (a step of layer-inputs.yaml, what it read, and the chain's inputs for it):
    ``inputs`` are then its content inputs; the layer is also looked up by the chain's inputs,
    and kept under them instead when the step changed a path it did not declare.

    ``beside``: a step may be running beside this one (:mod:`dib.beside`); what this step
    changed is checked against it before it is kept.
    """
    candidates = [(layers.step_key(inputs), inputs)]
    if declared is not None:
        candidates.append((layers.step_key(declared[2]), declared[2]))
    reused = _reuse(b, tree, step_id, candidates, host=host, beside=beside)
    if reused is not None:
        return reused
    start = time.monotonic()
    key = candidates[0][0]
    before = layers.snapshot(b.wd.hooks) if host else None
    changed = _changed(b, step_id, inputs, declared[2] if declared is not None else None)
    with b.store.new_upper(step_id) as upper:
        if base:
            with tree.write_base(upper) as mnt:
                body(mnt)
        else:
            work = b.store.work_dir(upper)
            with tree.write_step(upper, work) as mnt, b.chroot(mnt):
                body(mnt)
            if beside is not None and beside.collides(step_id, upper, again=True):
                _empty(upper)
                with tree.write_step(upper, work) as mnt, b.chroot(mnt):
                    body(mnt)
        if declared is not None and b.store.enabled:
            decl, reading, chained = declared
            stray = content_keys.undeclared(upper, reading.allowed)
            if stray:
                log.warning("%s (element %s) changed %s, which its %s does not declare; its "
                            "layer is keyed by every step before it instead", step_id,
                            decl.element, ", ".join(stray), content_keys.FILE_NAME)
                key, inputs = layers.step_key(chained), chained
        layer = b.store.commit(key, upper, step_id, inputs)
    if before is not None:
        b.store.save_hooks_delta(key, b.wd.hooks, before)
    tree.add_layer(layer)
    remote = ""
    if b.remote is not None:
        remote = "pushed" if b.remote.push(key, layer, step_id) else "push failed"
    b.steps.append(StepRecord(step_id, key, False, round(time.monotonic() - start, 3), changed,
                              remote))
    return key


def _not_empty(root: Path) -> bool:
    return any(p.name not in ("lost+found", "tmp", "proc", "sys", "dev") for p in root.iterdir())


def _root_step(b: BuildContext, tree: LayeredTree, chain: Chain) -> None:
    scripts = b.tree_hooks.scripts("root.d")
    if not scripts:
        raise DibError("no element has root.d scripts: nothing creates the root filesystem",
                       hint="include an operating-system element (debian, ubuntu, ...)")
    digests = {f"{s.element}/{s.name}": file_sha256(s.path) for s in scripts}
    inputs = {**chain.inputs("root.d", scripts=digests),
              "elements": base_elements(b, {s.element for s in scripts})}

    def body(mnt: Path) -> None:
        b.run("root.d", mnt)
        if not _not_empty(mnt):
            raise DibError("root.d left the tree empty: no element created the root "
                           "filesystem", hint="the operating-system element's root.d must "
                                              "populate $TARGET_ROOT")

    chain.announce("root.d")
    chain.prev = _step(b, tree, "root.d", inputs, body, base=True, host=True)


def base_elements(b: BuildContext, owners: Set[str]) -> str:
    """The element data the base layer (root.d) depends on: all of the data of the elements
    that have root.d scripts, and every element's environment.d (what the hooks' environment
    is made of). root.d runs first, on an empty tree, and its scripts read their own
    element's files and the environment, not other elements' data; so element sets that
    differ only in other elements share the base layer, locally and in a remote cache."""
    parts = {}
    for e in b.res.ordered():
        if e.name in owners:
            parts[e.name] = layers.tree_digest(e.path, skip_top=PHASE_NAMES + NOT_INPUTS)
        elif (e.path / "environment.d").is_dir():
            parts[e.name] = layers.tree_digest(e.path / "environment.d")
    return layers.step_key(parts)


def _extra_data_step(b: BuildContext, tree: LayeredTree, chain: Chain) -> None:
    """extra-data.d on every build; a layer only if it wrote into the tree."""
    if b.has_work("extra-data.d"):
        chain.announce("extra-data.d")
        with b.store.new_upper("extra-data.d") as upper:
            with tree.write_step(upper, b.store.work_dir(upper)) as mnt, b.chroot(mnt):
                b.run("extra-data.d", mnt)
            if any(upper.iterdir()):
                inputs = chain.inputs("extra-data.d", content=layers.tree_digest(upper))
                key = layers.step_key(inputs)
                tree.add_layer(b.store.commit(key, upper, "extra-data.d", inputs))
                chain.prev = key
            else:
                shutil.rmtree(upper)
    # what later steps can read from the hooks tree besides the scripts themselves
    # (dib-elements.json only lists the elements' paths: where an element lives is no input)
    chain.shared = layers.tree_digest(b.wd.hooks, skip_top=PHASE_NAMES + ("dib-elements.json",))


def _script_steps(b: BuildContext, tree: LayeredTree, chain: Chain, phase: Phase,
                  beside: Beside) -> None:
    """Every script of ``phase`` a cached step of its own, run by one :class:`Runner` (so
    environment.d is sourced once, on the first miss); the phase's break points open in the
    first and the last script's step (break= disables the cache, so every step runs). A
    declared step may run beside the steps after it (:mod:`dib.beside`)."""
    scripts = b.tree_hooks.scripts(phase.name)
    runner: Optional[Runner] = None

    def run(mnt: Path, part: Tuple[Script, ...], first: bool, last: bool) -> None:
        nonlocal runner
        if runner is None:
            runner = b.runner(phase.name, mnt)
        runner.run(part, before=first, after=last)

    if not scripts and b.breaks.around(phase):
        _shell_step(b, tree, phase, lambda mnt: run(mnt, (), True, True))
    for i, script in enumerate(scripts):
        step_id = f"{phase.name}/{script.name}"

        def body(mnt: Path, script: Script = script, i: int = i) -> None:
            run(mnt, (script,), i == 0, i == len(scripts) - 1)

        inputs = chain.inputs(step_id, element=script.element,
                              script=file_sha256(script.path))
        chain.announce(step_id)
        beside.poll()
        decl = chain.declared.get(step_id)
        if decl is not None and decl.element != script.element:
            raise ConfigError(f"element {decl.element}: {content_keys.FILE_NAME} declares "
                              f"{step_id}, a script of element {script.element}",
                              hint="an element may declare only its own scripts")
        if decl is not None and beside.allowed(decl, phase.in_chroot):
            chain.prev = _beside_step(b, tree, chain, beside, decl, inputs, script,
                                      first=i == 0, last=i == len(scripts) - 1)
            continue
        if decl is not None and b.store.enabled:
            chain.prev = _content_step(b, tree, chain, decl, inputs, body,
                                       host=not phase.in_chroot, beside=beside)
        else:
            chain.prev = _step(b, tree, step_id, inputs, body, host=not phase.in_chroot,
                               beside=beside)
        if decl is not None:
            beside.note_room(decl, tree.layers[-1])
    if phase.name == "install.d" and b.cfg.packages:
        chain.announce("-p")
        chain.prev = _step(b, tree, "-p", chain.inputs("-p"), b.install_extra_packages,
                           beside=beside)


def _read(b: BuildContext, tree: LayeredTree, decl: content_keys.Declaration
          ) -> content_keys.Reading:
    """What ``decl`` reads in the tree so far. Hashing it (the kernel's modules: hundreds of
    MiB) is most of a no-op or an incremental build's time, so the reading is kept in the
    layer cache with the paths it resolved through and the layers that can change what the
    tree shows there (:func:`content_keys.shadows`), and reused while those are the same:
    a rebuilt layer that touches none of them (an edited script writing /etc/motd) does not
    make the initramfs's 400 MB be hashed again."""
    name = f"reading:{decl.step}:" + layers.step_key({"reads": list(decl.reads),
                                                      "writes": list(decl.writes)})
    with tree.view(b.wd.built) as root:
        trails = {p: content_keys.trail(root, p) for p in decl.reads + decl.writes}
        looked = sorted({rel for _, way in trails.values() for rel in way})
        results = sorted({trails[p][0] for p in decl.reads})
        stamp = b.store.stack_stamp(
            tree.layers, lambda layer: content_keys.shadows(layer, looked, results))
        if stamp is not None:
            stamp = [looked, *stamp]
        kept = b.store.note_for(name, stamp)
        if kept is not None:
            return content_keys.Reading(dict(kept["inputs"]), tuple(kept["allowed"]))
        reading = content_keys.read(root, decl)
    b.store.set_note_for(name, stamp, {"inputs": reading.inputs,
                                       "allowed": list(reading.allowed)})
    return reading


def _content_step(b: BuildContext, tree: LayeredTree, chain: Chain,
                  decl: content_keys.Declaration, inputs: Mapping[str, Any],
                  body: Callable[[Path], None], host: bool, beside: Beside) -> str:
    """A step of layer-inputs.yaml: keyed by what it reads (see :mod:`dib.content_keys`)."""
    reading = _read(b, tree, decl)
    own = {k: v for k, v in inputs.items() if k != "prev"}
    key = _step(b, tree, decl.step, {**own, **reading.inputs}, body, host=host,
                declared=(decl, reading, inputs), beside=beside)
    # later steps chain on the whole tree so far, not on this step's content key alone
    return layers.step_key({"prev": chain.prev, "step": decl.step, "layer": key})


def _beside_step(b: BuildContext, tree: LayeredTree, chain: Chain, beside: Beside,
                 decl: content_keys.Declaration, inputs: Mapping[str, Any], script: Script,
                 *, first: bool, last: bool) -> str:
    """A declared step in the chroot: its layer from the cache, or it starts in a branch
    beside the steps after it (:mod:`dib.beside`). Keyed as :func:`_content_step` keys it
    (by the chain's inputs without the layer cache)."""
    reading = _read(b, tree, decl)
    if not b.store.enabled:
        beside.start(decl.step, decl, reading, layers.step_key(inputs), inputs, inputs, (),
                     _runs(script, first, last))
        return layers.step_key(inputs)
    own = {k: v for k, v in inputs.items() if k != "prev"}
    content = {**own, **reading.inputs}
    key = layers.step_key(content)
    reused = _reuse(b, tree, decl.step, [(key, content), (layers.step_key(inputs), inputs)],
                    host=False, beside=beside)
    if reused is not None:
        beside.note_room(decl, tree.layers[-1])
        key = reused
    else:
        beside.start(decl.step, decl, reading, key, content, inputs,
                     _changed(b, decl.step, content, inputs), _runs(script, first, last))
    return layers.step_key({"prev": chain.prev, "step": decl.step, "layer": key})


def _runs(script: Script, first: bool, last: bool) -> Callable[[BuildContext, Path], None]:
    """A branch's body: ``script`` by a runner of its own (its own mount point, timings)."""
    def body(own: BuildContext, mnt: Path) -> None:
        own.runner(script.phase, mnt).run((script,), before=first, after=last)
    return body


def _shell_step(b: BuildContext, tree: LayeredTree, phase: Phase,
                body: Callable[[Path], None]) -> None:
    """A phase with no scripts but a break point: its shell(s) on the tree, in a layer
    of their own (break= disables the cache)."""
    with b.store.new_upper(f"break-{phase.short}") as upper:
        with tree.write_step(upper, b.store.work_dir(upper)) as mnt, b.chroot(mnt):
            body(mnt)
        tree.add_layer(upper)


def run_tree_steps(b: BuildContext, tree: LayeredTree, beside: Beside) -> str:
    """The phases of the ``tree`` stage, root.d through post-root.d; returns the key of the
    finished tree. A step still running beside (:mod:`dib.beside`) joins the tree here,
    unless the disk can be sized without it."""
    chain = Chain(b)
    for phase in of_stage("tree"):
        if phase.name == "root.d":
            _root_step(b, tree, chain)
        elif phase.name == "extra-data.d":
            _extra_data_step(b, tree, chain)
        else:
            assert phase.script_steps, phase.name
            _script_steps(b, tree, chain, phase, beside)
    chain.announce(chain.plan[-1][0])
    beside.poll()
    if not beside.waits_for_disk:
        beside.join()
    return layers.step_key({"tree": chain.prev, "shared": chain.shared})


def finalise_tree_only(b: BuildContext, tree: LayeredTree) -> None:
    """No disk output: the final phases run on the tree itself, uncached."""
    if b.tree_hooks.scripts("block-device.d"):
        log.info("no disk output requested: block-device.d skipped")
    with b.store.new_upper("final") as upper:
        with tree.write_step(upper, b.store.work_dir(upper)) as mnt:
            b.run_final(mnt)
            finish_tree(mnt)
        tree.add_layer(upper)


def final_scripts_digest(b: BuildContext) -> Dict[str, str]:
    """The scripts of the phases after the tree (part of a finished image's key)."""
    return {f"{s.phase}/{s.name}": file_sha256(s.path)
            for phase in of_stage("disk", "final")
            for s in b.tree_hooks.scripts(phase.name)}
