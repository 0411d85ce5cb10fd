"""One timer thread for the whole process: retry back-off and thread-task deadlines.

``threading.Timer`` costs a thread per timer; a pool with thousands of
retries or deadlines would start thousands.  ``call_later`` pushes onto one
heap served by one daemon thread, started on first use.  Callbacks run on
that thread and must be quick; one that raises is logged, never fatal.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Handle", "call_later"]

log = logging.getLogger("anypool")


class Handle:
    """A scheduled call; ``cancel()`` stops it if it has not run."""

    __slots__ = ("args", "cancelled", "fn")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.args = ()


class _Clock:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Handle]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Handle:
        handle = Handle(fn, args)
        when = time.monotonic() + max(delay, 0.0)
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), handle))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="anypool-clock", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is handle:
                self._cond.notify()
        return handle

    def _run(self) -> None:
        from .dispatch import EVERY_POOL, serve

        serve(EVERY_POOL)  # deadlines and retries of every pool: none may wait here
        while True:
            with self._cond:
                while True:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    when, _, handle = self._heap[0]
                    delay = when - time.monotonic()
                    if delay <= 0:
                        heapq.heappop(self._heap)
                        break
                    self._cond.wait(delay)
            if not handle.cancelled:
                try:
                    handle.fn(*handle.args)
                except BaseException:  # SystemExit too: this thread keeps every pool's deadlines
                    log.exception("anypool: a scheduled callback failed")
            # let go now, not when the next call is due (maybe never): its arguments
            # may hold a retried task and the shared memory of its arguments
            del handle


_clock = _Clock()
call_later = _clock.call_later
