"""What a farm task carries: one image of a recipe, packed so that a worker with nothing but
dib installed can build it (docs/farm.md).

Pure: no Dask here (the submitter, :mod:`dib.farm`, and the worker, :mod:`dib.farmworker`,
both use it). A :class:`Task` holds

* the image's options as a normalised ``disk-image-create`` argv (made from the settings
  table, so every option is spelled one way), with the output paths made absolute against the
  submitter's working directory -- the worker writes where the recipe says, on a directory
  every worker mounts at the same path;
* the image's environment: its recipe ``environment`` and the submitter's settings variables
  (``DIB_*`` and the other variables of the settings table), less what belongs to the machine
  that builds (:data:`WORKER_OWNED`: its cache, its TMP_DIR, its credentials);
* the user's own elements as resolved (a tar of each winning element directory; dib's
  built-in elements are on the worker already), and the files that settings variables name
  (a Vagrantfile, a libvirt template; a ``file://`` block-device config is inlined);
* a key, the hash of all of that (:func:`task_key`): two submissions of the same image get
  the same key, and Dask runs a key once.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from dib import __version__
from dib.cache import cache_key
from dib.config import SETTINGS, BuildConfig
from dib.errors import ConfigError
from dib.layers import tree_digest

#: settings that never reach the worker's build: the farm's own, the recipe's, and what
#: belongs to the machine that builds (its cache, its work directories)
NOT_SHIPPED = ("recipe", "stop_on_failure", "farm", "dry_run", "cleanup", "elements",
               "image_cache", "tmp_dir", "elements_path", "cache_max_size", "cache_min_free")

#: variables the worker's own environment decides (never taken from the submitter)
WORKER_OWNED = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "PWD", "TERM", "LANG", "LC_ALL", "TMPDIR",
    "TMP_DIR", "ELEMENTS_PATH", "DIB_FARM", "DIB_FARM_LAYER_LOCKS", "DIB_IMAGE_CACHE",
    "DIB_CACHE_MAX_SIZE", "DIB_CACHE_MIN_FREE", "DIB_MIN_TMPFS", "DIB_NO_TMPFS", "DIB_LOCKFILES",
    "REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "DIB_REMOTE_CACHE_CREDENTIALS",
    "PYTHONPATH", "VIRTUAL_ENV",
    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"})

#: names of variables taken for secrets: never shipped from the submitter's environment
#: (the workers have their own credentials); a recipe's ``environment`` is shipped as written
SECRET_WORDS = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|API_KEY", re.I)

#: settings variables that name a file the build reads: shipped with the task
FILE_VARIABLES = ("DIB_VAGRANT_VAGRANTFILE", "DIB_LIBVIRT_TEMPLATE")

#: output settings whose relative paths are made absolute against the submitter's cwd
OUTPUT_PATHS = ("image_name", "logfile")


@dataclass(frozen=True)
class Task:
    """One image, packed for a worker."""

    key: str
    #: the image's name as the recipe gives it (for messages)
    label: str
    #: disk-image-create's arguments (no --farm, --recipe; output paths absolute)
    argv: Tuple[str, ...]
    #: variables set for the build on the worker (over the worker's own)
    env: Mapping[str, str]
    #: tar of the shipped elements, each at the top level under its name
    elements: bytes = b""
    element_names: Tuple[str, ...] = ()
    #: variable -> (file name, content) of the files settings variables name
    files: Mapping[str, Tuple[str, bytes]] = field(default_factory=dict)
    #: the submitter's working directory (the build runs there if the worker has it)
    cwd: str = "/"
    #: where the build report lands (``<image>.d/build-report.json``)
    report: str = ""


def shipped_env(image_env: Mapping[str, str], own: Mapping[str, str]) -> Dict[str, str]:
    """The variables a task carries: the image's own (``environment`` in the recipe) and,
    from the rest of ``image_env``, the settings variables and ``DIB_*``; never
    :data:`WORKER_OWNED`."""
    settings_vars = {name for s in SETTINGS for name in s.env}
    out = {}
    for name, value in image_env.items():
        if name in WORKER_OWNED or (name not in own and SECRET_WORDS.search(name)):
            continue
        if name in own or name.startswith("DIB_") or name in settings_vars:
            out[name] = value
    return out


def normalised_argv(values: Mapping[str, Any], elements: Sequence[str],
                    cwd: str) -> List[str]:
    """disk-image-create's argv for ``values`` (argparse's namespace as a mapping: the given
    value of every setting, None / False / [] / 0 when not given), each option spelled once,
    in the settings table's order; relative output paths made absolute against ``cwd``."""
    argv: List[str] = []
    for s in SETTINGS:
        if not s.flags or s.name in NOT_SHIPPED:
            continue
        given = values.get(s.name)
        if given in (None, False, [], 0, ""):
            continue
        flag = s.flags[0]
        if s.kind == "count":
            argv += [flag] * int(given)
        elif given is True:
            argv.append(flag)
        else:
            text = ",".join(given) if isinstance(given, list) else str(given)
            if s.name in OUTPUT_PATHS:
                text = absolute(text, cwd)
            argv += [flag, text]
    return argv + list(elements)


