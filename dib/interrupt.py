"""SIGINT and SIGTERM become an exception the build can unwind from.

Inside :func:`signals_raise` the first SIGINT or SIGTERM raises
:class:`~dib.errors.Interrupted` in the main thread, which unwinds the build's ExitStack:
running commands are killed (see dib.cmd), mounts are undone, loop devices detached. While
:func:`Guard.unwinding` is active, further signals are only logged, so the cleanup itself
cannot be cut short.
"""
from __future__ import annotations

import contextlib
import logging
import signal
from types import FrameType
from typing import Iterator, Optional

from dib.errors import Interrupted

log = logging.getLogger("dib")


class Guard:
    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._unwinding = False

    def _handler(self, signum: int, frame: Optional[FrameType]) -> None:
        if self._unwinding or self.received is not None:
            log.warning("received %s while cleaning up; finishing the cleanup first",
                        signal.Signals(signum).name)
            self.received = self.received or signum
            return
        self.received = signum
        raise Interrupted(signum)

    @contextlib.contextmanager
    def unwinding(self) -> Iterator[None]:
        self._unwinding = True
        try:
            yield
        finally:
            self._unwinding = False


@contextlib.contextmanager
def signals_raise() -> Iterator[Guard]:
    guard = Guard()
    previous = {s: signal.signal(s, guard._handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield guard
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
