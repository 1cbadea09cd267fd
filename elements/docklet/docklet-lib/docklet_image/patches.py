"""Build host: the element's fixes to Docklet's own files, applied to the staged copy of the
source (idempotent: the patched text is recognised and left alone)."""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

from .base import MARK, DockletError, log
from .source import BIN_SCRIPTS


@dataclass(frozen=True)
class Patch:
    name: str
    files: Tuple[str, ...]
    description: str
    #: the upstream text; group "keep" (if any) is kept in the replacement
    pattern: str
    replacement: str
    #: the text after patching (idempotency)
    applied: str


PATCHES: Tuple[Patch, ...] = (
    Patch(
        "lxc3-config-fallback", ("bin/docklet-worker",),
        "update_container_conf: an LXC major version other than 2 or 3 (LXC 4, 5, ...) "
        "selects the lxc3 container config, not the lxc2 syntax LXC >= 4 rejects",
        pattern=r'(\[\s*"\$LXC_VERSION"x\s*!=\s*"2"x\s*\]\s*&&\s*\[\s*"\$LXC_VERSION"x\s*!=\s*'
                r'"3"x\s*\]\s*;\s*then[ \t]*\n[ \t]*LXC_VERSION=)2\b',
        replacement=r"\g<1>3  # " + MARK + ": LXC >= 4 reads the lxc3 syntax",
        applied=r'\[\s*"\$LXC_VERSION"x\s*!=\s*"2"x\s*\]\s*&&\s*\[\s*"\$LXC_VERSION"x\s*!=\s*'
                r'"3"x\s*\]\s*;\s*then[ \t]*\n[ \t]*LXC_VERSION=3\b'),
    Patch(
        "proxy-default-target", BIN_SCRIPTS,
        "configurable-http-proxy's --default-target: 127.0.0.1 and WEB_PORT instead of "
        "localhost:8888 (Node >= 17 resolves localhost to ::1, where web does not listen)",
        pattern=r"--default-target=http://localhost:8888\b",
        replacement="--default-target=http://127.0.0.1:${WEB_PORT:-8888}",
        applied=r"--default-target=http://127\.0\.0\.1:"),
    Patch(
        "wait-for-user-server", ("bin/docklet-supermaster",),
        "start the master only once the user server answers: the master's release manager "
        "thread asks the user server at once and dies for good if it is still starting "
        "(a race any slow machine loses)",
        pattern=r'(?m)^([ \t]*)do_start_master "(new|recovery)"[ \t]*$',
        replacement=r'\1for _i in $(seq 1 300); do curl -s -o /dev/null '
                    r'http://127.0.0.1:${USER_PORT:-9100}/ && break; sleep 1; done  '
                    r'# ' + MARK + r': wait for the user server' + "\n" +
                    r'\1do_start_master "\2"',
        applied=MARK + r": wait for the user server"),
)


@dataclass(frozen=True)
class PatchResult:
    patch: str
    file: str
    status: str  # applied | already-applied | missing | no-file

    def line(self) -> str:
        return f"{self.patch} {self.file} {self.status}"


def apply_patches(tree: Path, *, strict: bool = True,
                  patches: Sequence[Patch] = PATCHES) -> List[PatchResult]:
    """Apply every patch to ``tree``: replace where the upstream pattern is found, accept the
    patched form, and otherwise fail (``strict``) or warn."""
    results: List[PatchResult] = []
    for patch in patches:
        for rel in patch.files:
            path = tree / rel
            if not path.is_file():
                results.append(PatchResult(patch.name, rel, "no-file"))
                continue
            text = path.read_text()
            if re.search(patch.applied, text):
                results.append(PatchResult(patch.name, rel, "already-applied"))
                continue
            new, count = re.subn(patch.pattern, patch.replacement, text)
            if count:
                mode = stat.S_IMODE(path.stat().st_mode)
                path.write_text(new)
                os.chmod(path, mode)
                results.append(PatchResult(patch.name, rel, "applied"))
            else:
                results.append(PatchResult(patch.name, rel, "missing"))
    bad = [r for r in results if r.status in ("missing", "no-file")]
    if bad:
        by_name = {p.name: p for p in patches}
        detail = "\n    ".join(f"{r.patch}: {r.file}: "
                               f"{'pattern not found' if r.status == 'missing' else 'no file'}"
                               f" ({by_name[r.patch].description})" for r in bad)
        if strict:
            raise DockletError(
                f"{len(bad)} docklet patch(es) found neither the upstream text nor the patched "
                f"text:\n    {detail}",
                hint="the source differs from the docklet this element knows (upstream "
                     "70c089a6a5bb); check the file, or set DOCKLET_STRICT_PATCH=0 to build "
                     "without the patch")
        for r in bad:
            log(f"WARNING: patch {r.patch} not applied to {r.file} (DOCKLET_STRICT_PATCH=0)")
    return results
