"""disk-image-create's settings: one table, parsed once into a frozen BuildConfig.

:data:`SETTINGS` lists every option the engine reads -- each once, with its command-line
flag(s), recipe key, ``DIB_*`` (or other) variable(s), parser, default, accepted values and
help text. The command-line parser (:func:`_parser`), the recipe schema (``dib.recipe.KEYS``),
``dib-cache``'s ``--image-cache`` and the reference table in docs/cli.md are all made from it
(a unit test fails when the doc and the table disagree).

Precedence: the flag, else the first variable that is set and not empty, else the default.
Every value is validated when the config is built, so a typo fails in the first second with
a :class:`~dib.errors.ConfigError` that names the flag or variable and what it accepts.
:func:`preflight` then checks the places the build will write (output directory, log file,
TMP_DIR, image cache) before any work starts.

Variables that only element hooks read (``DIB_RELEASE``, ``DIB_APT_*``, ...) are not here:
they pass through to the hooks unchanged (``cfg.env``), and the elements document them.
"""
from __future__ import annotations

import argparse
import enum
import os
import platform
import re
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from dib import __version__
from dib.errors import ConfigError, NotYetSupported
from dib.phases import BREAK_POINTS

if TYPE_CHECKING:  # pragma: no cover
    from dib.outputs.container import ContainerSettings
    from dib.outputs.libvirt import DomainSettings
    from dib.outputs.vagrant import VagrantSettings
    from dib.remote.url import RemoteURL


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
    VHDX = "vhdx"
    OVA = "ova"

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

#: the architectures dib builds for (Debian's names), and the kernel's names it also takes
ARCHES = ("amd64", "arm64", "armel", "armhf", "i386", "ppc64el", "riscv64", "s390x")
ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf", "i686": "i386",
                "ppc64le": "ppc64el"}

#: where the cache lives unless --image-cache / DIB_IMAGE_CACHE say otherwise
DEFAULT_IMAGE_CACHE = "~/.cache/image-create"

#: root filesystem types (FS_TYPE) and the block sizes the loop device takes (DIB_BLOCK_SIZE)
ROOT_FS_TYPES = ("ext2", "ext3", "ext4", "xfs", "vfat")
BLOCK_SIZES = ("512", "1024", "2048", "4096")


def host_arch() -> str:
    machine = platform.machine()
    return ARCH_ALIASES.get(machine, machine)


# -- value parsers: each takes the text and returns the value or raises Invalid --------------

class Invalid(ValueError):
    """Why a value is refused (a phrase: "must be ..., not '...'")."""


def _text(value: str) -> str:
    return value


def _image_name(value: str) -> str:
    if not value.strip() or value.endswith("/"):
        raise Invalid(f"'{value}' is not a file name")
    return value


