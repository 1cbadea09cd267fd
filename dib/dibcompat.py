"""The hook environment diskimage-builder's own element library expects.

diskimage-builder's elements (``pip install diskimage-builder``: about 130 of them in
``site-packages/diskimage_builder/elements``) run unchanged here when their hooks find what
diskimage-builder's ``disk-image-create`` gives them:

* ``sudo``: its hooks call ``sudo`` (``sudo -E``, ``sudo mount``, ...) everywhere. dib runs as
  root, so ``dib/hookbin/sudo`` -- a pass-through that drops sudo's options and runs the
  command -- comes first on the host phases' PATH, whether the host has sudo or not (the real
  one would reset PATH and the environment). It is copied into the hooks tree
  (``dib-hookbin/``), so in the chroot phases the same shim is at the *end* of PATH
  (``/tmp/in_target.d/dib-hookbin``): an image's own sudo wins, as with diskimage-builder;
  images without sudo still work.
* ``DIB_PYTHON_EXEC``: an interpreter that can ``import diskimage_builder`` (its helpers such
  as package-installs-squash do), and ``_LIB``: that package's ``lib/`` directory. Found by
  :func:`find_library_python`; our own elements' helpers use ``DIB_ENGINE_PYTHON`` instead
  (the Python running dib), so both can differ.
* what its ``disk-image-create`` exports from the block-device layer: ``DIB_BOOT_LABEL``,
  ``DIB_MOUNTPOINTS`` and ``DIB_BLOCK_DEVICE_PARAMS_YAML`` from the start, and a
  ``dib-block-device`` command on the host PATH that answers ``getval`` from this build's
  block-device state (:func:`main`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import yaml

from dib import cmd
from dib.errors import CommandFailed, DibError

if TYPE_CHECKING:
    from dib import blockdev

log = logging.getLogger("dib.build")

#: the shims shipped with dib (sudo, dib-block-device)
HOOKBIN = Path(__file__).resolve().parent / "hookbin"
#: where the shims are copied in the hooks tree, so chroot phases see them too
HOOKS_SUBDIR = "dib-hookbin"
#: the same directory as seen from inside the chroot
IN_CHROOT_BIN = f"/tmp/in_target.d/{HOOKS_SUBDIR}"
#: what to install when an element needs diskimage-builder's Python package
INSTALL_HINT = ("install diskimage-builder where dib can find it: `pip install diskimage-builder` "
                "into dib's own environment (or `pip install 'dib[dib-elements]'`), or set "
                "DIB_PYTHON_EXEC to a Python that can import diskimage_builder (e.g. a venv's "
                "bin/python3)")
#: hook files that reach for diskimage-builder's Python package or its lib/ directory
NEEDS_PACKAGE = re.compile(r"DIB_PYTHON_EXEC|\$\{?_LIB\b")
PROBE = "import diskimage_builder.paths as p; print(p.get_path('lib'))"


def library_package(element_path: Path) -> Optional[Path]:
    """The ``diskimage_builder`` package directory when ``element_path`` is one of its
    elements (``.../diskimage_builder/elements/<name>``, installed or a source checkout)."""
    parent = element_path.resolve().parent
    pkg = parent.parent
    if parent.name == "elements" and pkg.name == "diskimage_builder" \
            and (pkg / "lib" / "disk-image-create").is_file():
        return pkg
    return None


def library_elements(elements: Iterable[Tuple[str, Path]]) -> Dict[str, Path]:
    """{element name: its diskimage_builder package} for the elements from dib's library."""
    found = {}
    for name, path in elements:
        pkg = library_package(path)
        if pkg is not None:
            found[name] = pkg
    return found


