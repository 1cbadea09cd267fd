"""Write small throw-away elements for build tests.

::

    make_element(tmp_path / "elements", "t-fail",
                 hooks={"install.d": {"50-t-fail": "echo boom\\nexit 7\\n"}},
                 env={"10-t-fail": "export T_FAIL=1\\n"})

Hook bodies get the ``#!/bin/bash`` / ``set -eu -o pipefail`` header every element hook
carries and are made executable; environment.d files are written as given, not executable
(dib sources them, so they need not be).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Optional

HEADER = "#!/bin/bash\nset -eu -o pipefail\n"


def hook(body: str) -> str:
    """A hook script: the standard header, then ``body``."""
    return HEADER + body if body.endswith("\n") else HEADER + body + "\n"


def make_element(parent: Path, name: str, *,
                 hooks: Mapping[str, Mapping[str, str]] = {},
                 env: Mapping[str, str] = {},
                 deps: Iterable[str] = (), provides: Iterable[str] = (),
                 files: Mapping[str, str] = {},
                 readme: Optional[str] = None) -> Path:
    """Create element ``name`` in ``parent``; returns its directory.

    ``hooks`` maps a phase directory (``install.d``) to {script name: body}; ``env`` maps an
    environment.d file name to its text; ``files`` maps other paths (relative to the element)
    to their text.
    """
    path = parent / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "README.rst").write_text(readme or f"{'=' * len(name)}\n{name}\n{'=' * len(name)}\n"
                                     "A throw-away element written by a test.\n")
    if deps:
        (path / "element-deps").write_text("".join(f"{d}\n" for d in deps))
    if provides:
        (path / "element-provides").write_text("".join(f"{p}\n" for p in provides))
    for phase, scripts in hooks.items():
        (path / phase).mkdir(exist_ok=True)
        for script, body in scripts.items():
            target = path / phase / script
            target.write_text(hook(body))
            target.chmod(0o755)
    if env:
        (path / "environment.d").mkdir(exist_ok=True)
        for fname, text in env.items():
            (path / "environment.d" / fname).write_text(text)
            (path / "environment.d" / fname).chmod(0o644)
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    return path
