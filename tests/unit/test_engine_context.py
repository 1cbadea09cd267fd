"""What every hook sees (context.hook_environment), built without root: the diskimage-builder
interpreter probe goes through the fake command runner."""
from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest
import yaml

from dib import cmd, resolver
from dib.config import parse_args
from dib.context import DROPPED_ENV, hook_environment
from dib.element import Catalogue
from dib.workdir import Workdir


class ProbeRunner:
    """Answers dibcompat's ``python -c PROBE`` with ``lib`` (None: cannot import it)."""

    def __init__(self, lib: Optional[Path]) -> None:
        self.lib = lib
        self.calls: List[List[str]] = []

    def __call__(self, argv: List[str], **kwargs: Any) -> cmd.Result:
        self.calls.append(list(argv))
        if self.lib is None:
            return cmd.Result(tuple(argv), 1, "", "ModuleNotFoundError: diskimage_builder")
        return cmd.Result(tuple(argv), 0, f"{self.lib}\n", "")


@pytest.fixture
def environment(tmp_path: Path, catalogue: Callable[..., Catalogue]) -> Callable[..., Any]:
    cat = catalogue({"os": {"provides": ["operating-system"]}, "app": {"deps": ["lib"]},
                     "lib": {}})
    res = resolver.resolve(["os", "app"], cat)
    count = itertools.count()

    def make(env: Optional[Dict[str, str]] = None, *args: str,
             lib: Optional[Path] = None) -> Dict[str, str]:
        cfg = parse_args(["-o", str(tmp_path / "img"), *args, "os", "app"], env or {})
        wd = make.wd = Workdir(tmp_path / f"wd{next(count)}")  # type: ignore[attr-defined]
        wd.hooks.mkdir(parents=True, exist_ok=True)
        with cmd.use_runner(ProbeRunner(lib)):
            return hook_environment(cfg, res, wd, cat)
    make.res = res  # type: ignore[attr-defined]
    return make


def test_the_elements_are_given_as_data(environment: Callable[..., Any]) -> None:
    env = environment()
    res = environment.res
    assert env["IMAGE_ELEMENT"].split() == list(res.order)
    assert yaml.safe_load(env["IMAGE_ELEMENT_YAML"]) == \
        {n: os.fspath(res.elements[n].path) for n in res.order}
    # ELEMENTS_PATH: one entry per element, the copy that won
    links = Path(env["ELEMENTS_PATH"])
    assert sorted(p.name for p in links.iterdir()) == sorted(res.order)
    assert all((links / n).resolve() == res.elements[n].path.resolve() for n in res.order)


def test_the_work_directories_are_the_builds_own(environment: Callable[..., Any]) -> None:
    env = environment()
    wd = environment.wd
    assert env["TMP_HOOKS_PATH"] == os.fspath(wd.hooks)
    assert env["TMP_MOUNT_PATH"] == os.fspath(wd.mnt)
    assert env["TMP_BUILD_DIR"] == os.fspath(wd.base)
    path = env["PATH"].split(":")
    assert f"{wd.hooks}/bin" in path and (Path(path[0]) / "sudo").exists()


def test_the_callers_environment_is_filtered(environment: Callable[..., Any]) -> None:
    env = environment({"DIB_RELEASE": "bookworm", "PYTHONPATH": "/mine", "LD_PRELOAD": "x.so",
                       "BASH_FUNC_evil%%": "() { :; }", "MY_VAR": "kept"})
    assert env["DIB_RELEASE"] == "bookworm" and env["MY_VAR"] == "kept"
    assert not (DROPPED_ENV - {"PATH"}) & set(env)
    assert "BASH_FUNC_evil%%" not in env


def test_dib_env_re_exports_the_dib_variables_for_bash(environment: Callable[..., Any]) -> None:
    tricky = "two words, a 'quote' and a $dollar"
    env = environment({"DIB_TRICKY": tricky, "OTHER": "not exported"})
    out = subprocess.run(["bash", "-c", 'eval "$DIB_ENV"; printf %s "$DIB_TRICKY|${OTHER-}"'],
                         env={"DIB_ENV": env["DIB_ENV"], "PATH": cmd.SAFE_PATH},
                         capture_output=True, text=True, check=True).stdout
    assert out == f"{tricky}|"


@pytest.mark.parametrize("fs, label", [("ext4", "cloudimg-rootfs"), ("xfs", "img-rootfs")])
def test_the_root_label_follows_the_filesystem(environment: Callable[..., Any], fs: str,
                                               label: str) -> None:
    env = environment({"FS_TYPE": fs})
    assert env["DIB_ROOT_LABEL"] == label and env["FS_TYPE"] == fs
    assert environment({"FS_TYPE": fs}, "--root-label", "mine")["DIB_ROOT_LABEL"] == "mine"


def test_diskimage_builders_python_is_found_by_probing(environment: Callable[..., Any],
                                                       tmp_path: Path) -> None:
    lib = tmp_path / "site-packages" / "diskimage_builder" / "lib"
    lib.mkdir(parents=True)
    found = environment(lib=lib)
    assert found["_LIB"] == os.fspath(lib)
    assert "_LIB" not in environment(lib=None)
    assert found["DIB_ENGINE_PYTHON"] == found["DIB_PYTHON_EXEC"]