def absolute(path: str, cwd: str) -> str:
    """``path`` as seen from ``cwd`` (``~`` is the submitter's home: expanded here)."""
    return os.path.normpath(os.path.join(cwd, os.path.expanduser(path)))


def pack_elements(elements: Sequence[Tuple[str, Path]]) -> bytes:
    """A gzipped tar of each element directory under its name (``__pycache__`` left out)."""
    buf = io.BytesIO()

    def skip(info: tarfile.TarInfo) -> Optional[tarfile.TarInfo]:
        return None if "__pycache__" in info.name.split("/") else info

    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, path in elements:
            tar.add(path, arcname=name, filter=skip)
    return buf.getvalue()


def unpack_elements(data: bytes, dest: Path) -> None:
    """Unpack :func:`pack_elements` into ``dest`` (nothing may land outside it)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            target = os.path.normpath(os.path.join(dest, member.name))
            if not (target + "/").startswith(os.fspath(dest).rstrip("/") + "/") \
                    or member.isdev():
                raise ConfigError(f"farm task: element archive member {member.name!r} "
                                  "would land outside the elements directory")
        tar.extractall(dest)


def user_elements(order: Sequence[str], paths: Mapping[str, Path],
                  builtin: Path) -> List[Tuple[str, Path]]:
    """The resolved elements that are not dib's built-in ones (the worker has those)."""
    base = os.path.realpath(builtin).rstrip("/") + "/"
    return [(name, paths[name]) for name in order
            if not (os.path.realpath(paths[name]) + "/").startswith(base)]


def file_inputs(env: Dict[str, str], cwd: str) -> Dict[str, Tuple[str, bytes]]:
    """Read the files that settings variables in ``env`` name, and inline a ``file://``
    DIB_BLOCK_DEVICE_CONFIG (``env`` is changed in place)."""
    files: Dict[str, Tuple[str, bytes]] = {}
    for name in FILE_VARIABLES:
        if env.get(name, "").strip():
            path = Path(absolute(env[name].strip(), cwd))
            try:
                files[name] = (path.name, path.read_bytes())
            except OSError as exc:
                raise ConfigError(f"{name}={env[name]}: cannot read it to send it to the "
                                  f"farm ({exc.strerror})") from None
    bdc = env.get("DIB_BLOCK_DEVICE_CONFIG", "")
    if bdc.startswith("file://"):
        path = Path(absolute(bdc[len("file://"):], cwd))
        try:
            env["DIB_BLOCK_DEVICE_CONFIG"] = path.read_text()
        except OSError as exc:
            raise ConfigError(f"DIB_BLOCK_DEVICE_CONFIG={bdc}: cannot read it to send it to "
                              f"the farm ({exc.strerror})") from None
    return files


def task_key(argv: Sequence[str], env: Mapping[str, str],
             elements: Mapping[str, str], files: Mapping[str, Tuple[str, bytes]],
             cwd: str) -> str:
    """The Dask key of an image: a hash of everything that makes it (dib's version, the
    options, the environment, the content of every resolved element and shipped file)."""
    inputs = {"dib": __version__, "argv": list(argv), "env": dict(sorted(env.items())),
              "elements": dict(sorted(elements.items())), "cwd": cwd,
              "files": {k: [n, hashlib.sha256(d).hexdigest()]
                        for k, (n, d) in sorted(files.items())}}
    return "dib-image-" + cache_key("farm-task", inputs)[:32]


def element_digests(elements: Sequence[Tuple[str, Path]]) -> Dict[str, str]:
    return {name: tree_digest(path) for name, path in elements}


def make_task(label: str, cfg: BuildConfig, values: Mapping[str, Any],
              image_env: Mapping[str, str], own_env: Mapping[str, str],
              resolved: Sequence[Tuple[str, Path]], builtin: Path, cwd: str) -> Task:
    """Pack one checked image of a recipe: ``values`` are its parsed options (argparse's
    namespace as a mapping), ``image_env`` its environment (the caller's and the recipe's),
    ``own_env`` the recipe's ``environment`` alone, ``resolved`` its elements in order with
    their directories."""
    # the output as the submitter's checks made it absolute (against its cwd), whether it
    # came from -o, the recipe's imagename or IMAGE_NAME
    argv = normalised_argv({**values, "image_name": cfg.image_name}, cfg.elements, cwd)
    env = shipped_env(image_env, own_env)
    env.pop("IMAGE_NAME", None)
    files = file_inputs(env, cwd)
    shipped = user_elements([n for n, _ in resolved], dict(resolved), builtin)
    key = task_key(argv, env, element_digests(resolved), files, cwd)
    return Task(key=key, label=label, argv=tuple(argv), env=env,
                elements=pack_elements(shipped) if shipped else b"",
                element_names=tuple(n for n, _ in shipped), files=files, cwd=cwd,
                report=os.fspath(cfg.report_dir / "build-report.json"))
