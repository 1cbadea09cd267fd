"""The one gateway for external commands.

Every program dib starts goes through :func:`run`. It logs the argv (shell-quoted) at debug
level, streams the output line by line into the log, keeps the last lines for the error
message, and raises :class:`~dib.errors.CommandFailed` on a non-zero exit when ``check`` is set.

Each child runs in a session of its own, so that an interruption (a signal handler that raises,
see :mod:`dib.build`) can kill the whole process group before the exception travels on. stdin
is ``/dev/null`` unless ``input`` is given or ``interactive`` asks for the terminal.

Tests replace the runner through :func:`use_runner` rather than patching subprocess.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
from dataclasses import dataclass
from typing import (
    IO,
    Any,
    Callable,
    Deque,
    Dict,
    Iterator,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from dib.errors import CommandFailed, MissingTool

log = logging.getLogger("dib.cmd")

Arg = Union[str, "os.PathLike[str]"]

#: PATH given to commands whose caller passes no environment of its own.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Variables that pass from the caller's environment into the default one.
PASSTHROUGH = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
               "NO_PROXY", "TERM", "HOME", "TMPDIR")


@dataclass(frozen=True)
class Result:
    argv: Tuple[str, ...]
    returncode: int
    stdout: str
    """Captured stdout when ``capture=True``, else empty."""
    tail: str = ""
    """The last lines of output (stderr first when captured), for error messages."""


def base_env(extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """A clean environment: fixed PATH, C.UTF-8, proxies passed through."""
    env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    for name in PASSTHROUGH:
        if name in os.environ:
            env[name] = os.environ[name]
    if extra:
        env.update(extra)
    return env


def _subprocess_runner(argv: Sequence[str], *, env: Mapping[str, str], cwd: Optional[str],
                       capture: bool, input: Optional[str], interactive: bool,
                       on_line: Optional[Callable[[str], None]], tail: int) -> Result:
    if interactive:
        proc = subprocess.Popen(argv, env=env, cwd=cwd)
        try:
            return Result(tuple(argv), proc.wait(), "", "")
        except BaseException:
            _kill(proc)
            raise

    stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if capture else subprocess.STDOUT,
        start_new_session=True,
    )
    lines: Deque[str] = collections.deque(maxlen=tail)
    try:
        if capture:
            out, err = proc.communicate(input.encode() if input is not None else None)
            stdout = out.decode(errors="replace")
            lines.extend(stdout.splitlines())
            for line in err.decode(errors="replace").splitlines():
                log.debug("  %s", line)
                lines.append(line)
        else:
            if input is not None:
                assert proc.stdin is not None
                proc.stdin.write(input.encode())
                proc.stdin.close()
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                log.debug("  %s", line)
                lines.append(line)
                if on_line is not None:
                    on_line(line)
            proc.wait()
            stdout = ""
    except BaseException:
        _kill(proc)
        raise
    return Result(tuple(argv), proc.returncode, stdout, "\n".join(lines))


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the child's whole process group and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


Runner = Callable[..., Result]
_runner: Runner = _subprocess_runner


@contextlib.contextmanager
def use_runner(runner: Runner) -> Iterator[None]:
    """Swap the process runner (for tests that assert command lines)."""
    global _runner
    previous, _runner = _runner, runner
    try:
        yield
    finally:
        _runner = previous


def run(argv: Sequence[Arg], *, env: Optional[Mapping[str, str]] = None,
        cwd: Optional[Arg] = None, check: bool = True, capture: bool = False,
        input: Optional[str] = None, interactive: bool = False,
        on_line: Optional[Callable[[str], None]] = None, tail: int = 25,
        hint: Optional[str] = None) -> Result:
    """Run ``argv``; see the module docstring. Returns a :class:`Result`."""
    args = [os.fspath(a) for a in argv]
    log.debug("$ %s%s", shlex.join(args), f"  (in {os.fspath(cwd)})" if cwd else "")
    result = _runner(args, env=dict(env) if env is not None else base_env(),
                     cwd=os.fspath(cwd) if cwd is not None else None, capture=capture,
                     input=input, interactive=interactive, on_line=on_line, tail=tail)
    if check and result.returncode != 0:
        raise CommandFailed(args, result.returncode, result.tail, hint)
    return result


@contextlib.contextmanager
def background(argv: Sequence[Arg], *, stdout_path: Optional[Arg] = None,
               env: Optional[Mapping[str, str]] = None) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv`` and yield its Popen; leaving the context kills its process group.

    For long-running programs that are watched rather than waited for (a VM under test).
    Output goes to ``stdout_path`` (or /dev/null).
    """
    args = [os.fspath(a) for a in argv]
    log.debug("$ %s &", shlex.join(args))
    out: Optional[IO[bytes]] = open(stdout_path, "wb") if stdout_path is not None else None
    try:
        proc = subprocess.Popen(args, env=dict(env) if env is not None else base_env(),
                                stdin=subprocess.DEVNULL,
                                stdout=out if out is not None else subprocess.DEVNULL,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                _kill(proc)
    finally:
        if out is not None:
            out.close()


def output(argv: Sequence[Arg], **kwargs: Any) -> str:
    """Run and return stdout, stripped."""
    return run(argv, capture=True, **kwargs).stdout.strip()


def require_tools(*tools: str, package_hint: Optional[Mapping[str, str]] = None) -> None:
    """Fail early, naming every missing program and the Debian package that has it."""
    missing = [t for t in tools if shutil.which(t, path=SAFE_PATH) is None]
    if missing:
        pkgs = sorted({(package_hint or {}).get(t, t) for t in missing})
        raise MissingTool(f"required program(s) not found: {', '.join(missing)}",
                          hint=f"install them, e.g. apt-get install {' '.join(pkgs)}")
