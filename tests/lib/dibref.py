"""Where the diskimage-builder reference installation lives (a venv with it from PyPI).

``bin/dib-host-setup --test`` creates it at ``<checkout>/.venv-dib``; ``DIB_REFERENCE_VENV``
points elsewhere. The parity tests run diskimage-builder's own resolver from it, and the
element-library tests take diskimage-builder's elements (and its Python package, for the
hooks' ``DIB_PYTHON_EXEC``) from it.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: the diskimage-builder release the reference venv pins
VERSION = "3.43.0"
VENV = Path(os.environ.get("DIB_REFERENCE_VENV") or REPO / ".venv-dib")
PYTHON = VENV / "bin" / "python"
#: what to run when the reference is missing
SETUP_HINT = (f"run `python3 bin/dib-host-setup --test` (or set DIB_REFERENCE_VENV to a venv "
              f"with diskimage-builder=={VERSION})")


def fake_package(site: Path) -> Path:
    """A stand-in diskimage_builder package below ``site`` (its ``lib/`` and the
    ``paths.get_path`` that dib's probe asks); returns the package directory."""
    pkg = site / "diskimage_builder"
    (pkg / "lib").mkdir(parents=True)
    (pkg / "lib" / "disk-image-create").write_text("#!/bin/bash\n")
    (pkg / "__init__.py").write_text("")
    (pkg / "paths.py").write_text(
        "import os\n"
        "def get_path(var):\n"
        "    return os.path.abspath(os.path.join(os.path.dirname(__file__), var))\n")
    return pkg
