"""disk-image-create's command line and ``DIB_*`` variables, parsed once into a BuildConfig.

The options are diskimage-builder's (see docs/cli.md). Options are validated here so that a
typo fails in a second, not after ten minutes of package installs. An option whose feature
has not landed yet raises :class:`~dib.errors.NotYetSupported` instead of being ignored.
"""
from __future__ import annotations

import argparse
import enum
import os
import platform
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from dib import __version__, cache
from dib.errors import ConfigError, NotYetSupported
from dib.phases import BREAK_POINTS


class ImageFormat(str, enum.Enum):
    QCOW2 = "qcow2"
    RAW = "raw"
    VMDK = "vmdk"
    VHD = "vhd"
    VDI = "vdi"
    TAR = "tar"
    TGZ = "tgz"
    VAGRANT = "vagrant"
    DOCKER = "docker"
    OCI = "oci"

    @property
    def is_disk(self) -> bool:
        """Needs a block device (as opposed to an archive of the tree)."""
        return self not in (ImageFormat.TAR, ImageFormat.TGZ, ImageFormat.DOCKER,
                            ImageFormat.OCI)

    @property
    def is_qemu_disk(self) -> bool:
        """A disk image file converted from the raw disk by qemu-img (bootable as is)."""
        return self.value in ("qcow2", "raw", "vmdk", "vhd", "vdi")

    @property
    def is_directory(self) -> bool:
        """The output is a directory (an OCI image layout), not a file."""
        return self is ImageFormat.OCI

    @property
    def suffix(self) -> str:
        """The output's file name extension (``<image>.<suffix>``)."""
        return {"vagrant": "box", "docker": "docker.tar"}.get(self.value, self.value)


#: formats whose implementation lands with a later issue, and which issue that is
PENDING_FORMATS: Dict[str, str] = {
    "squashfs": "is not supported",
    "aci": "is not supported (the App Container format is dead; use -t docker)",
}

ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf", "i686": "i386",
                "ppc64le": "ppc64el"}


def host_arch() -> str:
    machine = platform.machine()
    return ARCH_ALIASES.get(machine, machine)


