"""Build host: fetch the Docklet source (git URL through a cached bare mirror, local git
repository, or plain directory) and check that it has the layout the element needs."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from .base import DockletError, log, tail

#: What a docklet source tree must contain (docklet.md §4.1); the build fails listing what is
#: missing.
REQUIRED_FILES = (
    "VERSION", "README.md", "prepare.sh",
    "bin/docklet-supermaster", "bin/docklet-master", "bin/docklet-worker",
    "conf/docklet.conf.template",
    "conf/container/lxc2.container.conf", "conf/container/lxc2.container.batch.conf",
    "conf/container/lxc3.container.conf", "conf/container/lxc3.container.batch.conf",
    "conf/lxc-script/lxc-ifup", "conf/lxc-script/lxc-ifdown", "conf/lxc-script/lxc-prestart",
    "conf/lxc-script/lxc-mount",
    "conf/nginx_docklet.conf",
    "src/master/httprest.py", "src/master/userinit.sh", "src/worker/worker.py",
    "src/worker/taskworker.py", "src/utils/env.py",
    "web/web.py", "web/templates/home.template", "user/user.py",
    "tools/nginx_config.sh", "tools/start_jupyter.sh",
)
#: files that must be executable (docklet starts its daemons by their shebang)
EXECUTABLE_GLOBS = ("bin/*", "conf/lxc-script/*", "tools/*.sh", "src/master/userinit.sh",
                    "src/master/httprest.py", "src/worker/worker.py", "src/worker/taskworker.py",
                    "web/web.py", "user/user.py", "meter/main.py")
BIN_SCRIPTS = ("bin/docklet-supermaster", "bin/docklet-master", "bin/docklet-worker")


@dataclass(frozen=True)
class SourceInfo:
    repo: str
    ref: str
    kind: str  # git-url | git-local | directory
    commit: str = ""
    version: str = ""

    def text(self) -> str:
        return (f"repo={self.repo}\nref={self.ref}\nkind={self.kind}\n"
                f"commit={self.commit or '-'}\nversion={self.version or '-'}\n")


def _git(args: Sequence[str], *, cwd: Optional[Path] = None, check: bool = True,
         timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/true", LC_ALL="C")
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc


def classify_repo(repo: str) -> str:
    """'git-url', 'git-local', 'directory', or raise for a local path that is not there."""
    if not repo:
        raise DockletError("DOCKLET_REPO is empty",
                           hint="a git URL, a local git work tree or a plain directory")
    if re.match(r"^[a-z][a-z0-9+.-]*://", repo) or re.match(r"^[\w.-]+@[\w.-]+:", repo):
        return "git-url"
    path = Path(repo)
    if not path.is_absolute():
        raise DockletError(f"DOCKLET_REPO={repo}: not a URL and not an absolute path",
                           hint="use a git URL (https://..., ssh://..., git@host:path) or an "
                                "absolute path on the build host")
    if not path.exists():
        raise DockletError(f"DOCKLET_REPO={repo}: no such file or directory on the build host")
    if not path.is_dir():
        raise DockletError(f"DOCKLET_REPO={repo}: not a directory")
    if (path / ".git").exists():
        top = _git(["rev-parse", "--show-toplevel"], cwd=path, check=False)
        if top.returncode == 0 and os.path.realpath(top.stdout.strip()) == os.path.realpath(path):
            return "git-local"
        log(f"WARNING: {repo}/.git is not a usable git repository; copying the directory "
            "as it is")
    elif (path / "HEAD").is_file() and (path / "objects").is_dir():
        bare = _git(["rev-parse", "--is-bare-repository"], cwd=path, check=False)
        if bare.stdout.strip() == "true":
            return "git-local"
    return "directory"


def _cache_dir(cache_root: Path, repo: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", repo.split("://")[-1]).strip("-")[-40:]
    return cache_root / "git" / f"{slug}-{hashlib.sha256(repo.encode()).hexdigest()[:12]}.git"


@contextlib.contextmanager
def _flock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another build holding {path}")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _resolve_ref(git_dir: Path, ref: str, repo: str) -> str:
    for candidate in (f"refs/heads/{ref}", f"refs/tags/{ref}", f"refs/remotes/origin/{ref}",
                      ref):
        proc = _git(["--git-dir", str(git_dir), "rev-parse", "-q", "--verify",
                     f"{candidate}^{{commit}}"], check=False)
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.strip()
    heads = _git(["--git-dir", str(git_dir), "for-each-ref", "--format=%(refname:short)",
                  "--count=15", "refs/heads", "refs/tags"], check=False).stdout.split()
    raise DockletError(f"DOCKLET_REF={ref} does not exist in {repo}",
                       hint="branches and tags there: " + (", ".join(heads) or "(none)"))


def _export_commit(git_dir: Path, commit: str, dest: Path) -> None:
    """The tree of ``commit`` into ``dest`` (modes and symlinks kept, no .git)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(["git", "--git-dir", str(git_dir), "archive", "--format=tar",
                                commit], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    untar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout,
                           capture_output=True)
    archive.stdout.close()
    err = archive.stderr.read().decode(errors="replace")
    if archive.wait() != 0 or untar.returncode != 0:
        raise DockletError(f"cannot export {commit} from {git_dir}: {tail(err)} "
                           f"{tail(untar.stderr.decode(errors='replace'))}")


