"""Holding Ctrl-C back while a pool is killed, so a second one cannot cut the kill short.

Leaving a ``with Pool`` on Ctrl-C kills the running work; people press
Ctrl-C two or three times, and a terminal sends each one to the whole
process group.  A second ``KeyboardInterrupt`` landing inside that kill
stopped it before the workers were killed, and ``multiprocessing``'s exit
hook then waited for those workers for ever.  So the kill runs with SIGINT
held back, and the interrupt is delivered once it is done.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["HeldInterrupts"]


class HeldInterrupts:
    """A context in which SIGINT is recorded instead of handled, then delivered once.

    Only in the main thread (the only one Python runs signal handlers in) and
    only while SIGINT has a Python handler (``KeyboardInterrupt``, or the
    program's own); elsewhere, or with SIGINT ignored or left to the OS, the
    body runs as it would without this.  On leaving, the handler is put back
    and a SIGINT that came meanwhile is raised again, once, through it.  Not
    when the body raised, nor while a ``KeyboardInterrupt`` or ``SystemExit``
    is already on its way out of the caller: that interrupt is the one
    pressed again, and the program is stopping already.

    Raises:
        KeyboardInterrupt: on leaving, where SIGINT came and its handler is
            the default one (whatever the program's own handler raises
            otherwise).
    """

    __slots__ = ("_caught", "_old")

    def __init__(self) -> None:
        self._old: Any = None  # the handler put back on leaving; None: nothing held
        self._caught = False

    def __enter__(self) -> HeldInterrupts:
        self._old = None
        self._caught = False
        if threading.current_thread() is not threading.main_thread() or sys.is_finalizing():
            return self
        old = signal.getsignal(signal.SIGINT)
        if not callable(old):
            return self
        try:
            signal.signal(signal.SIGINT, self._hold)
        except (ValueError, OSError):
            return self
        self._old = old
        return self

    def _hold(self, signum: int, frame: FrameType | None) -> None:
        self._caught = True

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        old, self._old = self._old, None
        if old is None:
            return
        signal.signal(signal.SIGINT, old)
        if not self._caught or exc_type is not None:
            return
        leaving = sys.exc_info()[1]
        if leaving is not None and not isinstance(leaving, Exception):
            return
        signal.raise_signal(signal.SIGINT)