def needs_package(element_path: Path) -> bool:
    """Does any file of the element refer to ``DIB_PYTHON_EXEC`` or ``$_LIB``?"""
    for dirpath, dirnames, files in os.walk(element_path):
        dirnames[:] = [d for d in dirnames if d not in ("tests", "test-elements", "__pycache__")]
        for f in files:
            try:
                text = (Path(dirpath) / f).read_text(errors="replace")
            except OSError:
                continue
            if NEEDS_PACKAGE.search(text):
                return True
    return False


def venv_pythons(pkg: Path) -> List[Path]:
    """The interpreters of the environment ``pkg`` is installed in (``<prefix>/lib/pythonX.Y/
    site-packages/diskimage_builder`` -> ``<prefix>/bin/python3``)."""
    site = pkg.parent
    if site.name not in ("site-packages", "dist-packages"):
        return []
    prefix = site.parent.parent.parent  # <prefix>/lib/pythonX.Y/site-packages
    version = site.parent.name  # python3.11, or python3 for Debian's dist-packages
    names = [version, "python3", "python"] if version.startswith("python3.") else ["python3",
                                                                                     "python"]
    return [prefix / "bin" / n for n in names if (prefix / "bin" / n).is_file()]


def probe_lib(python: str) -> Optional[Path]:
    """``python``'s diskimage_builder ``lib/`` directory, or None if it cannot import it."""
    try:
        out = cmd.output([python, "-c", PROBE], env=cmd.base_env())
    except (CommandFailed, OSError):
        return None
    lib = Path(out.splitlines()[-1]) if out else None
    return lib if lib is not None and lib.is_dir() else None


@dataclass(frozen=True)
class LibraryPython:
    """The interpreter for diskimage-builder's helpers, and its package's ``lib/``."""

    python: str
    lib: Optional[Path]
    why: str


def find_library_python(env: Mapping[str, str], packages: Sequence[Path],
                        engine_python: str = sys.executable) -> LibraryPython:
    """``DIB_PYTHON_EXEC`` for hooks, in this order:

    1. the caller's ``DIB_PYTHON_EXEC`` (as diskimage-builder's wrapper respects it);
    2. the interpreter of the environment the used library elements are installed in;
    3. the Python running dib, when it can import diskimage_builder;
    4. else the Python running dib without ``_LIB`` (fine while no element needs it).
    """
    user = env.get("DIB_PYTHON_EXEC", "").strip()
    if user:
        return LibraryPython(user, probe_lib(user), "DIB_PYTHON_EXEC")
    for pkg in dict.fromkeys(packages):
        for python in venv_pythons(pkg):
            lib = probe_lib(os.fspath(python))
            if lib is not None:
                return LibraryPython(os.fspath(python), lib, f"the environment of {pkg}")
    lib = probe_lib(engine_python)
    return LibraryPython(engine_python, lib, "dib's own Python")


def hook_env(env: Mapping[str, str], elements: Sequence[Tuple[str, Path]],
             engine_python: str = sys.executable) -> Dict[str, str]:
    """``DIB_PYTHON_EXEC``, ``_LIB`` and ``DIB_ENGINE_PYTHON`` for the element set
    ``elements`` ((name, path) in resolution order); raises DibError when an element from
    diskimage-builder's library needs its Python package and no interpreter has it."""
    from_library = library_elements(elements)
    found = find_library_python(env, list(from_library.values()), engine_python)
    out = {"DIB_PYTHON_EXEC": found.python, "DIB_ENGINE_PYTHON": engine_python}
    if found.lib is not None:
        out["_LIB"] = os.fspath(found.lib)
        log.info("diskimage-builder compatibility: DIB_PYTHON_EXEC=%s (%s), _LIB=%s",
                 found.python, found.why, found.lib)
        return out
    needy = [n for n, _ in elements if n in from_library
             and needs_package(dict(elements)[n])]
    if needy:
        which = (f"DIB_PYTHON_EXEC={found.python} cannot import diskimage_builder"
                 if found.why == "DIB_PYTHON_EXEC" else
                 "no Python that can import diskimage_builder was found")
        raise DibError(f"element(s) {', '.join(needy)} from diskimage-builder's library run "
                       f"its Python helpers ($DIB_PYTHON_EXEC, $_LIB), but {which}",
                       hint=INSTALL_HINT)
    return out


