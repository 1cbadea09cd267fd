"""The source-repositories element's extra-data.d script, run on the host against a temporary
tree: a repository is fetched only for the ``source`` install type, as in diskimage-builder
(pip-and-virtualenv's get-pip.py must not be fetched with
``DIB_INSTALLTYPE_pip_and_virtualenv=package``)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "elements" / "source-repositories" / "extra-data.d" / "98-source-repositories"


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    payload = tmp_path / "payload.txt"
    payload.write_text("fetched\n")
    element = tmp_path / "elements" / "t-src"
    element.mkdir(parents=True)
    (element / "source-repository-t-src").write_text(
        f"t-src file /opt/t-src.txt file://{payload}\n")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "dib-elements.json").write_text(json.dumps([{"name": "t-src",
                                                          "path": str(element)}]))
    (tmp_path / "mnt").mkdir()
    full = {"PATH": f"{REPO / 'elements' / 'cache-url' / 'bin'}:/usr/bin:/bin",
            "DIB_IMAGE_CACHE": str(tmp_path / "cache"), "TMP_HOOKS_PATH": str(hooks),
            "TMP_MOUNT_PATH": str(tmp_path / "mnt"), "DIB_PYTHON_EXEC": sys.executable,
            "DIB_ENGINE_PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT)], env=full, capture_output=True, text=True)


@pytest.mark.parametrize("env", [{}, {"DIB_INSTALLTYPE_t_src": "source"},
                                 {"DIB_DEFAULT_INSTALLTYPE": "package",
                                  "DIB_INSTALLTYPE_t_src": "source"}])
def test_source_install_type_fetches(tmp_path, env):
    r = _run(tmp_path, **env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "mnt" / "opt" / "t-src.txt").read_text() == "fetched\n"


@pytest.mark.parametrize("env", [{"DIB_INSTALLTYPE_t_src": "package"},
                                 {"DIB_DEFAULT_INSTALLTYPE": "package"}])
def test_other_install_types_skip_the_repository(tmp_path, env):
    r = _run(tmp_path, **env)
    assert r.returncode == 0, r.stderr
    assert "install type is not source" in r.stdout
    assert not (tmp_path / "mnt" / "opt" / "t-src.txt").exists()
