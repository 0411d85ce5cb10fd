"""Blocking waits that Ctrl-C and SIGTERM can always interrupt.

Python runs signal handlers in the main thread only, and only between
bytecodes.  The kernel, though, may deliver a process-directed signal to any
thread that does not block it.  When SIGINT lands on a worker thread, a main
thread blocked in a plain ``lock.acquire()`` is never woken: the handler (a
``KeyboardInterrupt``, the CLI's SIGTERM handler) waits until that lock is
released, and if the wait was the one the signal meant to end, that is
never.  Measured here: ``anypool run`` ignored SIGTERM in 2 of 40 runs on a
loaded machine, its main thread asleep in a queue ``get()``.

So every wait of the main thread is cut into slices of at most ``POLL``
seconds; between slices it runs bytecode, and pending handlers with it.
Other threads wait in one piece, as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["POLL", "acquire", "join", "slice_of", "slices"]

POLL = 0.2  # the longest a pending signal waits for the main thread's handler

_main = threading.main_thread().ident


def slice_of(timeout: float | None) -> float | None:
    """The timeout for one slice of a wait of ``timeout`` seconds (None: no limit).

    In the main thread at most ``POLL``; never negative.  The caller checks
    what it waits for after each slice and waits again while time is left.
    """
    if timeout is not None and timeout < 0:
        timeout = 0.0
    if threading.get_ident() != _main:
        return timeout
    return POLL if timeout is None else min(timeout, POLL)


def slices(timeout: float | None) -> Iterator[float | None]:
    """The timeouts of successive slices of a wait of ``timeout`` seconds (None: no limit).

    The caller waits once per slice and stops at the first that succeeds;
    the iteration ends when the time is up.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        yield slice_of(None if deadline is None else deadline - time.monotonic())
        if deadline is not None and time.monotonic() >= deadline:
            return


def acquire(lock: Any, timeout: float | None = None) -> bool:
    """``lock.acquire(True, timeout)``, interruptible by signals in the main thread."""
    if threading.get_ident() != _main:
        return bool(lock.acquire(True, -1 if timeout is None else timeout))
    return any(lock.acquire(True, step) for step in slices(timeout))


def join(thread: threading.Thread) -> None:
    """``thread.join()``, interruptible by signals in the main thread."""
    if threading.get_ident() != _main:
        thread.join()
        return
    while thread.is_alive():
        thread.join(POLL)
