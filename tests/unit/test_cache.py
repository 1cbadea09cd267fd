"""The artifact cache (dib.cache) and the bootstrap cache key (dib.bootstrap)."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from dib import bootstrap, cache, mirror
from dib.cache import ArtifactCache, cache_key
from dib.errors import ConfigError

MAIN = "http://mirror.example.test/debian"
SEC = "http://mirror.example.test/debian-security"
HOST = mirror.parse_one_line(f"deb {MAIN} bookworm main\ndeb {SEC} bookworm-security main\n")

BASE_ENV = {"DISTRO_NAME": "debian", "DIB_RELEASE": "bookworm", "ARCH": "amd64"}


def cfg(env=None, **kw) -> bootstrap.BootstrapConfig:
    args = dict(host_id="debian", host_sources=HOST, tool="mmdebstrap",
                tool_version="mmdebstrap 1.3.5", keyring_sha256="")
    args.update(kw)
    return bootstrap.config_from_env({**BASE_ENV, **(env or {})}, **args)


def key(env=None, **kw) -> str:
    return cfg(env, **kw).key


# -- the key -----------------------------------------------------------------------------------

@pytest.mark.parametrize("env", [
    {"DISTRO_NAME": "ubuntu"},
    {"DIB_RELEASE": "trixie"},
    {"ARCH": "arm64"},
    {"DIB_DISTRIBUTION_MIRROR": "http://other.example.test/debian"},
    {"DIB_DEBIAN_SECURITY_MIRROR": "http://other.example.test/security"},
    {"DIB_DEBIAN_COMPONENTS": "main,contrib"},
    {"DIB_DEBOOTSTRAP_INCLUDE": "vim"},
    {"DIB_MMDEBSTRAP_EXTRA_ARGS": "--dpkgopt=path-exclude=/usr/share/doc/*"},
    {"DIB_APT_SOURCES_CONF": f"default:deb {MAIN} bookworm main"},
])
def test_each_input_changes_the_key(env):
    assert key(env) != key()


@pytest.mark.parametrize("kw", [
    {"tool": "debootstrap"},
    {"tool_version": "mmdebstrap 1.4.0"},
    {"keyring_sha256": "ab" * 32},
    {"host_sources": mirror.parse_one_line("deb http://other.example.test/d bookworm main\n")},
])
def test_tool_keyring_and_host_mirror_change_the_key(kw):
    assert key(**kw) != key()


@pytest.mark.parametrize("env", [
    {"IMAGE_NAME": "other"},
    {"DIB_DEBUG_TRACE": "1"},
    {"DIB_OFFLINE": "1"},
    {"http_proxy": "http://proxy.example.test:3128"},
    {"DIB_DEBOOTSTRAP_DEFAULT_LOCALE": "en_US.UTF-8"},
    {"DIB_BOOTSTRAP_CACHE_MAX_AGE": "1"},
    {"DIB_DEBOOTSTRAP_EXTRA_ARGS": "--foo"},  # not used by mmdebstrap
    {"DIB_DEBOOTSTRAP_INCLUDE": "apt,tzdata"},  # already included
    {"DIB_DEBIAN_COMPONENTS": "main"},  # the default
])
def test_irrelevant_inputs_keep_the_key(env):
    assert key(env) == key()


def test_include_order_does_not_matter():
    assert key({"DIB_DEBOOTSTRAP_INCLUDE": "vim,less"}) == \
        key({"DIB_DEBOOTSTRAP_INCLUDE": "less, vim"})


def test_cache_key_is_canonical():
    assert cache_key("k", {"a": 1, "b": [1, 2]}) == cache_key("k", {"b": [1, 2], "a": 1})
    assert cache_key("k", {"a": 1}) != cache_key("other", {"a": 1})
    assert len(cache_key("k", {})) == 64


# -- configuration ---------------------------------------------------------------------------

def test_default_sources_from_host():
    c = cfg()
    assert c.bootstrap_lines == (f"deb {MAIN} bookworm main",
                                 f"deb {MAIN} bookworm-updates main",
                                 f"deb {SEC} bookworm-security main")
    assert c.include[:2] == ("apt", "tzdata")


def test_missing_variables_are_clear():
    with pytest.raises(ConfigError, match="DIB_RELEASE"):
        bootstrap.config_from_env({"DISTRO_NAME": "debian", "ARCH": "amd64"}, host_id="",
                                  host_sources=[], tool="mmdebstrap", tool_version="x")


def test_tool_default_mirror_when_nothing_known():
    c = cfg(host_id="fedora")
    assert c.bootstrap_lines == () and c.sources == ()
    argv = bootstrap.tool_argv(c, Path("/t"))
    assert argv[-2:] == ["bookworm", "/t"]


def test_choose_tool():
    assert bootstrap.choose_tool({}, True) == "mmdebstrap"
    assert bootstrap.choose_tool({}, False) == "debootstrap"
    assert bootstrap.choose_tool({"DIB_DEBOOTSTRAP_EXTRA_ARGS": "--x"}, True) == "debootstrap"
    assert bootstrap.choose_tool({"DIB_DEBOOTSTRAP_TOOL": "debootstrap"}, True) == "debootstrap"
    with pytest.raises(ConfigError):
        bootstrap.choose_tool({"DIB_DEBOOTSTRAP_TOOL": "cdebootstrap"}, True)


def test_mmdebstrap_argv():
    c = cfg({"DIB_APT_KEYRING": "/k.gpg", "DIB_MMDEBSTRAP_EXTRA_ARGS": "--aptopt='A \"b\"'"},
            keyring_sha256="00")
    argv = bootstrap.tool_argv(c, Path("/t"))
    assert argv[:5] == ["mmdebstrap", "--variant=minbase", "--components=main",
                        "--architectures=amd64", "--include=apt,tzdata"]
    assert "--skip=cleanup/apt/lists" in argv and "--keyring=/k.gpg" in argv
    assert "--aptopt=A \"b\"" in argv
    assert argv[argv.index("bookworm") + 1] == "/t"
    assert argv[-3:] == list(c.bootstrap_lines)


def test_debootstrap_argv():
    c = cfg({"DIB_DEBOOTSTRAP_EXTRA_ARGS": "--no-check-gpg",
             "DIB_DEBIAN_DEBOOTSTRAP_SCRIPT": "/usr/share/debootstrap/scripts/sid"},
            tool="debootstrap")
    argv = bootstrap.tool_argv(c, Path("/t"))
    assert argv[0] == "debootstrap" and "--arch=amd64" in argv and "--no-check-gpg" in argv
    assert argv[-4:] == ["bookworm", "/t", MAIN, "/usr/share/debootstrap/scripts/sid"]


def test_bad_sources_conf_and_max_age():
    with pytest.raises(ConfigError, match="DIB_APT_SOURCES_CONF"):
        cfg({"DIB_APT_SOURCES_CONF": "nonsense"})
    with pytest.raises(ConfigError, match="MAX_AGE"):
        cfg({"DIB_BOOTSTRAP_CACHE_MAX_AGE": "soon"})


def test_offline_and_cache_switches():
    assert cfg({"DIB_OFFLINE": "1"}).offline and not cfg({"DIB_OFFLINE": ""}).offline
    assert not cfg({"DIB_BOOTSTRAP_CACHE": "0"}).use_cache


# -- foreign architectures -------------------------------------------------------------------

def binfmt(tmp_path: Path, name: str, text: str) -> Path:
    d = tmp_path / "binfmt"
    d.mkdir(exist_ok=True)
    (d / name).write_text(text)
    return d


def test_native_arches_need_nothing(tmp_path):
    assert bootstrap.check_foreign_arch("amd64", "amd64", tmp_path) is None
    assert bootstrap.check_foreign_arch("i386", "amd64", tmp_path) is None


def test_foreign_arch_without_binfmt_is_a_clear_error(tmp_path):
    with pytest.raises(Exception) as err:
        bootstrap.check_foreign_arch("arm64", "amd64", tmp_path)
    assert "qemu-aarch64" in str(err.value) and "qemu-user-static" in err.value.hint


def test_foreign_arch_disabled_entry(tmp_path):
    d = binfmt(tmp_path, "qemu-aarch64", "disabled\ninterpreter /usr/libexec/qemu-binfmt/x\n")
    with pytest.raises(Exception, match="missing or disabled"):
        bootstrap.check_foreign_arch("arm64", "amd64", d)


def test_foreign_arch_enabled(tmp_path):
    d = binfmt(tmp_path, "qemu-aarch64",
               "enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: OCF\noffset 0\n")
    entry = bootstrap.check_foreign_arch("arm64", "amd64", d)
    assert entry == d / "qemu-aarch64"
    assert bootstrap.binfmt_interpreter(entry) == ("/usr/bin/qemu-aarch64-static", True)


def test_unknown_arch(tmp_path):
    with pytest.raises(Exception, match="no qemu-user emulation"):
        bootstrap.check_foreign_arch("vax", "amd64", tmp_path)


# -- the store -------------------------------------------------------------------------------

def test_store_and_get(tmp_path: Path):
    c = ArtifactCache(tmp_path, "bootstrap")
    assert c.get("k1") is None
    entry = c.store("k1", ".bin", {"a": 1}, lambda p: p.write_bytes(b"x" * 10))
    assert Path(entry.path).read_bytes() == b"x" * 10
    again = ArtifactCache(tmp_path, "bootstrap").get("k1")
    assert again is not None and again.size == 10 and again.inputs == {"a": 1}
    assert (tmp_path / "index").is_dir() and (tmp_path / "bootstrap" / "k1.bin").is_file()


def test_damaged_entry_is_a_miss(tmp_path: Path):
    c = ArtifactCache(tmp_path, "bootstrap")
    entry = c.store("k1", ".bin", {}, lambda p: p.write_bytes(b"abc"))
    Path(entry.path).write_bytes(b"ab")
    assert c.get("k1") is None
    assert c.get("k1") is None  # and the index entry is gone


def test_failed_write_leaves_nothing(tmp_path: Path):
    c = ArtifactCache(tmp_path, "bootstrap")

    def boom(p: Path):
        p.write_bytes(b"half")
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        c.store("k1", ".bin", {}, boom)
    assert c.get("k1") is None
    assert list((tmp_path / "bootstrap").iterdir()) == []


def test_prune_keeps_newest_per_group(tmp_path: Path):
    c = ArtifactCache(tmp_path, "bootstrap")
    for i in range(4):
        c.store(f"k{i}", ".bin", {"release": "bookworm"}, lambda p: p.write_bytes(b"x"))
        time.sleep(0.01)
    c.store("other", ".bin", {"release": "trixie"}, lambda p: p.write_bytes(b"x"))
    assert c.prune(2, lambda e: e.inputs["release"]) == 2
    assert sorted(e.key for e in c.entries()) == ["k2", "k3", "other"]


def test_lock_serialises_makers(tmp_path: Path):
    c = ArtifactCache(tmp_path, "bootstrap")
    order = []

    def maker(name: str):
        with c.lock("same"):
            order.append(f"{name}-in")
            time.sleep(0.2)
            order.append(f"{name}-out")
    threads = [threading.Thread(target=maker, args=(n,)) for n in "ab"]
    # flock locks belong to open files, so two threads with their own open() exclude each
    # other just as two builds do
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert order[0].endswith("-in") and order[1] == order[0].replace("-in", "-out")
    assert os.listdir(tmp_path / "lockfiles")


# -- least-recently-used pruning ------------------------------------------------------------------

def _aged_entries(root: Path, sizes) -> ArtifactCache:
    """Image entries k0, k1, ... of ``sizes`` bytes, k0 least recently used, all idle for
    an hour (so pruning may drop them)."""
    c = ArtifactCache(root, "images")
    for i, size in enumerate(sizes):
        c.store(f"k{i}", ".bin", {}, lambda p, n=size: p.write_bytes(b"x" * n))
    with c._index() as index:
        for i in range(len(sizes)):
            raw = index[("images", f"k{i}")]
            index.set(("images", f"k{i}"), {**raw, "created": raw["created"] - 3600 + i,
                                             "used": None})
    return c


def test_prune_lru_drops_oldest_down_to_the_size(tmp_path: Path):
    c = _aged_entries(tmp_path, [100, 100, 100])
    dropped = cache.prune_lru(tmp_path, 250)
    assert [e.key for e in dropped] == ["k0"]
    assert sorted(e.key for e in c.entries()) == ["k1", "k2"]
    assert not (tmp_path / "images" / "k0.bin").exists()


def test_prune_lru_makes_room_on_a_full_disk(tmp_path: Path):
    """Under the size limit, but the filesystem is short of min_free: drop until the freed
    bytes cover it, oldest first, and no further."""
    c = _aged_entries(tmp_path, [100, 100, 100])
    asked = []

    def free(path: Path) -> int:
        asked.append(path)
        return 30
    dropped = cache.prune_lru(tmp_path, 10_000, min_free=200, free=free)
    assert [e.key for e in dropped] == ["k0", "k1"]
    assert [e.key for e in c.entries()] == ["k2"]
    assert asked == [tmp_path]
    # enough room already: nothing goes
    assert cache.prune_lru(tmp_path, 10_000, min_free=200, free=lambda p: 500) == []


def test_prune_lru_keeps_entries_in_use(tmp_path: Path):
    c = ArtifactCache(tmp_path, "images")
    c.store("fresh", ".bin", {}, lambda p: p.write_bytes(b"x" * 100))
    assert cache.prune_lru(tmp_path, 0, min_free=1 << 40, free=lambda p: 0) == []
    assert [e.key for e in c.entries()] == ["fresh"]


def test_free_space_of_a_path_not_yet_made(tmp_path: Path):
    """Measured on the nearest directory that exists (a cache not created yet)."""
    assert cache.existing_parent(tmp_path / "no" / "such" / "dir") == tmp_path
    assert cache.existing_parent(tmp_path) == tmp_path
    assert cache.free_space(tmp_path / "no" / "such" / "dir") > 0


def test_cache_limits_from_the_environment():
    from dib.config import parse_args
    default = parse_args(["vm"], {})
    assert (default.cache_max_bytes, default.cache_min_free_bytes) == (20 << 30, 5 << 30)
    c = parse_args(["vm"], {"DIB_CACHE_MAX_SIZE": "500M", "DIB_CACHE_MIN_FREE": "0"})
    assert (c.cache_max_bytes, c.cache_min_free_bytes) == (500 << 20, 0)
    with pytest.raises(ConfigError, match="DIB_CACHE_MIN_FREE: must be a size .*not 'plenty'"):
        parse_args(["vm"], {"DIB_CACHE_MIN_FREE": "plenty"})


@pytest.mark.parametrize("order", ["before", "after"])
def test_dib_cache_takes_the_cache_before_or_after_the_command(tmp_path: Path, capsys, order):
    from dib import cli
    _aged_entries(tmp_path, [100])
    opt = ["--image-cache", str(tmp_path)]
    argv = opt + ["list"] if order == "before" else ["list"] + opt
    assert cli.dib_cache(argv) == 0
    assert f"1 entries, 0.0 MiB in {tmp_path}" in capsys.readouterr().out


# -- the .deb cache ---------------------------------------------------------------------------

def _deb(root: Path, name: str, size: int, age: float, release: str = "debian-bookworm-amd64",
         sub: str = "") -> Path:
    path = root / cache.DEB_ARCHIVES / release / sub / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"d" * size)
    when = time.time() - age
    os.utime(path, (when, when))
    return path


def test_debs_are_pruned_with_the_other_entries_least_recently_used_first(tmp_path: Path):
    """The .deb files apt left in chroot/apt/archives count towards DIB_CACHE_MAX_SIZE and
    go in one least-recently-used order with the index's entries."""
    pytest.importorskip("diskcache")
    c = _aged_entries(tmp_path, [8192, 8192])           # used about an hour ago
    oldest = _deb(tmp_path, "a_1_amd64.deb", 8192, age=7200)
    newer = _deb(tmp_path, "b_1_amd64.deb", 8192, age=1800)
    partial = _deb(tmp_path, "c_1_amd64.deb", 8192, age=9000, sub="partial")
    fresh = _deb(tmp_path, "d_1_amd64.deb", 8192, age=10)
    not_a_deb = _deb(tmp_path, "lock", 10, age=9000)
    sizes = {e.path: e.size for e in cache.deb_files(tmp_path)}
    assert set(sizes) == {str(oldest), str(newer), str(fresh)}  # partial/ is apt's, not ours
    total = sum(sizes.values()) + sum(e.size for e in c.entries())
    keep = total - sizes[str(oldest)] - 2 * max(e.size for e in c.entries())
    dropped = cache.prune_lru(tmp_path, keep, chroot_cache_in_use=lambda p: False)
    assert [e.kind for e in dropped] == ["deb", "images", "images"]
    assert dropped[0].path == str(oldest) and not oldest.exists()
    assert newer.exists() and fresh.exists() and partial.exists() and not_a_deb.exists()
    # down to nothing: the recently used .deb stays, as the recently used entries do
    cache.prune_lru(tmp_path, 0, chroot_cache_in_use=lambda p: False)
    assert not newer.exists() and fresh.exists()