def _boolean(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise Invalid(f"must be 1 or 0 (true/false, yes/no), not '{value}'")


def _whole(value: str) -> int:
    if not value.strip().isdigit():
        raise Invalid(f"must be a whole number, not '{value}'")
    return int(value)


def _positive_int(value: str) -> int:
    if not value.strip().isdigit() or int(value) <= 0:
        raise Invalid(f"must be a positive whole number, not '{value}'")
    return int(value)


def _positive_number(value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        raise Invalid(f"must be a number, not '{value}'") from None
    if not n > 0 or n == float("inf"):
        raise Invalid(f"must be a positive number, not '{value}'")
    return n


def _size(value: str) -> int:
    from dib import cache

    try:
        n = cache.parse_size(value)
    except ValueError:
        raise Invalid(f"must be a size such as 20G, 500M or 0, not '{value}'") from None
    if n < 0:
        raise Invalid(f"must not be negative, not '{value}'")
    return n


def _words(value: str) -> Tuple[str, ...]:
    try:
        return tuple(shlex.split(value))
    except ValueError as exc:
        raise Invalid(f"cannot be split into words ({exc}): '{value}'") from None


def _assignments(value: str) -> Tuple[str, ...]:
    items = _words(value)
    for item in items:
        if "=" not in item or item.startswith("="):
            raise Invalid(f"'{item}' is not NAME=VALUE")
    return items


def _labels(value: str) -> Tuple[Tuple[str, str], ...]:
    out = []
    for item in _words(value):
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise Invalid(f"'{item}' is not key=value")
        out.append((k, v))
    return tuple(out)


def _shell_command(value: str) -> str:
    if not _words(value):
        raise Invalid("must name a command")
    return value


def _remote_cache(value: str) -> "RemoteURL":
    from dib.remote import url  # only when a remote cache is asked for

    try:
        return url.parse(value)
    except url.BadURL as why:
        raise Invalid(str(why)) from None


def _credentials(value: str) -> Tuple[str, str]:
    user, sep, password = value.partition(":")
    if not sep or not user or not password:  # never quote the value: it holds a secret
        raise Invalid("must be USER:PASSWORD (the value is not shown)")
    return user, password


def _abs_path(value: str) -> Path:
    return Path(value).expanduser().absolute()


def _directory(value: str) -> Path:
    path = _abs_path(value)
    if path.exists() and not path.is_dir():
        raise Invalid(f"must be a directory, but {path} is not one")
    return path


def _not_directory(value: str) -> Path:
    path = _abs_path(value)
    if path.is_dir():
        raise Invalid(f"must name a file, but {path} is a directory")
    return path


def _existing_file(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise Invalid(f"{value} is not a file")
    return path


def _elements_path(value: str) -> str:
    bad = [p for p in value.split(":") if p and not os.path.isdir(p)]
    if bad:
        raise Invalid(f"lists {', '.join(bad)}, which is not a directory")
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise Invalid(f"is not a valid regular expression ({exc}): '{value}'") from None
    return value


def _formats(value: str) -> Tuple["ImageFormat", ...]:
    out: List[ImageFormat] = []
    for name in (x.strip() for x in value.split(",")):
        if not name:
            continue
        if name in PENDING_FORMATS:
            raise NotYetSupported(f"-t: output type '{name}' {PENDING_FORMATS[name]}",
                                  hint="-t takes " + ", ".join(f.value for f in ImageFormat))
        try:
            fmt = ImageFormat(name)
        except ValueError:
            raise Invalid(f"unknown output type '{name}'") from None
        if fmt not in out:
            out.append(fmt)
    return tuple(out) or (ImageFormat.QCOW2,)


def _packages(value: str) -> Tuple[str, ...]:
    names = tuple(p.strip() for p in value.split(",") if p.strip())
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9+._:=~-]*", n)]
    if bad:
        raise Invalid(f"'{bad[0]}' is not a package name")
    return names


def _recipe_file(value: str) -> Tuple[str, ...]:
    files = tuple(value.split(","))  # one per --recipe (see setting_value)
    for f in files:
        if not os.path.isfile(f):
            raise Invalid(f"{f} is not a file")
    return files


#: the port a Dask scheduler listens on unless told otherwise
FARM_PORT = 8786


def _farm_address(value: str) -> str:
    """A Dask scheduler address, ``tcp://HOST[:PORT]`` or ``tls://HOST[:PORT]`` (port 8786
    unless given); returned with the port spelled out."""
    m = re.fullmatch(r"(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?/?", value)
    if not m or (m.group(3) and not 0 < int(m.group(3)) < 65536):
        raise Invalid(f"'{value}' is not a scheduler address such as tcp://HOST:{FARM_PORT}")
    return f"{m.group(1)}://{m.group(2)}:{m.group(3) or FARM_PORT}"


def _checksums(value: str) -> Tuple[str, ...]:
    v = value.strip()
    if v in ("", "0"):
        return ()
    if v == "1":
        return ("md5", "sha256")
    algs = tuple(a.strip() for a in v.split(",") if a.strip())
    bad = [a for a in algs if a not in ("md5", "sha256")]
    if bad:
        raise Invalid(f"unknown algorithm '{', '.join(bad)}'")
    return algs


def _break_points(value: str) -> Tuple[str, ...]:
    points = tuple(p.strip() for p in value.split(",") if p.strip())
    bad = [p for p in points if p not in BREAK_POINTS]
    if bad:
        raise Invalid(f"unknown break point '{bad[0]}'")
    return points


def _qemu_img_options(value: str) -> str:
    bad = [o for o in value.split(",") if o.strip() and "=" not in o]
    if bad:
        raise Invalid(f"'{bad[0]}' is not key=value (options are key=value,key=value)")
    return value


def _root_label(value: str) -> str:
    if len(value) > 16 or not value.strip():
        raise Invalid(f"must be 1 to 16 characters, not '{value}' ({len(value)})")
    return value


def _docker_target(value: str) -> str:
    from dib.outputs import container

    try:
        container.parse_reference(value, what="")
    except ConfigError as exc:
        raise Invalid(exc.message.lstrip(": ")) from None
    return value


def _block_device_config(value: str) -> str:
    """Inline YAML or ``file://PATH``: the YAML text (checked to parse)."""
    import yaml

    text = value
    if value.startswith("file://"):
        path = Path(value[len("file://"):])
        try:
            text = path.read_text()
        except OSError as exc:
            raise Invalid(f"names {path}, which cannot be read ({exc.strerror})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise Invalid(f"is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, (list, dict)):
        raise Invalid("must be a YAML list or mapping of block-device nodes")
    return text


def _user_name(value: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value):
        raise Invalid(f"'{value}' is not a valid user name")
    return value


def _container_user(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?", value):
        raise Invalid(f"'{value}' is not a user[:group] name or id")
    return value


def _domain_name(value: str) -> str:
    if "/" in value:
        raise Invalid(f"'{value}' is not a valid domain name")
    return value


def _libvirt_firmware(value: str) -> str:
    v = {"efi": "uefi"}.get(value.lower(), value.lower())
    if v not in ("auto", "bios", "uefi"):
        raise Invalid(f"must be auto, bios or uefi, not '{value}'")
    return v


def _libvirt_network(value: str) -> str:
    if value == "bridge:":
        raise Invalid("bridge: needs a bridge name (bridge:br0)")
    return value


def _libvirt_serial(value: str) -> str:
    if value != "pty" and not (value.startswith("file:") and len(value) > 5):
        raise Invalid(f"must be pty or file:PATH, not '{value}'")
    return value


def _machine(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", value):
        raise Invalid(f"'{value}' is not a QEMU machine type")
    return value


# -- the table --------------------------------------------------------------------------------

#: how a setting appears on the command line and in a recipe
KINDS = ("text", "flag", "count", "list", "positional", "choice", "int", "number", "options")


@dataclass(frozen=True)
class Setting:
    """One option: everywhere it can be given, how it is parsed, and what it accepts."""

    name: str
    help: str
    flags: Tuple[str, ...] = ()
    recipe: Optional[str] = None
    env: Tuple[str, ...] = ()
    kind: str = "text"
    parse: Callable[[str], Any] = _text
    #: the default as it would be written (parsed like a given value); None: unset
    default: Optional[str] = None
    choices: Tuple[str, ...] = ()
    #: what it accepts, for the hint and the docs (choices speak for themselves)
    accepts: str = ""
    metavar: Optional[str] = None
    #: examples the table-driven test feeds in: refused (None: any text is fine) / accepted
    bad: Optional[str] = None
    good: Optional[str] = None
    #: how the default reads in the docs when it is not a fixed value
    default_text: Optional[str] = None

    @property
    def accepted(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        return self.accepts

    @property
    def sources(self) -> str:
        """Every way to give it: ``-a / ARCH / recipe arch``."""
        parts = list(self.flags) + list(self.env)
        if self.recipe:
            parts.append(f"recipe key '{self.recipe}'")
        return " / ".join(parts) or self.name

    @property
    def takes_value(self) -> bool:
        return not (self.kind == "flag" and not self.env) and self.kind != "positional"

    def value(self, text: str, source: str) -> Any:
        """``text`` (given as ``source``) parsed; ConfigError naming both when refused."""
        try:
            if self.choices:
                if text not in self.choices:
                    raise Invalid(f"must be {self.accepted}, not '{text}'"
                                  if len(self.choices) <= 4 else
                                  f"'{text}' is not one of the values it takes")
                return text
            return self.parse(text)
        except Invalid as why:
            error = ConfigError(f"{source}: {why}",
                                hint=f"{self.sources} takes {self.accepted}")
            error.setting, error.source = self, source  # type: ignore[attr-defined]
            raise error from None


def _s(*args: Any, **kw: Any) -> Setting:
    return Setting(*args, **kw)


_BOOL = dict(parse=_boolean, accepts="1 or 0 (true/false, yes/no)", bad="maybe", good="1")
_WORDS = "words, quoted as in a shell"

SETTINGS: Tuple[Setting, ...] = (
    # -- what to build --------------------------------------------------------------------
    _s("elements", "elements to build the image from", recipe="elements", kind="positional",
       metavar="ELEMENT"),
    _s("arch", "target architecture (Debian or kernel names)", ("-a",), "arch", ("ARCH",),
       "choice", choices=ARCHES + tuple(ARCH_ALIASES), default_text="the host's", metavar="ARCH",
       bad="sparc99", good="arm64"),
    _s("image_name", "output base name; with one -t, a trailing .<type> is dropped", ("-o",),
       "imagename", ("IMAGE_NAME",), parse=_image_name, default="image", metavar="NAME",
       accepts="a file name (its directory must be writable)", bad="out/", good="out/web"),
    _s("types", "output types, comma separated: qcow2, raw, vmdk, vhd, vdi, vhdx, tar, tgz, "
       "vagrant (.box), docker (.docker.tar), oci (layout directory), ova (OVF + VMDK); "
       "docs/artifacts.md", ("-t",), "types",
       kind="list", parse=_formats, default="qcow2", metavar="TYPES",
       accepts="a comma-separated list of " + ", ".join(f.value for f in ImageFormat),
       bad="qcow3", good="raw,tar"),
    _s("trace", "trace: hooks run with set -x at 1, tools more verbose at 2 (repeat -x)",
       ("-x",), "debug-trace", ("DIB_DEBUG_TRACE",), "count", _whole, "0",
       accepts="a whole number: 0 (off), 1, 2", bad="yes", good="2"),
    _s("uncompressed", "do not compress the qcow2 image", ("-u",), "uncompressed",
       kind="flag"),
    _s("clear_env", "ignore the caller's environment (DIB_*, ELEMENTS_PATH, ...)", ("-c",),
       "clear", kind="flag"),
    _s("skip_base", "do not add the 'base' element", ("-n",), "skip-base", kind="flag"),
    _s("packages", "extra packages, installed once after install.d (comma separated, "
       "repeatable)", ("-p",), "packages", kind="list", parse=_packages, metavar="PKGS",
       accepts="package names (name, name=version, name:arch), comma separated",
       bad="vim curl", good="vim,curl"),
    _s("checksum", "write <image>.md5 and <image>.sha256 (the variable may name one "
       "algorithm)", ("--checksum",), "checksum", ("DIB_CHECKSUM",), "flag", _checksums, "0",
       accepts="1 (md5 and sha256), 0, md5, sha256 or md5,sha256", bad="crc32", good="sha256"),
    _s("image_size", "disk size in GiB", ("--image-size",), "image-size", ("DIB_IMAGE_SIZE",),
       "number", _positive_number, metavar="GIB", accepts="a positive number of GiB",
       default_text="computed from the tree", bad="big", good="2.5"),
    _s("image_extra_size", "MiB added to the computed disk size", ("--image-extra-size",),
       "image-extra-size", ("DIB_IMAGE_EXTRA_SIZE",), "int", _positive_int, metavar="MIB",
       accepts="a positive whole number of MiB", bad="1.5", good="512"),
    _s("root_label", "root filesystem label", ("--root-label",), "root-label",
       ("ROOT_LABEL",), parse=_root_label, metavar="LABEL", accepts="1 to 16 characters",
       default_text="cloudimg-rootfs (img-rootfs for xfs)", bad="x" * 17, good="root"),
    _s("fs_type", "root filesystem type", env=("FS_TYPE",), kind="choice",
       choices=ROOT_FS_TYPES, default="ext4", bad="ntfs", good="xfs"),
    _s("mkfs_options", "extra options for the root filesystem's mkfs", ("--mkfs-options",),
       "mkfs-options", ("MKFS_OPTS",), parse=lambda v: (_words(v), v)[1], metavar="OPTS",
       accepts=_WORDS, bad="-O 'unclosed", good="-i 8192"),
    _s("max_online_resize", "ext* root: the largest size, in filesystem blocks, it can be "
       "grown to online (mkfs -E resize=N)", ("--max-online-resize",), "max-online-resize",
       ("MAX_ONLINE_RESIZE",), "int", _positive_int, metavar="BLOCKS",
       accepts="a positive whole number of blocks", bad="huge", good="268435456"),
    _s("mkfs_journal_size", "ext3/ext4 root: journal size in MiB (mkfs -J size=N)",
       ("--mkfs-journal-size",), "mkfs-journal-size", ("DIB_JOURNAL_SIZE",), "int",
       _positive_int, metavar="MIB", accepts="a positive whole number of MiB",
       default_text="mkfs's choice", bad="0", good="64"),
    _s("block_device_config", "the block-device layout", env=("DIB_BLOCK_DEVICE_CONFIG",),
       parse=_block_device_config, accepts="inline block-device YAML or file://PATH",
       default_text="the first element's block-device-<arch>.yaml / "
                    "block-device-default.yaml", bad="file:///nonexistent/bd.yaml",
       good="- local_loop: {name: image0}"),
    _s("block_size", "sector size of the loop device", env=("DIB_BLOCK_SIZE",),
       kind="choice", choices=BLOCK_SIZES, default_text="512", bad="4k", good="4096"),
    _s("uuid_seed", "seed for the disk's filesystem UUIDs, disk id and partition GUIDs",
       env=("DIB_UUID_SEED",), accepts="any text",
       default_text="the tree's cache key (with SOURCE_DATE_EPOCH: a key of the inputs)",
       good="web-1"),
    _s("qemu_img_options", "qemu-img convert -o options", ("--qemu-img-options",),
       "qemu-img-options", ("QEMU_IMG_OPTIONS",), "options", _qemu_img_options,
       metavar="OPTS", accepts="key=value,key=value", bad="zstd", good="compat=1.1"),
    _s("qcow2_compression_type", "qcow2 compression (-u turns compression off)",
       env=("DIB_QCOW2_COMPRESSION_TYPE",), kind="choice", choices=("zstd", "zlib"),
       default="zstd", bad="gzip", good="zlib"),
    _s("install_type", "default install type of install-types elements",
       ("--install-type",), "install-type", ("DIB_DEFAULT_INSTALLTYPE",), "choice",
       choices=("source", "package"), default="source", bad="binary", good="package"),
    _s("docker_target", "repo:tag of the -t docker / -t oci image", ("--docker-target",),
       "docker-target", ("DOCKER_TARGET",), parse=_docker_target, metavar="REPO:TAG",
       accepts="repo[:tag] with a lowercase repository", default_text="<image name>:latest",
       bad="Not/Valid", good="example/base:1"),
    _s("source_date_epoch", "a reproducible build: the same inputs give the same bytes, every "
       "timestamp at most this (seconds since 1970); also the container and box outputs' "
       "creation time (docs/reproducibility.md)",
       env=("SOURCE_DATE_EPOCH",), parse=_whole, accepts="a whole number of seconds",
       default_text="unset: not reproducible, outputs made now", bad="yesterday",
       good="1700000000"),
    _s("reproducible", "a reproducible build with SOURCE_DATE_EPOCH taken from the newest "
       "input when it is not set: the elements' last commit, else their newest file "
       "(docs/reproducibility.md)", ("--reproducible",), "reproducible", ("DIB_REPRODUCIBLE",),
       "flag", **_BOOL),
    # -- where and how --------------------------------------------------------------------
    _s("image_cache", "cache directory", ("--image-cache",), "image-cache",
       ("DIB_IMAGE_CACHE",), parse=_directory, default=DEFAULT_IMAGE_CACHE, metavar="DIR",
       accepts="a directory (made if missing)", bad="/dev/null", good="/var/cache/dib"),
    _s("cache_max_size", "the cache is pruned, least recently used first, to this size "
       "before and after each build", env=("DIB_CACHE_MAX_SIZE",), parse=_size,
       default="20G", accepts="a size such as 20G or 500M", bad="plenty", good="500M"),
    _s("cache_min_free", "... and further while its filesystem has less than this free "
       "(0: off)", env=("DIB_CACHE_MIN_FREE",), parse=_size, default="5G",
       accepts="a size such as 5G, or 0", bad="lots", good="0"),
    _s("no_cache", "neither reuse nor store tree layers and finished images (downloads stay "
       "cached)", ("--no-cache",), "no-cache", ("DIB_NO_CACHE",), "flag", **_BOOL),
    _s("remote_cache", "share tree layers through an OCI registry: pull a step's layer on a "
       "local miss, push it after the step is built (docs/caching.md)", ("--remote-cache",),
       "remote-cache", ("DIB_REMOTE_CACHE",), parse=_remote_cache, metavar="URL",
       accepts="oci://HOST[:PORT]/REPO (HTTPS) or oci+http://HOST[:PORT]/REPO (plain HTTP)",
       default_text="none", bad="http://registry/dib", good="oci+http://127.0.0.1:5000/dib"),
    _s("remote_cache_strict", "a layer that cannot be pushed to the remote cache fails the "
       "build (otherwise: a warning)", ("--remote-cache-push-strict",),
       "remote-cache-push-strict", ("DIB_REMOTE_CACHE_STRICT",), "flag", **_BOOL),
    _s("remote_cache_images", "share finished images through the remote cache too (pulled "
       "when the tree and output options match, pushed after the build; 0: layers only)",
       env=("DIB_REMOTE_CACHE_IMAGES",), kind="flag", default="1", parse=_boolean,
       accepts="1 or 0 (true/false, yes/no)", bad="maybe", good="0"),
    _s("remote_cache_credentials", "the remote cache registry's credentials (else they come "
       "from REGISTRY_AUTH_FILE or ~/.docker/config.json); never logged, never passed to "
       "hooks", env=("DIB_REMOTE_CACHE_CREDENTIALS",), parse=_credentials,
       accepts="USER:PASSWORD (or USER:TOKEN)", default_text="none", bad="nocolon",
       good="ci:s3cret"),
    _s("offline", "never touch the network", ("--offline",), "offline", ("DIB_OFFLINE",),
       "flag", **_BOOL),
    _s("no_tmpfs", "do not build in a tmpfs", ("--no-tmpfs",), "no-tmpfs", ("DIB_NO_TMPFS",),
       "flag", **_BOOL),
    _s("min_tmpfs", "smallest tmpfs worth building in (GiB): with less memory to spare (half "
       "of MemAvailable less what other builds' tmpfs may still fill) the build works on disk",
       ("--min-tmpfs",), "min-tmpfs", ("DIB_MIN_TMPFS",), "number", _positive_number, "2",
       metavar="GIB", accepts="a positive number of GiB", bad="half", good="4"),
    _s("tmp_dir", "where work directories (dib_build.*) are made", env=("TMP_DIR",),
       parse=_directory, default="/tmp", accepts="a directory", bad="/dev/null",
       good="/var/tmp"),
    _s("elements_path", "extra element directories; earlier entries win over later ones and "
       "over the built-in elements", env=("ELEMENTS_PATH",), parse=_elements_path,
       accepts="directories, colon separated", default_text="built-in elements only",
       bad="/nonexistent/elements", good="/"),
    _s("logfile", "write the timestamped log here instead of <image>.d/build.log; quiets "
       "the console (unless DIB_QUIET=0)", ("--logfile",), "logfile", parse=_not_directory,
       metavar="FILE", accepts="a file path", bad="/", good="build.log"),
    _s("quiet", "no console output", env=("DIB_QUIET",), kind="flag", **_BOOL),
    _s("steps_in_sequence", "run every tree step in sequence: none beside the steps after it, "
       "even where the element's layer-inputs.yaml allows it (docs/caching.md)",
       ("--steps-in-sequence",), env=("DIB_STEPS_IN_SEQUENCE",), kind="flag", **_BOOL),
    _s("no_progress", "no live status line (step k of N, elapsed, estimate) below the log "
       "lines on a terminal: plain lines, as when the output is not a terminal",
       ("--no-progress",), env=("DIB_NO_PROGRESS",), kind="flag", **_BOOL),
    _s("overwrite", "replace an existing output instead of renaming it aside",
       env=("OVERWRITE_OLD_IMAGE",), kind="flag", **_BOOL),
    _s("keep_workdir", "leave the (unmounted) work directory for inspection",
       ("--keep-workdir",), kind="flag"),
    _s("dry_run", "print the resolved build (elements, release, mirror, outputs, cache, "
       "tmpfs) and exit without building; needs no root", ("--dry-run",), kind="flag"),
    _s("cleanup", "remove what killed builds left behind (mounts, loop devices, work dirs) "
       "and exit", ("--cleanup",), kind="flag"),
    _s("recipe", "build the images a YAML recipe describes (repeatable; takes no ELEMENT; "
       "docs/artifacts.md)", ("--recipe",), kind="list", parse=_recipe_file, metavar="FILE",
       accepts="a recipe file", bad="/nonexistent/images.yaml", good="images.yaml"),
    _s("stop_on_failure", "with --recipe: stop at the first image that fails",
       ("--stop-on-failure",), kind="flag"),
    _s("farm", "with --recipe: build the images on a Dask cluster, one task per image "
       "(docs/farm.md)", ("--farm",), env=("DIB_FARM",), parse=_farm_address,
       metavar="tcp://SCHEDULER:8786", accepts="a Dask scheduler address, "
       "tcp://HOST[:PORT] or tls://HOST[:PORT] (port 8786 unless given)",
       bad="http://scheduler", good="tcp://127.0.0.1:8786"),
    _s("farm_layer_locks", "set by a farm worker for the builds it runs: with a remote "
       "cache, a layer missing from it is built by one build of the farm at a time, the "
       "others wait and pull it (docs/farm.md)", env=("DIB_FARM_LAYER_LOCKS",),
       parse=_farm_address, accepts="the farm's Dask scheduler address",
       default_text="none", bad="scheduler:8786", good="tcp://127.0.0.1:8786"),
    # -- debugging ------------------------------------------------------------------------
    _s("debug", "show tracebacks on errors", ("--debug",), kind="flag"),
    _s("debug_traceback", "as --debug", env=("DIB_DEBUG_TRACEBACK",), kind="flag", **_BOOL),
    _s("break_points", "open a debug shell there (docs/debugging.md)", env=("break",),
       parse=_break_points, accepts="break points, comma separated: "
       + ", ".join(BREAK_POINTS), bad="before-lunch", good="after-error"),
    _s("break_cmd", "the shell a break opens", env=("break_cmd",), parse=_shell_command,
       default="bash", accepts="a command line", bad="'", good="zsh -i"),
    _s("break_outside_target", "open break shells on the host even for in-chroot phases",
       env=("break_outside_target",), kind="flag", **_BOOL),
    # -- boot test ------------------------------------------------------------------------
    _s("boot_test", "boot the first disk output under QEMU afterwards and fail unless the "
       "serial console shows a login prompt (or DIB_BOOT_TEST_EXPECT); KVM if it works, else "
       "TCG, and TCG again when the console stalls under KVM", ("--boot-test",),
       "boot-test", kind="flag"),
    _s("boot_test_accel", "QEMU accelerator of --boot-test", env=("DIB_BOOT_TEST_ACCEL",),
       kind="choice", choices=("auto", "kvm", "tcg"), default="auto", bad="hvf", good="tcg"),
    _s("boot_test_timeout", "seconds --boot-test waits for the pattern",
       env=("DIB_BOOT_TEST_TIMEOUT",), kind="number", parse=_positive_number, default="300",
       accepts="a positive number of seconds", bad="soon", good="600"),
    _s("boot_test_stall", "seconds without console output under an automatically chosen KVM "
       "after which --boot-test boots again under TCG",
       env=("DIB_BOOT_TEST_STALL",), kind="number", parse=_positive_number, default="45",
       accepts="a positive number of seconds", bad="-1", good="90"),
    _s("boot_test_expect", "regular expression --boot-test waits for",
       env=("DIB_BOOT_TEST_EXPECT",), parse=_regex, accepts="a Python regular expression",
       default_text="a login prompt", bad="login(", good="ready$"),
    _s("boot_test_firmware", "firmware of --boot-test (auto: UEFI when the disk has an ESP)",
       env=("DIB_BOOT_TEST_FIRMWARE",), kind="choice", choices=("auto", "bios", "uefi"),
       default="auto", bad="coreboot", good="bios"),
    # -- container outputs (-t docker, -t oci) ----------------------------------------------
    _s("container_cmd", "the image's Cmd", env=("DIB_CONTAINER_CMD",), parse=_words,
       accepts=_WORDS, default_text="/bin/bash (else /bin/sh)", bad="'unclosed",
       good="/bin/sleep 'a b'"),
    _s("container_entrypoint", "the image's Entrypoint", env=("DIB_CONTAINER_ENTRYPOINT",),
       parse=_words, accepts=_WORDS, bad="\"unclosed", good="/init"),
    _s("container_env", "the image's Env", env=("DIB_CONTAINER_ENV",), parse=_assignments,
       accepts="NAME=VALUE words", bad="NOVALUE", good="A=1 B='x y'"),
    _s("container_workdir", "the image's WorkingDir", env=("DIB_CONTAINER_WORKDIR",),
       accepts="any text", good="/srv"),
    _s("container_user", "the image's User", env=("DIB_CONTAINER_USER",),
       parse=_container_user, accepts="user[:group], names or ids", bad="a b",
       good="1000:1000"),
    _s("container_labels", "extra image labels", env=("DIB_CONTAINER_LABELS",),
       parse=_labels, accepts="key=value words", bad="=x", good="team=os"),
    # -- Vagrant box (-t vagrant) ---------------------------------------------------------
    _s("vagrant_user", "the SSH user of the box", env=("DIB_VAGRANT_USER",),
       parse=_user_name, default="vagrant", accepts="a user name", bad="Bad User",
       good="ops"),
    _s("vagrant_libvirt_driver", "vagrant-libvirt driver", env=("DIB_VAGRANT_LIBVIRT_DRIVER",),
       kind="choice", choices=("kvm", "qemu"), default="kvm", bad="xen", good="qemu"),
    _s("vagrant_memory", "MiB of memory of the box", env=("DIB_VAGRANT_MEMORY",), kind="int",
       parse=_positive_int, default="1024", accepts="a positive whole number of MiB",
       bad="1G", good="2048"),
    _s("vagrant_cpus", "CPUs of the box", env=("DIB_VAGRANT_CPUS",), kind="int",
       parse=_positive_int, default="2", accepts="a positive whole number", bad="0",
       good="4"),
    _s("vagrant_vagrantfile", "your own Vagrantfile for the box",
       env=("DIB_VAGRANT_VAGRANTFILE",), parse=_existing_file, accepts="a file",
       default_text="generated", bad="/nonexistent/Vagrantfile", good="/etc/passwd"),
    # -- libvirt domain (<image>.xml, disk outputs) ---------------------------------------
    _s("libvirt_xml", "write <image>.xml", env=("DIB_LIBVIRT_XML",), kind="flag",
       default="1", **{**_BOOL, "good": "0"}),
    _s("libvirt_name", "domain name", env=("DIB_LIBVIRT_NAME",), parse=_domain_name,
       accepts="a name without '/'", default_text="the image's base name", bad="a/b",
       good="web"),
    _s("libvirt_domain_type", "domain type", env=("DIB_LIBVIRT_DOMAIN_TYPE",), kind="choice",
       choices=("kvm", "qemu"), default="kvm", bad="xen", good="qemu"),
    _s("libvirt_firmware", "firmware (auto: UEFI when the disk has an ESP)",
       env=("DIB_LIBVIRT_FIRMWARE",), parse=_libvirt_firmware, default="auto",
       accepts="auto, bios, uefi (or efi)", bad="coreboot", good="efi"),
    _s("libvirt_machine", "QEMU machine type", env=("DIB_LIBVIRT_MACHINE",), parse=_machine,
       accepts="a machine type name", default_text="q35 (UEFI), pc (BIOS)", bad="q 35",
       good="q35"),
    _s("libvirt_memory", "MiB of memory", env=("DIB_LIBVIRT_MEMORY",), kind="int",
       parse=_positive_int, default="1024", accepts="a positive whole number of MiB",
       bad="1G", good="512"),
    _s("libvirt_vcpus", "virtual CPUs", env=("DIB_LIBVIRT_VCPUS",), kind="int",
       parse=_positive_int, default="2", accepts="a positive whole number", bad="-1",
       good="1"),
    _s("libvirt_network", "network interface", env=("DIB_LIBVIRT_NETWORK",),
       parse=_libvirt_network, default="default", accepts="a network name or bridge:NAME",
       bad="bridge:", good="bridge:br0"),
    _s("libvirt_serial", "serial console", env=("DIB_LIBVIRT_SERIAL",),
       parse=_libvirt_serial, default="pty", accepts="pty or file:PATH", bad="tcp:1",
       good="file:/tmp/console.log"),
    _s("libvirt_template", "your own domain template", env=("DIB_LIBVIRT_TEMPLATE",),
       parse=_existing_file, accepts="a file", default_text="built in",
       bad="/nonexistent.xml", good="/etc/passwd"),
)

BY_NAME: Dict[str, Setting] = {s.name: s for s in SETTINGS}
BY_RECIPE_KEY: Dict[str, Setting] = {s.recipe: s for s in SETTINGS if s.recipe}


# -- the parsed configuration -----------------------------------------------------------------

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
    image_cache: Path = Path(DEFAULT_IMAGE_CACHE).expanduser()
    offline: bool = False
    use_tmpfs: bool = True
    min_tmpfs_gib: float = 2.0
    logfile: Optional[Path] = None
    quiet: bool = False
    #: draw the live status line when the console is a terminal (--no-progress: False)
    progress: bool = True
    #: declared steps may run beside the steps after them (--steps-in-sequence: False)
    steps_beside: bool = True
    root_label: Optional[str] = None
    fs_type: str = "ext4"
    mkfs_options: str = ""
    #: --max-online-resize (blocks) and --mkfs-journal-size (MiB): ext* root mkfs options
    max_online_resize: Optional[int] = None
    mkfs_journal_size_mib: Optional[int] = None
    qemu_img_options: str = ""
    qcow2_compression_type: str = "zstd"
    install_type: str = "source"
    docker_target: Optional[str] = None
    break_points: Tuple[str, ...] = ()
    break_cmd: str = "bash"
    break_outside_target: bool = False
    elements_path: str = ""
    tmp_dir: Path = Path("/tmp")
    overwrite: bool = False
    keep_workdir: bool = False
    no_cache: bool = False
    #: --remote-cache: the OCI registry that shares layers (None: no remote cache)
    remote_cache: Optional["RemoteURL"] = None
    remote_cache_strict: bool = False
    remote_cache_images: bool = True
    #: DIB_REMOTE_CACHE_CREDENTIALS (never in repr, logs or the hooks' environment)
    remote_cache_credentials: Optional[Tuple[str, str]] = field(default=None, repr=False)
    #: DIB_CACHE_MAX_SIZE / DIB_CACHE_MIN_FREE: the cache is pruned (least recently used
    #: first) to at most this size, and further while its filesystem has less free than that
    cache_max_bytes: int = 20 << 30
    cache_min_free_bytes: int = 5 << 30
    #: DIB_BLOCK_DEVICE_CONFIG as YAML text (a file:// one already read); None: the elements'
    block_device_config: Optional[str] = None
    block_size: Optional[int] = None
    uuid_seed: str = ""
    source_date_epoch: Optional[int] = None
    #: --reproducible: derive source_date_epoch from the inputs when it is not given
    reproducible: bool = False
    #: where source_date_epoch came from (SOURCE_DATE_EPOCH, or what --reproducible took)
    source_date_epoch_origin: str = ""
    boot_test: bool = False
    boot_test_accel: str = "auto"
    boot_test_timeout: float = 300.0
    boot_test_stall: float = 45.0
    boot_test_expect: Optional[str] = None
    boot_test_firmware: str = "auto"
    #: the -t docker / oci, -t vagrant and libvirt XML settings (None: their defaults)
    container: Optional["ContainerSettings"] = None
    vagrant: Optional["VagrantSettings"] = None
    domain: Optional["DomainSettings"] = None
    debug: bool = False
    dry_run: bool = False
    #: --farm / DIB_FARM: the Dask scheduler a --recipe is built on (None: this machine)
    farm: Optional[str] = None
    #: DIB_FARM_LAYER_LOCKS: the scheduler whose locks a farm worker's build takes
    farm_layer_locks: Optional[str] = None
    action: str = "build"
    argv: Tuple[str, ...] = ()
    #: the caller's environment as hooks should see it (after ``-c``); the engine reads its
    #: settings from the fields above, never from here
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

    @property
    def root_mkfs_options(self) -> str:
        """``--mkfs-options`` plus what --max-online-resize / --mkfs-journal-size add."""
        extra = []
        if self.max_online_resize is not None:
            extra.append(f"-E resize={self.max_online_resize}")
        if self.mkfs_journal_size_mib is not None:
            extra.append(f"-J size={self.mkfs_journal_size_mib}")
        return " ".join([self.mkfs_options, *extra]).strip()


# -- the command line -------------------------------------------------------------------------

def _help(s: Setting) -> str:
    text = s.help
    if s.env:
        text += f" ({', '.join(s.env)})"
    default = s.default_text or (s.default if s.kind != "flag" else None)
    if default:
        text += f"; default {default}"
    return text.replace("%", "%%")


def add_argument(p: argparse.ArgumentParser, s: Setting, **kw: Any) -> None:
    """``s`` as an option of ``p`` (its value is None / False / [] / 0 when not given)."""
    if s.kind == "positional":
        p.add_argument(s.name, nargs="*", metavar=s.metavar, help=s.help)
        return
    action = {"flag": "store_true", "count": "count", "list": "append"}.get(s.kind, "store")
    opts: Dict[str, Any] = {"dest": s.name, "action": action, "help": _help(s)}
    if action in ("store", "append"):
        opts["metavar"] = s.metavar or (s.choices and "{" + ",".join(s.choices) + "}") or \
            "VALUE"
    if action == "count":
        opts["default"] = 0
    opts.update(kw)
    p.add_argument(*s.flags, **opts)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="disk-image-create",
        description="Build a disk image from elements (diskimage-builder compatible).",
        epilog="Environment: ELEMENTS_PATH, DIB_* variables (the variable of each option is "
               "in parentheses; docs/cli.md lists every one); break=before-<phase>|"
               "after-<phase>|after-error opens a debug shell.")
    for s in SETTINGS:
        if s.flags or s.kind == "positional":
            add_argument(p, s)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def setting_value(s: Setting, given: Any, env: Mapping[str, str]) -> Any:
    """The value of ``s``: ``given`` on the command line (None, False, [] or 0 when it was
    not), else its first variable that is set, else the default; parsed and validated
    (ConfigError naming where it came from)."""
    if s.kind == "count":  # -x -x and DIB_DEBUG_TRACE=2: the larger
        return max(given or 0, _from_env(s, env) or 0)
    if given is True:  # a bare flag: what its variable would be at 1
        return True if s.parse is _text else s.parse("1")
    if isinstance(given, list) and given:  # repeated: -t a -t b is -t a,b
        given = ",".join(given)
    if isinstance(given, str):
        return s.value(given, s.flags[0])
    from_env = _from_env(s, env)
    if from_env is not None:
        return from_env
    if s.default is None:
        return False if s.kind == "flag" and s.parse is _text else None
    return s.value(s.default, f"the default of {s.sources}")


def _from_env(s: Setting, env: Mapping[str, str]) -> Any:
    for name in s.env:
        text = env.get(name, "")
        if text.strip():
            return s.value(text.strip(), name)
    return None


def parse_args(argv: List[str], environ: Mapping[str, str]) -> BuildConfig:
    """Parse disk-image-create's command line and environment into a BuildConfig; every
    value is checked here (raises ConfigError naming the flag or variable)."""
    args = _parser().parse_args(argv)
    env: Dict[str, str] = {} if args.clear_env else dict(environ)
    if args.cleanup:
        tmp = setting_value(BY_NAME["tmp_dir"], None, env)
        return BuildConfig(elements=(), action="cleanup", tmp_dir=tmp, env=env)
    if not args.elements:
        raise ConfigError("no elements given", hint="e.g. disk-image-create vm debian -o image")
    v = {s.name: setting_value(s, getattr(args, s.name, None), env) for s in SETTINGS
         if s.kind != "positional"}
    return _build_config(v, args.elements, argv, env)


def _build_config(v: Dict[str, Any], elements: Sequence[str], argv: Sequence[str],
                  env: Dict[str, str]) -> BuildConfig:
    from dib.outputs.container import ContainerSettings
    from dib.outputs.libvirt import DomainSettings
    from dib.outputs.vagrant import VagrantSettings

    formats: Tuple[ImageFormat, ...] = v["types"]
    if v["boot_test"] and not any(f.is_qemu_disk for f in formats):
        raise ConfigError("--boot-test needs a disk image output (qcow2, raw, vmdk, ...)",
                          hint="add -t qcow2")
    image_name: str = v["image_name"]
    for ext in (formats[0].suffix, formats[0].value) if len(formats) == 1 else ():
        if image_name.endswith("." + ext):
            image_name = image_name[: -len(ext) - 1]
            break
    fs_type = v["fs_type"]
    for opt, what in (("max_online_resize", "--max-online-resize"),
                      ("mkfs_journal_size", "--mkfs-journal-size")):
        if v[opt] is not None and not fs_type.startswith("ext") \
                or (opt == "mkfs_journal_size" and v[opt] is not None and fs_type == "ext2"):
            raise ConfigError(f"{what} applies to an ext3/ext4 root filesystem, not "
                              f"FS_TYPE={fs_type}", hint=f"drop {what} or use FS_TYPE=ext4")
    if v["root_label"] and fs_type in ("xfs", "vfat") and len(v["root_label"]) > (
            12 if fs_type == "xfs" else 11):
        raise ConfigError(f"--root-label: '{v['root_label']}' is too long for {fs_type}",
                          hint="xfs labels take at most 12 characters, vfat 11")
    labels = v["container_labels"] or ()
    return BuildConfig(
        elements=tuple(elements),
        arch=v["arch"] or host_arch(),
        image_name=os.path.abspath(image_name),
        formats=formats,
        trace=v["trace"],
        compress=not v["uncompressed"],
        skip_base=v["skip_base"],
        packages=v["packages"] or (),
        checksums=v["checksum"] if isinstance(v["checksum"], tuple) else (),
        image_size_gib=v["image_size"],
        image_extra_size_mib=v["image_extra_size"],
        image_cache=v["image_cache"],
        offline=bool(v["offline"]),
        use_tmpfs=not v["no_tmpfs"],
        min_tmpfs_gib=v["min_tmpfs"],
        logfile=v["logfile"],
        quiet=(bool(v["logfile"]) and env.get("DIB_QUIET", "").strip() != "0")
        or bool(v["quiet"]),
        progress=not v["no_progress"],
        steps_beside=not v["steps_in_sequence"],
        root_label=v["root_label"],
        fs_type=fs_type,
        mkfs_options=v["mkfs_options"] or "",
        max_online_resize=v["max_online_resize"],
        mkfs_journal_size_mib=v["mkfs_journal_size"],
        qemu_img_options=v["qemu_img_options"] or "",
        qcow2_compression_type=v["qcow2_compression_type"],
        install_type=v["install_type"],
        docker_target=v["docker_target"],
        break_points=v["break_points"] or (),
        break_cmd=v["break_cmd"],
        break_outside_target=bool(v["break_outside_target"]),
        elements_path=v["elements_path"] or "",
        tmp_dir=v["tmp_dir"],
        overwrite=bool(v["overwrite"]),
        keep_workdir=v["keep_workdir"],
        no_cache=bool(v["no_cache"]),
        remote_cache=v["remote_cache"],
        remote_cache_strict=bool(v["remote_cache_strict"]),
        remote_cache_images=bool(v["remote_cache_images"]),
        remote_cache_credentials=v["remote_cache_credentials"],
        cache_max_bytes=v["cache_max_size"],
        cache_min_free_bytes=v["cache_min_free"],
        block_device_config=v["block_device_config"],
        block_size=int(v["block_size"]) if v["block_size"] else None,
        uuid_seed=v["uuid_seed"] or "",
        source_date_epoch=v["source_date_epoch"],
        reproducible=bool(v["reproducible"]),
        source_date_epoch_origin="SOURCE_DATE_EPOCH" if v["source_date_epoch"] is not None
        else "",
        boot_test=v["boot_test"],
        boot_test_accel=v["boot_test_accel"],
        boot_test_timeout=v["boot_test_timeout"],
        boot_test_stall=v["boot_test_stall"],
        boot_test_expect=v["boot_test_expect"],
        boot_test_firmware=v["boot_test_firmware"],
        container=ContainerSettings(
            v["container_cmd"] or (), v["container_entrypoint"] or (),
            v["container_env"] or (), v["container_workdir"] or "",
            v["container_user"] or "", dict(labels)),
        vagrant=VagrantSettings(v["vagrant_user"], v["vagrant_libvirt_driver"],
                                v["vagrant_memory"], v["vagrant_cpus"],
                                v["vagrant_vagrantfile"]),
        domain=DomainSettings(
            v["libvirt_name"] or os.path.basename(os.path.abspath(image_name)),
            v["libvirt_memory"], v["libvirt_vcpus"], v["libvirt_domain_type"],
            v["libvirt_firmware"], v["libvirt_machine"] or "", v["libvirt_network"],
            v["libvirt_serial"],
            v["libvirt_template"], bool(v["libvirt_xml"])),
        debug=v["debug"] or bool(v["debug_traceback"]),
        dry_run=v["dry_run"],
        farm=v["farm"],
        farm_layer_locks=v["farm_layer_locks"],
        argv=tuple(argv),
        env=env,
    )


#: variables of the remote cache: no input of any layer (where a layer is shared does not
#: change it), never passed to hooks (the password least of all)
REMOTE_CACHE_PREFIX = "DIB_REMOTE_CACHE"


def group_values(env: Mapping[str, str], prefix: str) -> Dict[str, Any]:
    """The parsed values of the settings named ``<prefix>_*`` from ``env`` alone (for the
    settings classes of dib.outputs, whose ``from_env`` use the same table)."""
    return {s.name[len(prefix) + 1:]: setting_value(s, None, env) for s in SETTINGS
            if s.name.startswith(prefix + "_")}


# -- before any work --------------------------------------------------------------------------

def _writable_dir(path: Path) -> Optional[str]:
    """None if files can be made in ``path`` (or it can be created); else why not."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory"
    try:
        tempfile.TemporaryDirectory(prefix=".dib-probe-", dir=probe).cleanup()
    except OSError as exc:
        return f"cannot create files in {probe} ({exc.strerror})"
    return None


def preflight(cfg: BuildConfig) -> None:
    """Check every place the build writes -- the output directory, --logfile, TMP_DIR and
    the image cache -- before any work starts (nothing is left behind)."""
    places = [(Path(cfg.image_name).parent, "-o", cfg.image_name, "the output directory"),
              (cfg.tmp_dir, "TMP_DIR", os.fspath(cfg.tmp_dir), "the work directory's parent"),
              (cfg.image_cache, "--image-cache / DIB_IMAGE_CACHE", os.fspath(cfg.image_cache),
               "the image cache")]
    if cfg.logfile is not None:
        places.insert(1, (cfg.logfile.parent, "--logfile", os.fspath(cfg.logfile),
                          "the log file's directory"))
    for path, source, given, what in places:
        why = _writable_dir(path)
        if why:
            raise ConfigError(f"{source} {given}: cannot write {what}: {why}",
                              hint=f"point {source} at a writable place")


def describe(cfg: BuildConfig) -> str:
    """One line for the log: what is being built."""
    return (f"elements: {' '.join(cfg.elements)}; arch {cfg.arch}; output "
            f"{cfg.image_name} [{','.join(f.value for f in cfg.formats)}]; "
            f"argv: {shlex.join(cfg.argv)}")


# -- the reference in docs/cli.md ---------------------------------------------------------------

def reference_markdown() -> str:
    """The settings table as docs/cli.md shows it (a unit test keeps the two equal)."""
    rows = ["| option | variable | recipe key | accepts | default | meaning |",
            "|---|---|---|---|---|---|"]

    def code(items: Sequence[str]) -> str:
        return ", ".join(f"`{i}`" for i in items)

    for s in SETTINGS:
        flags = [f"{f} {s.metavar or 'VALUE'}" if s.kind not in ("flag", "count") else f
                 for f in s.flags]
        if s.kind == "positional":
            flags = [s.metavar or s.name]
        accepts = "" if s.kind == "flag" and not s.env else s.accepted
        if s.kind == "flag" and not s.env:
            accepts = "(a flag)"
        default = s.default_text or ("" if s.kind == "flag" else s.default or "")
        cells = [code(flags), code(s.env), code([s.recipe] if s.recipe else []),
                 accepts, f"`{default}`" if default and not s.default_text else default,
                 s.help]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"
