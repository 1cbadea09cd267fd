"""The command line entry: ``python3 -m docklet_image COMMAND`` (package on sys.path), or
``python3 <docklet-lib>/docklet_image COMMAND`` as the element's hooks run it."""
import os
import sys

if not __package__:
    # run by its directory's path: Python put this directory itself first on sys.path;
    # import the package from its parent instead (the same sys.path as ``-m``)
    _here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _here:
        sys.path[0] = os.path.dirname(_here)
    else:
        sys.path.insert(0, os.path.dirname(_here))

from docklet_image.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
