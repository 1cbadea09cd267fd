"""The Debian-family bootstrap behind the ``debootstrap`` element, with a content-keyed cache.

``python -m dib.bootstrap`` is run by ``debootstrap/root.d/08-debootstrap`` on the host. It

1. reads its settings from the hook environment (:func:`config_from_env`, pure);
2. chooses the mirrors (:mod:`dib.mirror`) and the apt sources the image gets;
3. looks the bootstrap up in the cache under ``$DIB_IMAGE_CACHE`` (:mod:`dib.cache`), keyed
   by everything that changes the result (:meth:`BootstrapConfig.key_inputs`): distro,
   release, arch, the exact source lines (so mirror, security mirror and components),
   keyring content, variant, included packages, extra arguments, tool and tool version;
4. on a hit extracts the zstd tarball into ``$TARGET_ROOT``; on a miss runs mmdebstrap (when
   installed) or debootstrap into it and stores the result; with ``DIB_OFFLINE`` a miss fails
   at once, naming what is missing;
5. writes the image's apt sources (``/etc/apt/sources.list.d/<name>.list``, dib's layout) and
   the chosen mirrors as ``environment.d`` for later hooks.

mmdebstrap is given every source line (main, -updates, -security), so its ``apt-get update``
is the build's only one when the bootstrap really ran; the package lists it fetched are kept
(``--skip=cleanup/apt/lists``) and flagged fresh for the dpkg element. A cached bootstrap
carries no lists: the dpkg element runs one update (or, offline, uses its cached lists).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from dib import cmd, mirror
from dib.cache import ArtifactCache, cache_key, describe_inputs, epoch_inputs, file_sha256
from dib.config import DEFAULT_IMAGE_CACHE
from dib.errors import ConfigError, DibError
from dib.log import helper_main

log = logging.getLogger("dib.bootstrap")

#: packages every bootstrap gets on top of the minbase variant (dib uses apt,tzdata too)
BASE_INCLUDE = ("apt", "tzdata")
#: dpkg arch -> the binfmt_misc entry qemu-user-static registers for it
QEMU_BINFMT = {"arm64": "qemu-aarch64", "armhf": "qemu-arm", "armel": "qemu-arm",
               "ppc64el": "qemu-ppc64le", "s390x": "qemu-s390x", "riscv64": "qemu-riscv64",
               "i386": "qemu-i386", "amd64": "qemu-x86_64", "mips64el": "qemu-mips64el"}
#: arches a host runs natively besides its own
NATIVE_EXTRA = {"amd64": ("i386",), "arm64": ("armhf", "armel")}
#: state the dpkg element reads (inside the tree)
STATE_DIR = "var/lib/dib-build"
LISTS_FRESH = f"{STATE_DIR}/lists-fresh"
MIRROR_ENV_FILE = "environment.d/15-dib-selected-mirrors.bash"
#: what the cached tarball leaves out (relative to the tree, tar --exclude patterns)
TAR_EXCLUDES = ("./var/lib/apt/lists/*", "./var/cache/apt/*.bin",
                "./var/cache/apt/archives/*.deb", "./tmp/*", "./proc/*", "./sys/*")


@dataclass(frozen=True)
class BootstrapConfig:
    distro: str
    release: str
    arch: str
    tool: str
    tool_version: str
    components: Tuple[str, ...]
    #: the lines the bootstrap tool gets; empty = the tool's default mirror
    bootstrap_lines: Tuple[str, ...]
    #: the image's sources, (file name, line); empty = derive from what the tool wrote
    sources: Tuple[Tuple[str, str], ...]
    choice: mirror.MirrorChoice
    include: Tuple[str, ...] = BASE_INCLUDE
    keyring: str = ""
    keyring_sha256: str = ""
    extra_args: Tuple[str, ...] = ()
    script: str = ""
    variant: str = "minbase"
    offline: bool = False
    use_cache: bool = True
    max_age_days: float = 7.0
    #: a reproducible build's SOURCE_DATE_EPOCH, given to the tool (mmdebstrap, dpkg and the
    #: maintainer scripts it runs use it: shadow's last-change dates); "" unset
    source_date_epoch: str = ""

    def key_inputs(self) -> Dict[str, object]:
        """Everything that changes the bootstrap result -- and nothing else."""
        return {**epoch_inputs(self.source_date_epoch),
            "distro": self.distro, "release": self.release, "arch": self.arch,
            "tool": self.tool, "tool_version": self.tool_version,
            "variant": self.variant, "components": list(self.components),
            "sources": sorted(self.bootstrap_lines),
            "keyring_sha256": self.keyring_sha256,
            "include": sorted(set(self.include)),
            "extra_args": list(self.extra_args), "script": self.script,
        }

    @property
    def key(self) -> str:
        return cache_key("bootstrap", self.key_inputs())


# -- configuration ---------------------------------------------------------------------------

def _split(value: str) -> Tuple[str, ...]:
    return tuple(x for x in re.split(r"[,\s]+", value or "") if x)


def choose_tool(env: Mapping[str, str], have_mmdebstrap: bool) -> str:
    """mmdebstrap when installed, as dib 3.43 -- unless debootstrap-only settings are given."""
    forced = env.get("DIB_DEBOOTSTRAP_TOOL", "").strip()
    if forced:
        if forced not in ("mmdebstrap", "debootstrap"):
            raise ConfigError(f"DIB_DEBOOTSTRAP_TOOL={forced}: use mmdebstrap or debootstrap")
        return forced
    if env.get("DIB_DEBOOTSTRAP_EXTRA_ARGS", "").strip() or \
            env.get("DIB_DEBIAN_DEBOOTSTRAP_SCRIPT", "").strip():
        return "debootstrap"
    return "mmdebstrap" if have_mmdebstrap else "debootstrap"


def config_from_env(env: Mapping[str, str], *, host_id: str,
                    host_sources: Sequence[mirror.SourceEntry], tool: str,
                    tool_version: str, keyring_sha256: str = "") -> BootstrapConfig:
    """Build the configuration from hook variables and host facts (no I/O)."""
    distro = env.get("DISTRO_NAME", "").strip()
    release = env.get("DIB_RELEASE", "").strip()
    arch = env.get("ARCH", "").strip()
    for name, value in (("DISTRO_NAME", distro), ("DIB_RELEASE", release), ("ARCH", arch)):
        if not value:
            raise ConfigError(f"debootstrap: {name} is not set",
                              hint="the operating-system element (debian-minimal, "
                                   "ubuntu-minimal, ...) sets it")
    comps = mirror.components(env)
    choice = mirror.select_mirrors(distro, env, host_id, host_sources)

    sources: Tuple[Tuple[str, str], ...] = ()
    if env.get("DIB_APT_SOURCES_CONF", "").strip():
        try:
            sources = tuple(mirror.parse_sources_conf(env["DIB_APT_SOURCES_CONF"]))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    elif choice.mirror:
        sources = tuple(mirror.sources_conf(
            distro, release, comps, choice,
            ubuntu_dists=_split(env.get("DIB_UBUNTU_MIRROR_DISTS", "updates,security,backports")),
            security_subpath=env.get("DIB_DEBIAN_SECURITY_SUBPATH", "")))

    keyring = (env.get("DIB_APT_KEYRING") or env.get("DIB_DEBIAN_KEYRING") or "").strip()
    extra = env.get("DIB_DEBOOTSTRAP_EXTRA_ARGS", "") if tool == "debootstrap" \
        else env.get("DIB_MMDEBSTRAP_EXTRA_ARGS", "")
    try:
        max_age = float(env.get("DIB_BOOTSTRAP_CACHE_MAX_AGE", "7") or 7)
    except ValueError:
        raise ConfigError("DIB_BOOTSTRAP_CACHE_MAX_AGE must be a number of days") from None
    return BootstrapConfig(
        distro=distro, release=release, arch=arch, tool=tool, tool_version=tool_version,
        components=comps,
        bootstrap_lines=tuple(line for _, line in sources),
        sources=sources, choice=choice,
        include=tuple(dict.fromkeys(BASE_INCLUDE + _split(env.get("DIB_DEBOOTSTRAP_INCLUDE", "")))),
        keyring=keyring, keyring_sha256=keyring_sha256,
        extra_args=tuple(shlex.split(extra)),
        script=env.get("DIB_DEBIAN_DEBOOTSTRAP_SCRIPT", "").strip(),
        offline=env.get("DIB_OFFLINE", "").strip() not in ("", "0"),
        use_cache=env.get("DIB_BOOTSTRAP_CACHE", "1").strip() not in ("0", "false", "no"),
        max_age_days=max_age,
        source_date_epoch=env.get("SOURCE_DATE_EPOCH", "").strip(),
    )


def tool_env(cfg: BootstrapConfig) -> Dict[str, str]:
    """The tool's environment: the clean one, and a reproducible build's epoch."""
    return cmd.base_env({"SOURCE_DATE_EPOCH": cfg.source_date_epoch}
                        if cfg.source_date_epoch else None)


def tool_argv(cfg: BootstrapConfig, target: Path) -> List[str]:
    """The bootstrap command line."""
    keyring = [f"--keyring={cfg.keyring}"] if cfg.keyring else []
    if cfg.tool == "mmdebstrap":
        return ["mmdebstrap", f"--variant={cfg.variant}",
                f"--components={','.join(cfg.components)}",
                f"--architectures={cfg.arch}", f"--include={','.join(cfg.include)}",
                "--skip=cleanup/apt/lists", *keyring, *cfg.extra_args,
                cfg.release, os.fspath(target), *cfg.bootstrap_lines]
    main = mirror.mirror_of(mirror.parse_one_line("\n".join(cfg.bootstrap_lines))) or ""
    return ["debootstrap", f"--variant={cfg.variant}",
            f"--components={','.join(cfg.components)}", f"--arch={cfg.arch}",
            f"--include={','.join(cfg.include)}", *keyring, *cfg.extra_args,
            cfg.release, os.fspath(target), *([main] if main else []),
            *([cfg.script] if cfg.script else [])]


# -- foreign architectures -------------------------------------------------------------------

def check_foreign_arch(arch: str, host: str, binfmt_dir: Path = Path("/proc/sys/fs/binfmt_misc"),
                       ) -> Optional[Path]:
    """None when ``arch`` runs natively; else the binfmt entry that makes it run.

    Raises a DibError with the packages to install when the host cannot run ``arch``.
    """
    if arch == host or arch in NATIVE_EXTRA.get(host, ()):
        return None
    name = QEMU_BINFMT.get(arch)
    if name is None:
        raise DibError(f"cannot build for architecture '{arch}' on this {host} host: "
                       "no qemu-user emulation is known for it")
    entry = binfmt_dir / name
    try:
        enabled = entry.read_text().splitlines()[0].strip() == "enabled"
    except (OSError, IndexError):
        enabled = False
    if not enabled:
        raise DibError(
            f"building for {arch} on a {host} host needs qemu-user emulation through "
            f"binfmt_misc, but {entry} is missing or disabled",
            hint="apt-get install qemu-user-static binfmt-support (and make sure "
                 "binfmt_misc is mounted: mount -t binfmt_misc none /proc/sys/fs/binfmt_misc)")
    return entry


def binfmt_interpreter(entry: Path) -> Tuple[str, bool]:
    """(interpreter path, fix-binary flag) of a binfmt_misc entry."""
    interp, flags = "", ""
    for line in entry.read_text().splitlines():
        if line.startswith("interpreter "):
            interp = line.split(None, 1)[1].strip()
        elif line.startswith("flags:"):
            flags = line.split(":", 1)[1].strip()
    return interp, "F" in flags


# -- the work --------------------------------------------------------------------------------

def _tool_version(tool: str) -> str:
    try:
        return cmd.output([tool, "--version"]).splitlines()[0].strip()
    except (DibError, IndexError):
        return "unknown"


def _write_tarball(root: Path, dest: Path) -> None:
    cmd.run(["tar", "-C", root, "--numeric-owner", "--xattrs", "--xattrs-include=*",
             "--one-file-system", *[f"--exclude={x}" for x in TAR_EXCLUDES],
             "-I", "zstd -T0 -3 -q", "-cf", dest, "."])


def _extract(tarball: str, root: Path) -> None:
    cmd.run(["tar", "-C", root, "--numeric-owner", "--xattrs", "--xattrs-include=*",
             "-I", "zstd -q", "-xpf", tarball])


def _normalise(root: Path) -> None:
    """What the tool leaves that the image must not keep: the host's resolv.conf and
    hostname (mmdebstrap copies them in)."""
    for rel in ("etc/resolv.conf", "etc/hostname"):
        p = root / rel
        if p.exists() or p.is_symlink():
            p.unlink()


def _same_lines(a: Sequence[str], b: Sequence[str]) -> bool:
    def norm(xs: Sequence[str]) -> List[str]:
        return sorted(" ".join(x.split()) for x in xs)
    return norm(a) == norm(b)


def write_sources(root: Path, sources: Sequence[Tuple[str, str]]) -> None:
    """The image's apt sources, dib's layout: one ``sources.list.d/<name>.list`` each."""
    etc = root / "etc" / "apt"
    (etc / "sources.list.d").mkdir(parents=True, exist_ok=True)
    if (etc / "sources.list").exists():
        (etc / "sources.list").unlink()
    for f in (etc / "sources.list.d").iterdir():
        if f.suffix in (".list", ".sources"):
            f.unlink()
    for name, line in sources:
        (etc / "sources.list.d" / f"{name}.list").write_text(line + "\n")


def _install_keyring(root: Path, keyring: str) -> None:
    """A custom keyring must verify the image's own apt updates too."""
    src = Path(keyring)
    if src.is_dir():
        return
    armored = src.read_bytes()[:64].lstrip().startswith(b"-----BEGIN")
    dest = root / "etc/apt/trusted.gpg.d" / ("dib-keyring" + (".asc" if armored else ".gpg"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    dest.chmod(0o644)


def _mirror_env(choice: mirror.MirrorChoice, sources: Sequence[Tuple[str, str]]) -> str:
    main = choice.mirror or mirror.mirror_of(
        mirror.parse_one_line("\n".join(line for _, line in sources))) or ""
    sec = choice.security or mirror.mirror_of(
        mirror.parse_one_line("\n".join(line for _, line in sources)), security=True) or ""
    out = "# written by dib.bootstrap: the mirrors this build uses\n"
    if main:
        out += f"export DIB_DISTRIBUTION_MIRROR=${{DIB_DISTRIBUTION_MIRROR:-{shlex.quote(main)}}}\n"
    if sec:
        out += ("export DIB_DEBIAN_SECURITY_MIRROR="
                f"${{DIB_DEBIAN_SECURITY_MIRROR:-{shlex.quote(sec)}}}\n")
    return out


def _offline_miss(cfg: BootstrapConfig, cache: ArtifactCache) -> DibError:
    return DibError(
        f"offline build: no cached bootstrap for {cfg.distro} {cfg.release} {cfg.arch} "
        f"in {cache.root} (key {cfg.key[:12]}; inputs: {describe_inputs(cfg.key_inputs())})",
        hint="run the same build once without --offline (DIB_OFFLINE) to fill the cache")


def run(env: Mapping[str, str]) -> None:
    target = Path(env.get("TARGET_ROOT", ""))
    if not env.get("TARGET_ROOT") or not target.is_dir():
        raise ConfigError("debootstrap: TARGET_ROOT is not a directory")
    cache_root = Path(env.get("DIB_IMAGE_CACHE") or os.path.expanduser(DEFAULT_IMAGE_CACHE))
    hooks = Path(env["TMP_HOOKS_PATH"]) if env.get("TMP_HOOKS_PATH") else None

    tool = choose_tool(env, shutil.which("mmdebstrap", path=cmd.SAFE_PATH) is not None)
    cmd.require_tools(tool, "tar", "zstd")
    keyring = (env.get("DIB_APT_KEYRING") or env.get("DIB_DEBIAN_KEYRING") or "").strip()
    if keyring and not Path(keyring).exists():
        raise ConfigError(f"DIB_APT_KEYRING={keyring}: no such file",
                          hint="give an absolute path to a keyring file on the build host")
    cfg = config_from_env(env, host_id=mirror.host_os_id(), host_sources=mirror.host_entries(),
                          tool=tool, tool_version=_tool_version(tool),
                          keyring_sha256=file_sha256(Path(keyring)) if keyring and
                          Path(keyring).is_file() else "")
    for w in cfg.choice.warnings:
        log.warning("%s", w)
    log.info("bootstrap: %s %s %s with %s; mirror %s (from %s)%s", cfg.distro, cfg.release,
             cfg.arch, cfg.tool, cfg.choice.mirror or "(tool default)", cfg.choice.mirror_origin,
             f", security {cfg.choice.security} (from {cfg.choice.security_origin})"
             if cfg.choice.security else "")

    entry = check_foreign_arch(cfg.arch, _host_arch())
    cache = ArtifactCache(cache_root, "bootstrap",
                          Path(env["DIB_LOCKFILES"]) if env.get("DIB_LOCKFILES") else None)
    fresh = False
    started = time.monotonic()
    if not cfg.use_cache:
        if cfg.offline:
            raise DibError("offline build with DIB_BOOTSTRAP_CACHE=0: nothing to start from",
                           hint="allow the bootstrap cache or drop --offline")
        fresh = _bootstrap(cfg, target)
    else:
        with cache.lock(cfg.key):
            hit = cache.get(cfg.key)
            if hit and not cfg.offline and cfg.max_age_days > 0 and \
                    hit.age_days() > cfg.max_age_days:
                log.info("cached bootstrap %s is %.1f days old (DIB_BOOTSTRAP_CACHE_MAX_AGE="
                         "%g); making a new one", cfg.key[:12], hit.age_days(), cfg.max_age_days)
                hit = None
            if hit:
                log.info("bootstrap cache hit %s (%s, %.0f MB, %.1f days old)", cfg.key[:12],
                         hit.path, hit.size / 1e6, hit.age_days())
                _extract(hit.path, target)
            elif cfg.offline:
                raise _offline_miss(cfg, cache)
            else:
                log.info("bootstrap cache miss %s (%s)", cfg.key[:12],
                         describe_inputs(cfg.key_inputs()))
                fresh = _bootstrap(cfg, target)
                cache.store(cfg.key, ".tar.zst", cfg.key_inputs(),
                            lambda tmp: _write_tarball(target, tmp))
                cache.prune(2, lambda e: (e.inputs.get("distro"), e.inputs.get("release"),
                                          e.inputs.get("arch")))
    log.info("bootstrap ready in %.1f s (%s)", time.monotonic() - started,
             "built" if fresh or not cfg.use_cache else "from cache")

    sources = list(cfg.sources)
    written = mirror.read_sources(target / "etc" / "apt")
    if not sources:
        # the tool chose the mirror; keep what it wrote, in dib's layout
        found = mirror.mirror_of(written)
        if not found:
            raise DibError("the bootstrap tool wrote no usable apt source into the tree",
                           hint="set DIB_DISTRIBUTION_MIRROR")
        choice = mirror.MirrorChoice(found, mirror.mirror_of(written, security=True) or "",
                                     "the bootstrap tool", "the bootstrap tool")
        sources = mirror.sources_conf(cfg.distro, cfg.release, cfg.components, choice,
                                      _split(env.get("DIB_UBUNTU_MIRROR_DISTS",
                                                     "updates,security,backports")))
    written_lines = [f"deb {e.uri} {' '.join(e.suites)} {' '.join(e.components)}"
                     for e in written if "deb" in e.types]
    lists_fresh = fresh and cfg.tool == "mmdebstrap" and _same_lines(
        written_lines, [line for _, line in sources])
    write_sources(target, sources)
    if cfg.keyring:
        _install_keyring(target, cfg.keyring)
    if entry is not None:
        interp, fix_binary = binfmt_interpreter(entry)
        if interp and not fix_binary and not (target / interp.lstrip("/")).exists():
            dest = target / interp.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(interp, dest)
            (target / STATE_DIR).mkdir(parents=True, exist_ok=True)
            (target / STATE_DIR / "remove-files").open("a").write(interp + "\n")
    state = target / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    if lists_fresh:
        (target / LISTS_FRESH).write_text("lists fetched by the bootstrap for these sources\n")
    if hooks is not None:
        (hooks / "environment.d").mkdir(exist_ok=True)
        (hooks / MIRROR_ENV_FILE).write_text(_mirror_env(cfg.choice, sources))


def _bootstrap(cfg: BootstrapConfig, target: Path) -> bool:
    argv = tool_argv(cfg, target)
    hint = None
    if not cfg.choice.mirror and not cfg.sources:
        hint = "no mirror was configured; set DIB_DISTRIBUTION_MIRROR to one you can reach"
    cmd.run(argv, env=tool_env(cfg), hint=hint, on_line=_progress)
    _normalise(target)
    return True


def _progress(line: str) -> None:
    if line.startswith(("I: ", "E: ", "W: ")):
        log.info("  %s", line)


def _host_arch() -> str:
    try:
        return cmd.output(["dpkg", "--print-architecture"])
    except DibError:
        from dib.config import host_arch
        return host_arch()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dib.bootstrap",
                                     description="Bootstrap a Debian-family root tree into "
                                                 "$TARGET_ROOT (settings from the environment)")
    parser.add_argument("--print-key", action="store_true",
                        help="print the cache key inputs and exit")
    args = parser.parse_args(argv)

    def body() -> int:
        if args.print_key:
            env = os.environ
            tool = choose_tool(env, shutil.which("mmdebstrap") is not None)
            cfg = config_from_env(env, host_id=mirror.host_os_id(),
                                  host_sources=mirror.host_entries(), tool=tool,
                                  tool_version=_tool_version(tool))
            print(cfg.key, describe_inputs(cfg.key_inputs()))
            return 0
        run(os.environ)
        return 0

    return helper_main(body)


if __name__ == "__main__":
    sys.exit(main())
