"""Recipes: one YAML file describing one or more images, built in one run.

    disk-image-create --recipe images.yaml [--stop-on-failure] [common options]

The format is diskimage-builder's YAML front end (``diskimage-builder FILE``): a list of image
definitions, each a mapping whose keys are the long options of disk-image-create::

    - imagename: out/web
      elements: [vm, debian]
      types: [qcow2, vagrant]
      environment:
        DIB_RELEASE: bookworm
      image-size: 4
    - imagename: out/base-container
      elements: [debian-minimal]
      types: [docker, oci]
      docker-target: example/base:12

Definitions with the same ``imagename`` are merged (lists append, mappings update, scalars
replace); a definition without ``imagename`` continues the previous one (the first defaults to
``image``). Everything is checked before anything is built -- the schema (a message names the
file, the image and the key), then each image's options, elements and output settings, exactly
as ``disk-image-create`` would check them -- so a typo in the last image fails in a second.

Each image is then built with :func:`dib.build.build_image` and its own BuildConfig, one after
the other, all with the same image cache: layers one image built are reused by the next.
Options given on the command line next to ``--recipe`` apply to every image (a recipe key
given for an image comes after them, so a scalar key wins and ``types``/``packages`` add).
"""
from __future__ import annotations

import collections
import difflib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from dib.errors import ConfigError, DibError

if TYPE_CHECKING:
    from dib.config import BuildConfig

log = logging.getLogger("dib.recipe")


@dataclass(frozen=True)
class Key:
    """One key of an image definition: its kind and the option it becomes."""

    name: str
    kind: str  # str, flag, int, number, list, positional, env, repeat, options, enum
    arg: Optional[str] = None
    choices: Tuple[str, ...] = ()
    help: str = ""

    @property
    def option(self) -> str:
        return self.arg or f"--{self.name}"


#: how each kind of setting (dib.config.KINDS) is written in a recipe
RECIPE_KINDS = {"text": "str", "flag": "flag", "count": "repeat", "list": "list",
                "positional": "positional", "choice": "enum", "int": "int", "number": "number",
                "options": "options"}


def _keys() -> Dict[str, Key]:
    """The recipe keys: every setting of dib.config.SETTINGS with a recipe key, plus the
    recipe's own (environment) and diskimage-builder's that dib refuses (ramdisk)."""
    from dib.config import SETTINGS

    keys = [Key(s.recipe, RECIPE_KINDS[s.kind], s.flags[0] if s.flags else None, s.choices,
                s.help) for s in SETTINGS if s.recipe]
    keys += [Key("environment", "env", help="environment variables (strings) for this image"),
             Key("ramdisk", "unsupported"), Key("ramdisk-element", "unsupported")]
    return {k.name: k for k in keys}


KEYS: Dict[str, Key] = _keys()

TYPE_WORDS = {"str": "a string", "int": "a whole number", "number": "a number",
              "flag": "true or false", "list": "a list of strings",
              "positional": "a list of strings", "env": "a mapping of names to strings",
              "repeat": "0, 1 or 2", "options": "a mapping (or a k=v,... string)",
              "enum": "one of"}


@dataclass
class Image:
    """One merged image definition, where it came from, and what it becomes."""

    name: str
    index: int  # 1-based position of its first definition
    source: str
    entry: Dict[str, Any]
    argv: List[str] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"image {self.index} ('{self.name}')"


@dataclass
class Outcome:
    outputs: List[Path] = field(default_factory=list)
    built: List[str] = field(default_factory=list)
    failed: List[Tuple[str, DibError]] = field(default_factory=list)
    error: Optional[DibError] = None


# -- loading and the schema ---------------------------------------------------------------------

