"""Compatibility shim for Docklet, from the dib docklet element.

It is the ``sitecustomize`` of Docklet's private package directory (DOCKLET_PYLIB, on
PYTHONPATH of Docklet's processes only). When ``flask_sqlalchemy`` is imported it restores
the application lookup of Flask-SQLAlchemy < 2.2, which Docklet was written for: the explicit
app, then the app the extension is bound to, then ``current_app``. Since 2.2 ``current_app``
comes first, which breaks the database access of Docklet's user and master servers (their
Flask apps are not the one ``db`` is bound to). The system's own sitecustomize, if any, is
run as well.
"""
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _patch(module):
    cls = getattr(module, "SQLAlchemy", None)
    original = getattr(cls, "get_app", None)
    if original is None or getattr(original, "_docklet_shim", False):
        return

    def get_app(self, reference_app=None):
        if reference_app is not None:
            return reference_app
        if getattr(self, "app", None) is not None:
            return self.app
        return original(self, reference_app)

    get_app._docklet_shim = True
    get_app.__doc__ = "docklet shim: explicit app, then the bound app, then current_app"
    cls.get_app = get_app


class _Finder:
    """Patches flask_sqlalchemy right after it is first imported; costs nothing otherwise."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "flask_sqlalchemy":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def _chain_system_sitecustomize():
    for d in sys.path:
        if not d or os.path.abspath(d) == _HERE:
            continue
        path = os.path.join(d, "sitecustomize.py")
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    code = compile(f.read(), path, "exec")
                exec(code, {"__name__": "_system_sitecustomize", "__file__": path})
            except Exception:
                pass
            return


if "flask_sqlalchemy" in sys.modules:
    _patch(sys.modules["flask_sqlalchemy"])
elif not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
_chain_system_sitecustomize()
