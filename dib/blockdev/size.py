"""Size specifications as diskimage-builder writes them.

The units are dib's, so existing block-device YAML keeps its meaning:

* ``TiB``, ``GiB``, ``MiB``, ``KiB`` are binary (powers of 1024);
* ``TB``, ``GB``, ``MB``, ``KB`` and the bare ``T``, ``G``, ``M``, ``K`` are decimal
  (powers of 1000; dib switched ``M`` to 10**6 in 2022 and we keep that);
* ``B`` or no unit means bytes; a YAML integer means bytes too.

Partition sizes may also be relative, ``NN%`` (decimals allowed), meaning a share of the space
that is *still free* when the partition is laid out, not of the whole disk. A relative size is
returned as a :class:`Percent`; only :mod:`dib.blockdev.partition` turns it into bytes.

Parsing raises ``ValueError`` with a short reason; the config layer turns that into a
:class:`~dib.errors.ConfigError` naming the node and the key.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

KiB = 1024
MiB = 1024 ** 2
GiB = 1024 ** 3

UNITS = {
    "TiB": 1024 ** 4, "GiB": 1024 ** 3, "MiB": 1024 ** 2, "KiB": 1024,
    "TB": 1000 ** 4, "GB": 1000 ** 3, "MB": 1000 ** 2, "KB": 1000,
    "T": 1000 ** 4, "G": 1000 ** 3, "M": 1000 ** 2, "K": 1000,
    "B": 1, "": 1,
}

_ABS = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([A-Za-z]*)\s*$")
_REL = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*%\s*$")


@dataclass(frozen=True)
class Percent:
    """A share (0 < value <= 100) of the space left when the partition is placed."""

    value: float

    def of(self, available: int) -> int:
        """The share of ``available`` bytes, rounded down to a whole byte."""
        return int(available * self.value // 100)

    def __str__(self) -> str:
        return f"{self.value:g}%"


Size = Union[int, Percent]


def parse_abs_size(spec: object) -> int:
    """Bytes from ``spec`` (``"8MiB"``, ``"1.5G"``, ``4096``). Raises ValueError."""
    if isinstance(spec, bool):
        raise ValueError(f"{spec!r} is not a size")
    if isinstance(spec, int):
        if spec <= 0:
            raise ValueError(f"{spec} is not a positive size")
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"{spec!r} is not a size")
    match = _ABS.match(spec)
    if not match or match.group(2) not in UNITS:
        raise ValueError(f"'{spec}' is not a size (a number with one of the units "
                         f"{', '.join(u for u in UNITS if u)}, or bytes)")
    value = int(float(match.group(1)) * UNITS[match.group(2)])
    if value <= 0:
        raise ValueError(f"'{spec}' is not a positive size")
    return value


def parse_size(spec: object) -> Size:
    """An absolute size in bytes, or a :class:`Percent` for ``NN%``. Raises ValueError."""
    if isinstance(spec, str) and "%" in spec:
        match = _REL.match(spec)
        if not match:
            raise ValueError(f"'{spec}' is not a relative size like '40%'")
        value = float(match.group(1))
        if not 0 < value <= 100:
            raise ValueError(f"'{spec}' must be more than 0% and at most 100%")
        return Percent(value)
    return parse_abs_size(spec)


def human(size: int) -> str:
    """``size`` bytes in the largest binary unit that keeps one decimal, for messages."""
    for unit, factor in (("TiB", 1024 ** 4), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}".replace(".0 ", " ")
    return f"{size} B"