def load(path: Path) -> List[Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"recipe {path}: cannot read it: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"recipe {path}: not valid YAML{at}: {problem}") from None
    if doc is None:
        raise ConfigError(f"recipe {path}: the file is empty",
                          hint="a recipe is a list of image definitions")
    if isinstance(doc, dict):
        raise ConfigError(f"recipe {path}: the top level is a mapping, not a list",
                          hint="a recipe is a list of image definitions: start each with '- '")
    if not isinstance(doc, list):
        raise ConfigError(f"recipe {path}: the top level must be a list of image definitions, "
                          f"not {type(doc).__name__}")
    return doc


def _kind_error(key: Key, value: Any) -> Optional[str]:
    """Why ``value`` does not fit ``key`` (None if it does)."""
    def is_str_list(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    k = key.kind
    if k == "str":
        ok = isinstance(value, str) and value != ""
    elif k == "flag":
        ok = isinstance(value, bool)
    elif k == "int":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    elif k == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    elif k in ("list", "positional"):
        ok = is_str_list(value) or (k == "list" and isinstance(value, str) and value != "")
    elif k == "repeat":
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2
    elif k == "options":
        ok = isinstance(value, str) or (isinstance(value, dict) and all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool)
            for v in value.values()))
    elif k == "enum":
        if isinstance(value, str) and value in key.choices:
            return None
        return f"must be one of {', '.join(key.choices)}, not {value!r}"
    elif k == "env":
        if not isinstance(value, dict):
            return f"must be {TYPE_WORDS['env']}, not {type(value).__name__}"
        for name, v in value.items():
            if not isinstance(name, str) or not name or "=" in name:
                return f"has an invalid variable name {name!r}"
            if isinstance(v, bool) or v is None or not isinstance(v, (str, int, float)):
                shown = "null" if v is None else repr(v)
                return (f"{name}: the value must be a string, not {shown} "
                        f"(quote it in the YAML: {name}: \"...\")")
        return None
    elif k == "unsupported":
        return "ramdisk images are not supported by dib"
    else:  # pragma: no cover
        return f"unknown key kind {k}"
    if ok:
        return None
    if k == "int" and isinstance(value, int) and not isinstance(value, bool):
        return f"must be a positive whole number, not {value}"
    shown = "null" if value is None else repr(value)
    return f"must be {TYPE_WORDS[k]}, not {shown}"


def validate(doc: Sequence[Any], source: str) -> List[Image]:
    """Check every definition; merge by ``imagename``. Raises one ConfigError listing every
    problem, each naming the file, the image and the key."""
    problems: List[str] = []
    merged: "collections.OrderedDict[str, Image]" = collections.OrderedDict()
    previous = "image"
    for i, entry in enumerate(doc, 1):
        if not isinstance(entry, dict):
            problems.append(f"image {i}: a definition must be a mapping of keys, not "
                            f"{type(entry).__name__} ({entry!r})")
            continue
        name = entry.get("imagename", previous)
        label = f"image {i} ('{name}')" if isinstance(name, str) else f"image {i}"
        for key, value in entry.items():
            spec = KEYS.get(key) if isinstance(key, str) else None
            if spec is None:
                close = difflib.get_close_matches(str(key), list(KEYS) + list(ALIASES), n=1)
                hint = ""
                if str(key) in ALIASES:
                    hint = f" (did you mean '{ALIASES[str(key)]}'?)"
                elif close:
                    hint = f" (did you mean '{ALIASES.get(close[0], close[0])}'?)"
                problems.append(f"{label}: unknown key '{key}'{hint}")
                continue
            why = _kind_error(spec, value)
            if why:
                problems.append(f"{label}: '{key}' {why}")
        if not isinstance(name, str) or not name:
            continue
        previous = name
        if name in merged:
            _merge(merged[name].entry, entry)
        else:
            merged[name] = Image(name, i, source, dict(entry))
    for img in merged.values():
        if not problems and not img.entry.get("elements"):
            problems.append(f"{img.label}: 'elements' is missing or empty")
    if not doc:
        problems.append("no image definitions")
    if problems:
        raise ConfigError(f"recipe {source}: " + ("\n  ".join([""] + problems)
                                                   if len(problems) > 1 else problems[0]),
                          hint="keys: " + ", ".join(sorted(k for k, v in KEYS.items()
                                                           if v.kind != "unsupported")))
    return list(merged.values())


