"""``fstab``: the /etc/fstab line of a mounted filesystem or a swap area.

An fstab node hangs below a ``mount`` node (or directly below a swap ``mkfs`` node, since swap
is never mounted). The text is produced by :meth:`Config.fstab` from the config alone, so it
is known, and testable, before any device exists: every filesystem has a label and a
(derived) UUID up front. Lines use ``LABEL=`` (``UUID=`` when a filesystem has no label),
come in mount order, and swap lines come last. Defaults follow dib: options ``defaults``
(``sw`` for swap), dump 0, fsck pass 2 (0 for swap).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

from dib.blockdev.node import Fields
from dib.blockdev.params import Params


@dataclass(frozen=True)
class FstabSpec:
    plugin: ClassVar[str] = "fstab"

    name: str
    base: str
    options: Optional[str] = None
    dump_freq: Optional[int] = None
    fsck_passno: Optional[int] = None


def parse(name: str, body: Mapping[str, Any], params: Params) -> FstabSpec:
    fields = Fields("fstab", name, body, ("options", "dump-freq", "fsck-passno"))
    base = str(fields.required("base"))
    options = fields.text("options")
    if options is not None and (not options.strip() or any(c.isspace() for c in options)):
        raise fields.error(f"{options!r} must be one comma-separated word", "options")
    dump = fields.integer("dump-freq", -1)
    passno = fields.integer("fsck-passno", -1)
    return FstabSpec(name, base, options, None if dump < 0 else dump,
                     None if passno < 0 else passno)


def _escape(field: str) -> str:
    return (field.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")
            .replace("\n", "\\012"))


def line(spec: FstabSpec, label: str, uuid: str, mount_point: Optional[str],
         fstype: str) -> str:
    """One fstab line; ``mount_point`` is None for swap."""
    swap = fstype == "swap"
    source = f"LABEL={label}" if label else f"UUID={uuid}"
    options = spec.options or ("sw" if swap else "defaults")
    dump = spec.dump_freq if spec.dump_freq is not None else 0
    passno = spec.fsck_passno if spec.fsck_passno is not None else (0 if swap else 2)
    fields = [source, mount_point or "none", fstype, options, str(dump), str(passno)]
    return " ".join(_escape(f) for f in fields)
