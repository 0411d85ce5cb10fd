"""Pools still running at interpreter exit: stopped, or finished, before exit.

A pool never shut down is stopped at exit (workers killed, queued tasks
cancelled: see design decision 7); one shut down with ``wait=False``, or
dropped without a shutdown, has its work finished first, as the standard
executors do.  Either way its worker processes are gone before
``multiprocessing``'s own exit hook joins every child process it knows of:
that hook would otherwise wait for ever on workers nobody told to stop.

``atexit`` runs hooks last-registered first, and ``multiprocessing.util``
registers its hook when first imported, which may be long after anypool
was.  So the hook here is registered again (moved to the end) once that
module is loaded: by any pool made after it, and by a process backend
starting its workers.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
from typing import Protocol

__all__ = ["Life", "add", "discard", "run_before_multiprocessing"]

log = logging.getLogger("anypool")


class Life(Protocol):
    """What the exit hook needs of a pool's lifecycle (``pool._Life``)."""

    @property
    def draining(self) -> bool:
        """Shut down without waiting (or dropped): its work is finishing in the background."""
        ...

    def kill_at_exit(self) -> None: ...

    def wait_closed(self) -> None: ...


_live: set[Life] = set()
_lock = threading.Lock()
_after_multiprocessing = False


def add(life: Life) -> None:
    """Have ``life``'s pool stopped (or finished) at interpreter exit."""
    with _lock:
        _live.add(life)
    if not _after_multiprocessing and "multiprocessing.util" in sys.modules:
        run_before_multiprocessing()


def discard(life: Life) -> None:
    """Forget ``life``: its pool has closed."""
    with _lock:
        _live.discard(life)


def run_before_multiprocessing() -> None:
    """Make sure the exit hook runs before ``multiprocessing``'s (loading that module if need be)."""
    global _after_multiprocessing
    import multiprocessing.util  # noqa: F401 - registers its exit hook now, if it has not yet

    with _lock:
        if not _after_multiprocessing:
            atexit.unregister(_at_exit)
            atexit.register(_at_exit)
            _after_multiprocessing = True


def _at_exit() -> None:
    with _lock:
        lives = list(_live)
    draining = [life for life in lives if life.draining]
    for life in lives:
        if life not in draining:
            _kill(life)
    try:
        for life in draining:
            life.wait_closed()
    except KeyboardInterrupt:
        # Ctrl-C while the last work finishes: stop it rather than wait on
        for life in draining:
            _kill(life)


def _kill(life: Life) -> None:
    # The kill holds Ctrl-C back (anypool.interrupts) and delivers it after,
    # and one may land just before it does: the program is exiting anyway, so
    # the interrupt is dropped and the kill done again until the pool is
    # closed.  Left undone, multiprocessing's hook, next, would wait for the
    # workers for ever.
    while True:
        try:
            life.kill_at_exit()
            return
        except KeyboardInterrupt:
            with _lock:
                if life not in _live:  # closed: the interrupt came after the kill
                    return
        except Exception:
            log.exception("anypool: failed to stop a pool at exit")
            return


atexit.register(_at_exit)