#: common names for keys that mean something else in a recipe
ALIASES = {"name": "imagename", "image": "imagename", "output": "imagename",
           "formats": "types", "format": "types", "type": "types", "size": "image-size",
           "env": "environment", "element": "elements", "package": "packages"}


def _merge(into: Dict[str, Any], entry: Mapping[str, Any]) -> None:
    for k, v in entry.items():
        if isinstance(v, list):
            into.setdefault(k, [])
            if isinstance(into[k], list):
                into[k] = into[k] + v
            else:
                into[k] = v
        elif isinstance(v, dict):
            into[k] = {**(into.get(k) or {}), **v}
        else:
            into[k] = v


def image_argv(entry: Mapping[str, Any]) -> List[str]:
    """The disk-image-create arguments of one (valid, merged) definition."""
    argv: List[str] = []
    for name, value in entry.items():
        key = KEYS[name]
        if key.kind in ("env", "positional"):
            continue
        if key.name == "clear":
            continue  # handled by the environment: see image_env
        if key.kind == "flag":
            argv += [key.option] if value else []
        elif key.kind == "repeat":
            argv += [key.option] * value
        elif key.kind == "list":
            items = [value] if isinstance(value, str) else value
            if items:
                argv += [key.option, ",".join(items)]
        elif key.kind == "options":
            text = value if isinstance(value, str) else ",".join(
                f"{k}={v}" for k, v in value.items())
            if text:
                argv += [key.option, text]
        else:
            argv += [key.option, str(value)]
    return argv + list(entry.get("elements") or [])


def image_env(entry: Mapping[str, Any], environ: Mapping[str, str]) -> Dict[str, str]:
    """The caller's environment plus the image's; with ``clear``, the image's alone."""
    own = {k: str(v) for k, v in (entry.get("environment") or {}).items()}
    return own if entry.get("clear") else {**environ, **own}


# -- the command line -----------------------------------------------------------------------------

def split_argv(argv: Sequence[str]) -> Tuple[List[str], bool, List[str]]:
    """(recipe files, --stop-on-failure, the other options) from disk-image-create's argv."""
    files: List[str] = []
    stop = False
    rest: List[str] = []
    it = iter(range(len(argv)))
    for i in it:
        a = argv[i]
        if a == "--recipe":
            if i + 1 >= len(argv):
                raise ConfigError("--recipe needs a FILE")
            files.append(argv[i + 1])
            next(it, None)
        elif a.startswith("--recipe="):
            files.append(a.split("=", 1)[1])
        elif a == "--stop-on-failure":
            stop = True
        else:
            rest.append(a)
    return files, stop, rest


def plan(argv: Sequence[str], environ: Mapping[str, str]) -> Tuple[List[Image], bool]:
    """Load, validate and check every image of the recipe(s) named in ``argv`` (nothing is
    built): returns the images with their argv and environment, and --stop-on-failure."""
    from dib import config

    files, stop, common = split_argv(argv)
    if not files:
        raise ConfigError("--recipe needs a FILE")
    parsed = config._parser().parse_args(common)
    if parsed.elements:
        raise ConfigError(f"with --recipe, the elements come from the recipe, not the command "
                          f"line (got: {' '.join(parsed.elements)})")
    if parsed.cleanup:
        raise ConfigError("--cleanup cannot be combined with --recipe")
    images: List[Image] = []
    for f in files:
        doc = load(Path(f))
        for img in validate(doc, f):
            img.argv = common + image_argv(img.entry)
            img.env = image_env(img.entry, environ)
            images.append(img)
    seen: Dict[str, Image] = {}
    for img in images:
        out = os.path.abspath(img.name)
        if out in seen:
            raise ConfigError(f"recipe {img.source}: {img.label} has the same imagename as "
                              f"{seen[out].label} in {seen[out].source}",
                              hint="give every image its own imagename")
        seen[out] = img
    return images, stop