def test_debs_stay_while_a_build_has_the_chroot_cache_mounted(tmp_path: Path):
    pytest.importorskip("diskcache")
    _aged_entries(tmp_path, [100])
    deb = _deb(tmp_path, "a_1_amd64.deb", 100, age=7200)
    asked = []

    def in_use(path: Path) -> bool:
        asked.append(path)
        return True
    dropped = cache.prune_lru(tmp_path, 0, chroot_cache_in_use=in_use)
    assert [e.kind for e in dropped] == ["images"] and deb.exists()
    assert asked == [tmp_path / "chroot"]


def test_bind_mounted_finds_a_bind_mount_of_the_directory_or_below(tmp_path: Path):
    cache_dir = tmp_path / "cache" / "chroot"
    (cache_dir / "apt").mkdir(parents=True)
    st = os.stat(tmp_path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    # tmp_path's filesystem mounted at /, so its path inside the filesystem is its own path
    base = f"27 1 {dev} / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    assert not cache.bind_mounted(cache_dir, base)
    chroot = f"90 27 {dev} {cache_dir} /tmp/dib_build.x/mnt/tmp/dib-cache rw - ext4 /dev/vda rw\n"
    assert cache.bind_mounted(cache_dir, base + chroot)
    below = f"91 27 {dev} {cache_dir}/apt /somewhere rw - ext4 /dev/vda rw\n"
    assert cache.bind_mounted(cache_dir, base + below)
    # a bind mount of something above it, or of another filesystem, is not a use
    above = f"92 27 {dev} {tmp_path} /elsewhere rw - ext4 /dev/vda rw\n"
    other = f"93 27 0:99 {cache_dir} /x rw - tmpfs tmpfs rw\n"
    assert not cache.bind_mounted(cache_dir, base + above + other)
    # the filesystem mounted at a sub-directory: paths inside it are relative to its root
    sub = f"27 1 {dev} /data {tmp_path} rw - ext4 /dev/vda rw\n"
    inner = f"94 27 {dev} /data/cache/chroot /mnt/x rw - ext4 /dev/vda rw\n"
    assert cache.bind_mounted(cache_dir, sub + inner)
    assert not cache.bind_mounted(tmp_path / "nonexistent", base + chroot)
