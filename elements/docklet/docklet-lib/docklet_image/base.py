"""What every part of the element shares: where its files live in the image, the records
the hooks tree carries next to the staged source, the error the user sees, and logging."""
from __future__ import annotations

import sys
from typing import Optional

#: the runtime location of this package inside the image
LIB_DIR = "/usr/local/lib/docklet"
#: the package's import name: the launchers put LIB_DIR on sys.path and import it
PACKAGE = "docklet_image"
ENV_FILE = "/etc/docklet/docklet.env"
EXTRA_CONF_FILE = "/etc/docklet/extra.conf"
AUTH_KEY_FILE = "/etc/docklet/auth_key"
SOURCE_INFO_FILE = "/etc/docklet/source-info"
PATCHES_FILE = "/etc/docklet/patches"
UNIT_DIR = "/etc/systemd/system"

#: files the hooks tree carries next to the staged source
SOURCE_META = ".docklet-source.json"
PATCH_META = ".docklet-patches.json"

#: marks the element's edits in Docklet's files and in the basefs
MARK = "dib-docklet"


class DockletError(Exception):
    """A problem the user can fix; ``hint`` says how."""

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.hint = hint


def log(msg: str) -> None:
    print(f"docklet: {msg}", file=sys.stderr, flush=True)


def tail(text: str, n: int = 6) -> str:
    """The last ``n`` non-empty lines of a command's output, indented for an error message."""
    lines = [x for x in (text or "").strip().splitlines() if x.strip()]
    return "\n    ".join(lines[-n:]) or "(no output)"