def _check(img: Image) -> "BuildConfig":
    """Everything disk-image-create checks before it starts, for one image."""
    from dib import config, element, outputs, resolver

    try:
        cfg = config.parse_args(img.argv, img.env)
        config.preflight(cfg)
        catalogue = element.discover(element.search_path(cfg.elements_path))
        names = resolver.implicit_elements(cfg.elements, skip_base=cfg.skip_base,
                                           arch=cfg.arch)
        resolver.resolve(names, catalogue)
        outputs.check(cfg)
    except DibError as exc:
        setting, source = getattr(exc, "setting", None), getattr(exc, "source", None)
        if setting is not None and setting.recipe and isinstance(source, str) \
                and source in setting.flags \
                and exc.message.startswith(f"{source}: "):
            # given as a recipe key: name the key (the flag it became is in the hint)
            exc.message = f"'{setting.recipe}'{exc.message[len(source):]}"
        exc.message = f"recipe {img.source}: {img.label}: {exc.message}"
        raise
    return cfg


#: the checks of one image, for the farm's submitter (dib.farm)
check_image = _check


def farm_address(argv: Sequence[str], environ: Mapping[str, str]) -> Optional[str]:
    """The --farm / DIB_FARM scheduler address of a recipe run (None: build here)."""
    from dib import config

    _, _, common = split_argv(argv)
    parsed = config._parser().parse_args(common)
    value: Optional[str] = config.setting_value(config.BY_NAME["farm"], parsed.farm, environ)
    return value


def check_all(argv: Sequence[str], environ: Mapping[str, str]) -> List[Tuple[Image, Any]]:
    """Every image of the recipe(s) with its checked BuildConfig (nothing is built)."""
    images, _ = plan(argv, environ)
    return [(img, _check(img)) for img in images]


def run(argv: Sequence[str], environ: Mapping[str, str]) -> Outcome:
    """Build every image of the recipe(s); see the module docstring."""
    from dib import build
    from dib import log as dlog

    images, stop = plan(argv, environ)
    cfgs = [_check(img) for img in images]
    dlog.setup(verbose=max(c.trace for c in cfgs), quiet=all(c.quiet for c in cfgs),
               progress=all(c.progress and not c.break_points for c in cfgs))
    outcome = Outcome()
    for n, (img, cfg) in enumerate(zip(images, cfgs), 1):
        log.info("recipe: building %s (%d of %d): %s", img.name, n, len(images),
                 " ".join(cfg.elements))
        try:
            result = build.build_image(cfg)
        except DibError as exc:
            log.error("recipe: %s failed: %s", img.label, exc.message)
            outcome.failed.append((img.name, exc))
            if stop:
                break
            continue
        outcome.outputs.extend(result.outputs)
        outcome.built.append(img.name)
    summarize(outcome, len(images))
    return outcome


def summarize(outcome: Outcome, total: int) -> None:
    """Set ``outcome.error`` (one image failed: its error; several: a list) or log that
    every image was built."""
    if outcome.failed:
        name, first = outcome.failed[0]
        if total == 1:
            outcome.error = first
        else:
            lines = "\n".join(f"  {n}: {e.message.splitlines()[0]}" for n, e in outcome.failed)
            skipped = total - len(outcome.built) - len(outcome.failed)
            tail = f"; {skipped} not started (--stop-on-failure)" if skipped else ""
            outcome.error = DibError(
                f"recipe: {len(outcome.failed)} of {total} images failed{tail}:\n{lines}",
                hint=first.hint or "each image's log is <imagename>.d/build.log")
            outcome.error.exit_code = first.exit_code
    else:
        log.info("recipe: built %d image%s: %s", total, "" if total == 1 else "s",
                 ", ".join(outcome.built))