def fetch_source(repo: str, ref: str, dest: Path, cache_root: Path, *,
                 offline: bool = False) -> SourceInfo:
    """Put the docklet source for ``repo`` at ``ref`` into ``dest`` (which must not exist).

    * git URL: a bare mirror in ``cache_root/git/`` (cloned once, fetched on every build
      unless ``offline``), then the commit is exported;
    * local git work tree or bare repository: the commit is exported directly;
    * plain directory: copied as it is (``ref`` is ignored).
    """
    kind = classify_repo(repo)
    if dest.exists():
        shutil.rmtree(dest)
    if kind == "directory":
        shutil.copytree(repo, dest, symlinks=True, ignore=shutil.ignore_patterns(".git"))
        info = SourceInfo(repo, ref, kind)
    elif kind == "git-local":
        path = Path(repo)
        git_dir = Path(_git(["rev-parse", "--absolute-git-dir"], cwd=path, check=False)
                       .stdout.strip() or path)
        commit = _resolve_ref(git_dir, ref, repo)
        _export_commit(git_dir, commit, dest)
        info = SourceInfo(repo, ref, kind, commit)
    else:
        mirror = _cache_dir(cache_root, repo)
        with _flock(mirror.with_suffix(".lock")):
            if not (mirror / "HEAD").is_file():
                if offline:
                    raise DockletError(f"offline build: {repo} is not in the cache ({mirror})",
                                       hint="build once without --offline (DIB_OFFLINE) to "
                                            "fill the cache, or point DOCKLET_REPO at a local "
                                            "copy")
                log(f"cloning {repo} into the cache {mirror}")
                tmp = mirror.with_name(mirror.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                proc = _git(["clone", "--mirror", "--quiet", repo, str(tmp)], check=False)
                if proc.returncode != 0:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise DockletError(f"cannot clone DOCKLET_REPO={repo}:\n    "
                                       f"{tail(proc.stderr)}",
                                       hint="check the URL and that the build host can reach "
                                            "it (or use a local path)")
                os.replace(tmp, mirror)
            elif not offline:
                log(f"updating the cached clone {mirror}")
                proc = _git(["--git-dir", str(mirror), "fetch", "--quiet", "--prune", "--tags",
                             "origin"], check=False)
                if proc.returncode != 0:
                    raise DockletError(f"cannot fetch DOCKLET_REPO={repo}:\n    "
                                       f"{tail(proc.stderr)}",
                                       hint="is it reachable? Offline builds (DIB_OFFLINE=1) "
                                            "use the cached clone as it is")
            else:
                log(f"offline: using the cached clone {mirror} as it is")
            commit = _resolve_ref(mirror, ref, repo)
            _export_commit(mirror, commit, dest)
        info = SourceInfo(repo, ref, kind, commit)
    version_file = dest / "VERSION"
    version = version_file.read_text(errors="replace").strip().splitlines()[0] \
        if version_file.is_file() and version_file.read_text(errors="replace").strip() else ""
    return SourceInfo(info.repo, info.ref, info.kind, info.commit, version)


def missing_files(tree: Path) -> List[str]:
    return [f for f in REQUIRED_FILES if not (tree / f).is_file()]


def check_layout(tree: Path, repo: str = "") -> None:
    missing = missing_files(tree)
    if missing:
        raise DockletError(
            f"the docklet source{f' from {repo}' if repo else ''} is missing "
            f"{len(missing)} required file(s):\n    " + "\n    ".join(missing),
            hint="is DOCKLET_REPO/DOCKLET_REF a docklet tree (unias/docklet layout)?")


def executable_files(tree: Path) -> List[Path]:
    out: List[Path] = []
    for pattern in EXECUTABLE_GLOBS:
        out.extend(p for p in sorted(tree.glob(pattern)) if p.is_file() and not p.is_symlink())
    return out
