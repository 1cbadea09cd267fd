"""What bin/disk-image-create, bin/element-info and bin/dib-cache share: run dib from this
checkout, in the checkout's venv (``.venv``, made by bin/dib-host-setup) when there is one.

So ``bin/disk-image-create`` works whatever ``python3`` is first on PATH -- on a stock Debian
that is the system Python, which lacks dib's dependencies (and PEP 668 keeps pip out of it).
"""
import os
import sys

TOP = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
VENV = os.path.join(TOP, ".venv")


def enter(script: str) -> None:
    """Re-run ``script`` under the checkout's venv unless this is it; else put the checkout
    first on ``sys.path``."""
    python = os.path.join(VENV, "bin", "python")
    if os.path.exists(python) and os.path.realpath(sys.prefix) != os.path.realpath(VENV):
        os.execv(python, [python, os.path.realpath(script), *sys.argv[1:]])
    sys.path.insert(0, TOP)