@dataclass(frozen=True)
class BuildConfig:
    elements: Tuple[str, ...]
    arch: str = field(default_factory=host_arch)
    image_name: str = "image"
    formats: Tuple[ImageFormat, ...] = (ImageFormat.QCOW2,)
    trace: int = 0
    compress: bool = True
    skip_base: bool = False
    packages: Tuple[str, ...] = ()
    checksums: Tuple[str, ...] = ()
    image_size_gib: Optional[float] = None
    image_extra_size_mib: Optional[int] = None
    image_cache: Path = Path("~/.cache/image-create").expanduser()
    offline: bool = False
    use_tmpfs: bool = True
    min_tmpfs_gib: float = 2.0
    logfile: Optional[Path] = None
    quiet: bool = False
    root_label: Optional[str] = None
    fs_type: str = "ext4"
    mkfs_options: str = ""
    qemu_img_options: str = ""
    install_type: str = "source"
    docker_target: Optional[str] = None
    break_points: Tuple[str, ...] = ()
    elements_path: str = ""
    tmp_dir: Path = Path("/tmp")
    overwrite: bool = False
    keep_workdir: bool = False
    no_cache: bool = False
    #: DIB_CACHE_MAX_SIZE / DIB_CACHE_MIN_FREE: the cache is pruned (least recently used
    #: first) to at most this size, and further while its filesystem has less free than that
    cache_max_bytes: int = 20 << 30
    cache_min_free_bytes: int = 5 << 30
    boot_test: bool = False
    debug: bool = False
    action: str = "build"
    argv: Tuple[str, ...] = ()
    #: the caller's environment as hooks should see it (after ``-c``)
    env: Mapping[str, str] = field(default_factory=dict, compare=False)

    def output_path(self, fmt: ImageFormat) -> Path:
        return Path(f"{self.image_name}.{fmt.suffix}")

    @property
    def report_dir(self) -> Path:
        """``<image>.d/``: log file, build report (like dib's manifests dir)."""
        return Path(f"{self.image_name}.d")

    @property
    def needs_block_device(self) -> bool:
        return any(f.is_disk for f in self.formats)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="disk-image-create",
        description="Build a disk image from elements (diskimage-builder compatible).",
        epilog="Environment: ELEMENTS_PATH, DIB_* variables; break=before-<phase>|"
               "after-<phase>|after-error opens a debug shell. See docs/cli.md.")
    p.add_argument("elements", nargs="*", metavar="ELEMENT")
    p.add_argument("-a", dest="arch", help="target architecture (default: the host's)")
    p.add_argument("-o", dest="image_name", help="output base name (default: image)")
    p.add_argument("-t", dest="types", action="append",
                   help="output type(s), comma separated: qcow2 (default), raw, vmdk, vhd, "
                        "vdi, tar, tgz, vagrant (.box), docker (.docker.tar), oci (layout "
                        "directory)")
    p.add_argument("-x", dest="trace", action="count", default=0,
                   help="trace; repeat for more (DIB_DEBUG_TRACE)")
    p.add_argument("-u", dest="uncompressed", action="store_true",
                   help="do not compress the qcow2 image")
    p.add_argument("-c", dest="clear_env", action="store_true",
                   help="ignore the caller's environment (DIB_*, ELEMENTS_PATH, ...)")
    p.add_argument("-n", dest="skip_base", action="store_true",
                   help="do not add the 'base' element")
    p.add_argument("-p", dest="packages", action="append", default=[],
                   help="extra packages to install after install.d (comma separated, "
                        "repeatable)")
    p.add_argument("--checksum", action="store_true", help="write .md5 and .sha256 files")
    p.add_argument("--image-size", help="image size in GiB (default: computed from the tree)")
    p.add_argument("--image-extra-size", help="MiB to add to the computed size")
    p.add_argument("--image-cache", help="cache directory (default ~/.cache/image-create)")
    p.add_argument("--offline", action="store_true", help="never touch the network")
    p.add_argument("--no-tmpfs", action="store_true", help="do not build in a tmpfs")
    p.add_argument("--min-tmpfs", help="smallest tmpfs worth building in, GiB (default 2): with "
                   "less memory to spare the build works on disk")
    p.add_argument("--logfile", help="also write the timestamped log here "
                                     "(default: <image>.d/build.log); implies quiet console")
    p.add_argument("--root-label", help="root filesystem label")
    p.add_argument("--mkfs-options", help="extra options for the root filesystem's mkfs")
    p.add_argument("--qemu-img-options", help="options for qemu-img convert -o")
    p.add_argument("--install-type", help="default install type (DIB_DEFAULT_INSTALLTYPE)")
    p.add_argument("--docker-target", help="repo:tag for -t docker and -t oci "
                                           "(default: <image name>:latest)")
    p.add_argument("--recipe", action="append", metavar="FILE",
                   help="build the image(s) a YAML recipe describes (repeatable; takes no "
                        "ELEMENT; see docs/artifacts.md)")
    p.add_argument("--stop-on-failure", action="store_true",
                   help="with --recipe: stop at the first image that fails")
    p.add_argument("--max-online-resize", help="ext4 resize limit (blocks)")
    p.add_argument("--mkfs-journal-size", help="ext4 journal size in MiB")
    p.add_argument("--no-cache", action="store_true",
                   help="neither reuse nor store cached layers and images (downloads are "
                        "still cached)")
    p.add_argument("--keep-workdir", action="store_true",
                   help="leave the work directory (unmounted) for inspection")
    p.add_argument("--boot-test", action="store_true",
                   help="boot the image under QEMU afterwards and fail unless the serial "
                        "console shows a login prompt (or DIB_BOOT_TEST_EXPECT, a regex); KVM "
                        "if it works, else TCG, and TCG again when the console stalls under "
                        "KVM (DIB_BOOT_TEST_ACCEL=kvm|tcg forces one)")
    p.add_argument("--cleanup", action="store_true",
                   help="remove what killed builds left behind (mounts, loop devices, work "
                        "dirs) and exit")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _number(value: str, what: str, kind=float):
    try:
        n = kind(value)
    except ValueError:
        raise ConfigError(f"{what} must be a number, not '{value}'") from None
    if n <= 0:
        raise ConfigError(f"{what} must be positive, not '{value}'")
    return n


def positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    """``env[name]`` as a positive whole number (``default`` when unset or empty)."""
    value = env.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) <= 0:
        raise ConfigError(f"{name} must be a positive whole number, not '{value}'")
    return int(value)


def _byte_size(env: Mapping[str, str], name: str, default: str) -> int:
    """``env[name]`` (or ``default``) as bytes: ``20G``, ``500M``, ``0``."""
    value = env.get(name, "").strip() or default
    try:
        return cache.parse_size(value)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _formats(types: List[str], env: Mapping[str, str]) -> Tuple[ImageFormat, ...]:
    names: List[str] = []
    for t in types:
        names.extend(x.strip() for x in t.split(",") if x.strip())
    if not names:
        names = ["qcow2"]
    out: List[ImageFormat] = []
    for name in names:
        if name in PENDING_FORMATS:
            raise NotYetSupported(f"output type '{name}' {PENDING_FORMATS[name]}")
        try:
            fmt = ImageFormat(name)
        except ValueError:
            valid = ", ".join(f.value for f in ImageFormat)
            raise ConfigError(f"unknown output type '{name}'", hint=f"valid types: {valid}") from None
        if fmt not in out:
            out.append(fmt)
    return tuple(out)


def _checksums(flag: bool, env: Mapping[str, str]) -> Tuple[str, ...]:
    value = "1" if flag else env.get("DIB_CHECKSUM", "0").strip()
    if value in ("", "0"):
        return ()
    if value == "1":
        return ("md5", "sha256")
    algs = tuple(a.strip() for a in value.split(",") if a.strip())
    bad = [a for a in algs if a not in ("md5", "sha256")]
    if bad:
        raise ConfigError(f"DIB_CHECKSUM: unknown algorithm {', '.join(bad)}",
                          hint="use 1, md5, sha256 or md5,sha256")
    return algs