def winners_dir(dest: Path, elements: Sequence[Tuple[str, Path]]) -> Path:
    """A directory with one link per resolved element, to the copy that won: the
    ``ELEMENTS_PATH`` hooks see. Tools that look elements up by name along ELEMENTS_PATH
    (diskimage-builder's package-installs-squash) then find exactly the element the build
    uses -- not also the copies it overrode, such as dib's built-in ``debootstrap`` when
    diskimage-builder's comes first."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, path in elements:
        (dest / name).symlink_to(path.resolve(), target_is_directory=True)
    return dest


# -- the shims ---------------------------------------------------------------------------

def install_hookbin(hooks: Path) -> Path:
    """Copy the shims into the hooks tree, executable whatever the installation did to their
    modes; returns that directory (the host phases' PATH entry; the chroot phases see it as
    :data:`IN_CHROOT_BIN`)."""
    dest = hooks / HOOKS_SUBDIR
    dest.mkdir(exist_ok=True)
    for src in sorted(HOOKBIN.iterdir()):
        if src.is_file():
            shutil.copy2(src, dest / src.name)
            os.chmod(dest / src.name, 0o755)
    return dest


def host_path(hookbin: Path, path: str) -> str:
    """The host phases' PATH: the shims first."""
    return f"{hookbin}:{path}"


def chroot_path(path: str) -> str:
    """The chroot phases' PATH: the shims last (an image's own sudo wins)."""
    return f"{path}:{IN_CHROOT_BIN}"


# -- the block-device layer as diskimage-builder's hooks see it ----------------------------

STATE_FILE = "state.json"


def block_device_dir(build_dir: Path) -> Path:
    return build_dir / "block-device"


def block_device_env(build_dir: Path, config_text: str, params: "blockdev.Params") -> Dict[str,
                                                                                        str]:
    """What diskimage-builder exports from its block-device config before root.d:
    ``DIB_ROOT_LABEL`` and ``DIB_ROOT_FSTYPE`` (the config's, which may differ from the
    options), ``DIB_BOOT_LABEL`` (the label of the ``/boot`` filesystem, else empty),
    ``DIB_MOUNTPOINTS`` (``|``-joined, mount order) and ``DIB_BLOCK_DEVICE_PARAMS_YAML``."""
    from dib import blockdev

    config = blockdev.load_config(config_text, params)
    root = config.root_filesystem
    root_label = root.label if root else params.effective_root_label
    root_fstype = root.type if root else params.root_fs_type
    boot = [m for m in config.mounts() if m.mount_point == "/boot"]
    boot_label = config.filesystem(boot[0]).label if boot else ""
    mount_points = [m.mount_point for m in config.mounts()]
    env = write_params(build_dir, config_text=config_text, image_dir=params.image_dir,
                       mount_base=params.mount_base, root_fs_type=root_fstype,
                       root_label=root_label, boot_label=boot_label, mount_points=mount_points)
    env.update({"DIB_ROOT_LABEL": root_label, "DIB_ROOT_FSTYPE": root_fstype})
    return env


