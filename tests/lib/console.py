"""Log in on a VM's serial console and run commands there, for boot tests that need more
than "the login prompt showed".

:func:`dib.boottest.boot` with ``interact=`` exposes the console as a unix socket; this
drives it with pexpect::

    def check(sock):
        with SerialConsole(sock) as console:
            console.login("debian", password)
            out, status = console.run("id")
"""
from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Optional, Tuple

import pexpect
from pexpect import fdpexpect

#: a shell prompt at the end of the output so far (bash's default ``user@host:~$ ``)
PROMPT = r"[$#] $"
#: terminal control sequences (bash 5.2 turns bracketed paste on and off around each line)
_CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


class LoginFailed(AssertionError):
    pass


class SerialConsole:
    def __init__(self, path: Path, timeout: float = 120) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: Optional[socket.socket] = None
        self._child: Optional[fdpexpect.fdspawn] = None

    def __enter__(self) -> "SerialConsole":
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(str(self.path))
        self._child = fdpexpect.fdspawn(self._sock.fileno(), timeout=self.timeout,
                                        encoding="utf-8", codec_errors="replace")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sock is not None:
            self._sock.close()

    @property
    def child(self) -> fdpexpect.fdspawn:
        assert self._child is not None, "use SerialConsole as a context manager"
        return self._child

    def transcript(self) -> str:
        """What the console printed before the last match and right after it."""
        c = self.child
        return f"{c.before or ''}{c.after if isinstance(c.after, str) else ''}"

    def login(self, user: str, password: str) -> None:
        """Answer getty's prompts; raise LoginFailed if no shell prompt follows."""
        c = self.child
        c.send("\r")  # an empty line makes agetty print its prompt again
        c.expect(r"login: ")
        c.send(user + "\r")
        c.expect(r"[Pp]assword: ")
        c.send(password + "\r")
        i = c.expect([PROMPT, r"Login incorrect", r"login: "])
        if i != 0:
            raise LoginFailed(f"console login as {user} failed:\n{self.transcript()}")

    def run(self, command: str) -> Tuple[str, int]:
        """Run ``command`` in the logged-in shell; its output (stdout and stderr, after the
        echoed command line, control sequences removed) and exit status."""
        c = self.child
        c.send(f"{command}; echo \"__rc=$?__\"\r")
        c.expect(r"__rc=(\d+)__")
        out, status = c.before, int(c.match.group(1))
        c.expect(PROMPT)
        out = _CSI.sub("", out)
        return out.split("\n", 1)[1] if "\n" in out else "", status


def ssh_offered_methods(port: int, user: str, password: str, timeout: float = 60) -> str:
    """Try ``ssh -p port user@127.0.0.1`` with password authentication only.

    Returns the method list of sshd's "Permission denied (...)" -- the methods the server
    still offers -- or ``"password-prompt"`` if ssh asked for a password (it is then given
    the real one, so a server that accepts it shows up as ``"shell"``). Returns ``""`` when
    the connection itself failed (sshd not listening yet)."""
    argv = ["-p", str(port), "-o", "PreferredAuthentications=password,keyboard-interactive",
            "-o", "PubkeyAuthentication=no", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20",
            "-o", "NumberOfPasswordPrompts=1", "-F", "/dev/null",
            f"{user}@127.0.0.1", "echo __ssh-shell__"]
    child = pexpect.spawn("ssh", argv, timeout=timeout, encoding="utf-8",
                          codec_errors="replace")
    try:
        i = child.expect([r"Permission denied \(([^)]*)\)", r"[Pp]assword:",
                          pexpect.EOF, pexpect.TIMEOUT])
        if i == 0:
            return child.match.group(1)
        if i == 1:
            child.sendline(password)
            j = child.expect([r"__ssh-shell__", pexpect.EOF, pexpect.TIMEOUT])
            return "shell" if j == 0 else "password-prompt"
        return ""
    finally:
        child.close(force=True)