def _break_points(value: str) -> Tuple[str, ...]:
    points = tuple(p.strip() for p in value.split(",") if p.strip())
    for p in points:
        if p not in BREAK_POINTS:
            raise ConfigError(f"break: unknown break point '{p}'",
                              hint="valid: " + ", ".join(BREAK_POINTS))
    return points


def parse_args(argv: List[str], environ: Mapping[str, str]) -> BuildConfig:
    """Parse disk-image-create's command line and environment into a BuildConfig."""
    args = _parser().parse_args(argv)
    env: Dict[str, str] = {} if args.clear_env else dict(environ)

    if args.cleanup:
        return BuildConfig(elements=(), action="cleanup",
                           tmp_dir=Path(env.get("TMP_DIR") or "/tmp"), env=env)
    if not args.elements:
        raise ConfigError("no elements given", hint="e.g. disk-image-create vm debian -o image")
    if args.max_online_resize or args.mkfs_journal_size:
        raise NotYetSupported("--max-online-resize and --mkfs-journal-size land with the "
                              "block-device work")

    formats = _formats(args.types or [], env)
    if args.boot_test and not any(f.is_qemu_disk for f in formats):
        raise ConfigError("--boot-test needs a disk image output (qcow2, raw, vmdk, ...)",
                          hint="add -t qcow2")
    image_name = args.image_name or env.get("IMAGE_NAME") or "image"
    for ext in (formats[0].suffix, formats[0].value) if len(formats) == 1 else ():
        if image_name.endswith("." + ext):
            image_name = image_name[: -len(ext) - 1]
            break

    size = args.image_size or env.get("DIB_IMAGE_SIZE")
    extra = args.image_extra_size or env.get("DIB_IMAGE_EXTRA_SIZE")
    min_tmpfs = args.min_tmpfs or env.get("DIB_MIN_TMPFS") or "2"
    fs_type = env.get("FS_TYPE") or "ext4"
    packages = tuple(p.strip() for group in args.packages for p in group.split(",") if p.strip())
    docker_target = args.docker_target or env.get("DOCKER_TARGET")

    return BuildConfig(
        elements=tuple(args.elements),
        arch=args.arch or env.get("ARCH") or host_arch(),
        image_name=os.path.abspath(image_name),
        formats=formats,
        trace=max(args.trace, int(env.get("DIB_DEBUG_TRACE", "0") or 0)),
        compress=not args.uncompressed,
        skip_base=args.skip_base,
        packages=packages,
        checksums=_checksums(args.checksum, env),
        image_size_gib=_number(size, "--image-size") if size else None,
        image_extra_size_mib=_number(extra, "--image-extra-size", int) if extra else None,
        image_cache=Path(args.image_cache or env.get("DIB_IMAGE_CACHE")
                         or os.path.expanduser("~/.cache/image-create")).absolute(),
        offline=args.offline or _flag(env, "DIB_OFFLINE"),
        use_tmpfs=not (args.no_tmpfs or _flag(env, "DIB_NO_TMPFS")),
        min_tmpfs_gib=_number(min_tmpfs, "--min-tmpfs"),
        logfile=Path(args.logfile).absolute() if args.logfile else None,
        quiet=bool(args.logfile) and env.get("DIB_QUIET") != "0" or _flag(env, "DIB_QUIET"),
        root_label=args.root_label or env.get("ROOT_LABEL") or None,
        fs_type=fs_type,
        mkfs_options=args.mkfs_options or env.get("MKFS_OPTS", ""),
        qemu_img_options=args.qemu_img_options or env.get("QEMU_IMG_OPTIONS", ""),
        install_type=args.install_type or env.get("DIB_DEFAULT_INSTALLTYPE") or "source",
        docker_target=docker_target,
        break_points=_break_points(env.get("break", "")),
        elements_path=env.get("ELEMENTS_PATH", ""),
        tmp_dir=Path(env.get("TMP_DIR") or "/tmp"),
        overwrite=_flag(env, "OVERWRITE_OLD_IMAGE"),
        keep_workdir=args.keep_workdir,
        no_cache=args.no_cache or _flag(env, "DIB_NO_CACHE"),
        cache_max_bytes=_byte_size(env, "DIB_CACHE_MAX_SIZE", "20G"),
        cache_min_free_bytes=_byte_size(env, "DIB_CACHE_MIN_FREE", "5G"),
        boot_test=args.boot_test,
        debug=args.debug,
        argv=tuple(argv),
        env=env,
    )


def describe(cfg: BuildConfig) -> str:
    """One line for the log: what is being built."""
    return (f"elements: {' '.join(cfg.elements)}; arch {cfg.arch}; output "
            f"{cfg.image_name} [{','.join(f.value for f in cfg.formats)}]; "
            f"argv: {shlex.join(cfg.argv)}")
