"""Every failure a user can cause is a DibError: a message and, where we know one, a hint.

Only dib.cli turns these into exit codes and text; nothing else prints or exits.
"""
from __future__ import annotations

from typing import Optional, Sequence


class DibError(Exception):
    """A failure the user can act on. ``str()`` is the message alone."""

    exit_code = 1

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


# -- elements and resolution ---------------------------------------------------------------

class ElementError(DibError):
    """Problems with the element search path or an element's own files."""


class InvalidElementDir(ElementError):
    pass


class ElementNotFound(ElementError):
    pass


class AlreadyProvided(ElementError):
    pass


class MissingOperatingSystem(ElementError):
    pass


class DuplicateHook(ElementError):
    pass


# -- configuration -------------------------------------------------------------------------

class ConfigError(DibError):
    """A bad option, variable or YAML document."""


class NotYetSupported(ConfigError):
    """An option whose feature has not landed yet: refused loudly instead of ignored."""


# -- running things ------------------------------------------------------------------------

class CommandFailed(DibError):
    """An external command exited non-zero (raised by dib.cmd.run)."""

    def __init__(self, argv: Sequence[str], returncode: int, output_tail: str,
                 hint: Optional[str] = None) -> None:
        import shlex

        self.argv = list(argv)
        self.returncode = returncode
        self.output_tail = output_tail
        message = f"command failed with exit status {returncode}: {shlex.join(self.argv)}"
        if output_tail.strip():
            message += "\n" + _indent(output_tail)
        super().__init__(message, hint)


class MissingTool(DibError):
    pass


class HookFailed(DibError):
    """A hook script exited non-zero. Names the element, phase and script."""

    def __init__(self, element: str, phase: str, script: str, returncode: int,
                 output_tail: str, logfile: Optional[str] = None) -> None:
        self.element = element
        self.phase = phase
        self.script = script
        self.returncode = returncode
        self.output_tail = output_tail
        message = (f"element '{element}', phase {phase}, script {script} "
                   f"failed with exit status {returncode}")
        if output_tail.strip():
            message += "\nlast lines of its output:\n" + _indent(output_tail)
        hint = f"the full log is in {logfile}" if logfile else None
        super().__init__(message, hint)


class Interrupted(DibError):
    """SIGINT or SIGTERM arrived; the build unwound. Exit status is 128 + signal."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}; "
                         "everything the build mounted or attached was released")


class BlockDeviceError(DibError):
    pass


def report(exc: DibError) -> str:
    """What a user sees for ``exc``: ``error: <message>`` and, when there is one, the hint."""
    text = f"error: {exc.message}\n"
    if exc.hint:
        text += f"hint: {exc.hint}\n"
    return text


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").splitlines())
