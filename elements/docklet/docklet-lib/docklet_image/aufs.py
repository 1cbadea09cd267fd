"""Booted image: /sbin/mount.aufs, which mounts the aufs branch lists Docklet asks for as
overlayfs (current kernels have no aufs)."""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from .base import DockletError


@dataclass(frozen=True)
class AufsMount:
    target: str
    upper: str
    lowers: Tuple[str, ...]
    readonly: bool = False

    def overlay_argv(self) -> List[str]:
        opts = [f"lowerdir={':'.join(self.lowers)}", f"upperdir={self.upper}/.ovl-upper",
                f"workdir={self.upper}/.ovl-work"]
        if self.readonly:
            opts.insert(0, "ro")
        return ["mount", "-i", "-t", "overlay", "overlay", "-o", ",".join(opts), self.target]


def parse_aufs_args(argv: Sequence[str]) -> AufsMount:
    """mount(8) calls ``mount.aufs SOURCE TARGET [-sfnv] [-o OPTIONS] [-t TYPE]``; docklet's
    options are ``br=<layer>=rw:<packagefs>=ro+wh:<basefs>=ro+wh,udba=reval``."""
    positional, options = [], []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-o", "-t", "-N"):
            if i + 1 >= len(argv):
                raise DockletError(f"mount.aufs: {a} needs a value")
            if a == "-o":
                options.append(argv[i + 1])
            i += 2
            continue
        if a.startswith("-o") and len(a) > 2:
            options.append(a[2:])
        elif a.startswith("-"):
            pass  # -s -f -n -v: nothing to do for overlay
        else:
            positional.append(a)
        i += 1
    if len(positional) != 2:
        raise DockletError(f"mount.aufs: expected SOURCE TARGET, got {positional}")
    target = positional[1].rstrip("/") or "/"
    branches: Optional[str] = None
    readonly = False
    for opt in ",".join(options).split(","):
        if opt.startswith(("br=", "br:", "dirs=")):
            branches = opt.split("=", 1)[1] if opt.startswith(("br=", "dirs=")) else opt[3:]
        elif opt == "ro":
            readonly = True
    if not branches:
        raise DockletError("mount.aufs: no br= option (the aufs branch list)")
    upper, lowers = None, []
    for i, br in enumerate(branches.split(":")):
        if not br:
            continue
        path, _, perm = br.partition("=")
        perm = perm or ("rw" if i == 0 else "ro")
        path = path.rstrip("/") or "/"
        if "," in path or ":" in path:
            raise DockletError(f"mount.aufs: branch path {path!r} cannot go to overlayfs")
        if perm.split("+")[0] == "rw":
            if upper is not None:
                raise DockletError("mount.aufs: overlayfs has one writable branch, "
                                   f"got {upper} and {path}")
            upper = path
        else:
            lowers.append(path)
    if upper is None:
        if not lowers:
            raise DockletError("mount.aufs: empty branch list")
        return AufsMount(target, "", tuple(lowers), True)
    if not lowers:
        raise DockletError("mount.aufs: overlayfs needs at least one read-only branch")
    return AufsMount(target, upper, tuple(lowers), readonly)


def mount_aufs(argv: Sequence[str]) -> int:
    spec = parse_aufs_args(argv)
    if not spec.upper:
        args = ["mount", "-i", "-t", "overlay", "overlay", "-o",
                f"ro,lowerdir={':'.join(spec.lowers)}", spec.target]
    else:
        for d in (".ovl-upper", ".ovl-work"):
            os.makedirs(os.path.join(spec.upper, d), exist_ok=True)
        args = spec.overlay_argv()
    proc = subprocess.run(args)
    return proc.returncode