def write_params(build_dir: Path, *, config_text: str, image_dir: Path, mount_base: Path,
                 root_fs_type: str, root_label: str, boot_label: str,
                 mount_points: Sequence[str]) -> Dict[str, str]:
    """Write dib's ``params.yaml`` (and the config it names) plus the state ``getval``
    answers from; returns the variables diskimage-builder exports before root.d."""
    d = block_device_dir(build_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(config_text)
    params = {"config": os.fspath(d / "config.yaml"), "image-dir": os.fspath(image_dir),
              "root-fs-type": root_fs_type, "root-label": root_label,
              "mount-base": os.fspath(mount_base), "build-dir": os.fspath(build_dir)}
    (d / "params.yaml").write_text(yaml.safe_dump(params, default_flow_style=False))
    update_state(build_dir, {"root-label": root_label, "root-fstype": root_fs_type,
                             "boot-label": boot_label,
                             "mount-points": "|".join(mount_points)})
    return {"DIB_BLOCK_DEVICE_PARAMS_YAML": os.fspath(d / "params.yaml"),
            "DIB_BOOT_LABEL": boot_label, "DIB_MOUNTPOINTS": "|".join(mount_points)}


def disk_created(build_dir: Path, *, image_path: Path, image_block_device: str,
                 image_block_devices: Mapping[str, str], image_size: int) -> Dict[str, str]:
    """Record what the block-device layer made, for ``getval``; returns the variables
    diskimage-builder exports from block-device.d on (``DIB_IMAGE_SIZE`` in KiB, as there)."""
    devices = "".join(f" [{k}]={v} " for k, v in image_block_devices.items())
    update_state(build_dir, {"image-path": os.fspath(image_path),
                             "image-block-device": image_block_device,
                             "image-block-devices": devices})
    params = block_device_dir(build_dir) / "params.yaml"
    if params.exists():
        with params.open("a") as f:
            f.write(f"image-size: {image_size // 1024}KiB\n")
    return {"IMAGE_BLOCK_DEVICE": image_block_device, "IMAGE_BLOCK_DEVICES": devices.strip(),
            "DIB_IMAGE_SIZE": str(image_size // 1024)}


def update_state(build_dir: Path, values: Mapping[str, str]) -> None:
    path = block_device_dir(build_dir) / STATE_FILE
    state = json.loads(path.read_text()) if path.exists() else {}
    state.update(values)
    path.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")


#: getval symbols that exist only once the disk has been created
AFTER_CREATE = ("image-path", "image-block-device", "image-block-devices")


def getval(build_dir: Path, symbol: str) -> str:
    path = block_device_dir(build_dir) / STATE_FILE
    state = json.loads(path.read_text()) if path.exists() else {}
    if symbol in state:
        return str(state[symbol])
    if symbol in AFTER_CREATE:
        raise DibError(f"dib-block-device getval {symbol}: the disk does not exist yet",
                       hint="it is known from block-device.d on")
    raise DibError(f"dib-block-device getval: unknown symbol '{symbol}'",
                   hint="known: root-label, root-fstype, boot-label, mount-points, "
                        + ", ".join(AFTER_CREATE))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``dib-block-device [--params FILE] getval SYMBOL`` for hooks; the other phases of
    diskimage-builder's block-device tool (init, create, umount, cleanup) are dib's own
    business and refused."""
    from dib.log import helper_main

    def run(args: argparse.Namespace) -> int:
        params_file = args.params or os.environ.get("DIB_BLOCK_DEVICE_PARAMS_YAML")
        if not params_file:
            raise DibError("dib-block-device: no --params and no DIB_BLOCK_DEVICE_PARAMS_YAML",
                           hint="call it from a hook of a dib build")
        params = yaml.safe_load(Path(params_file).read_text()) or {}
        if args.phase != "getval":
            raise DibError(f"dib-block-device {args.phase}: dib creates, mounts and releases "
                           "the block devices itself; hooks can only ask (getval)",
                           hint="use getval SYMBOL, or the IMAGE_BLOCK_DEVICE(S) variables")
        if not args.symbol:
            raise DibError("dib-block-device getval needs a SYMBOL")
        print(getval(Path(params["build-dir"]), args.symbol))
        return 0

    p = argparse.ArgumentParser(prog="dib-block-device",
                                description="diskimage-builder's block-device helper, as far "
                                            "as hooks use it: getval SYMBOL")
    p.add_argument("--params")
    p.add_argument("phase")
    p.add_argument("symbol", nargs="?")
    return helper_main(lambda: run(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
