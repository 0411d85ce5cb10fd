"""``worker_state()``: each worker's own dict, the pool-wide ``threading.local``.

A worker is a thread on ``thread``, a process on ``process`` (one dict per
process), the event loop on ``async`` (its coroutines share one thread, so
they share one dict), a process's loop on ``process+async``, and the pool
itself on ``inline`` (bound for each call, so an inline pool used inside
another pool's task sees its own dict).  The ``initializer`` runs once per
worker and usually fills this dict (a database connection, a loaded model);
tasks then read it.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Any

__all__ = ["bind_call", "bind_context", "bind_process", "bind_thread", "unbind_call", "worker_state"]

_context_state: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "anypool_worker_state", default=None
)
_thread = threading.local()
_process_state: dict[str, Any] | None = None


def worker_state() -> dict[str, Any]:
    """Return the dict private to the worker running the current task.

    Raises:
        RuntimeError: when called outside a task or initializer run by a pool.
    """
    state = _context_state.get()
    if state is not None:
        return state
    state = getattr(_thread, "state", None)
    if state is not None:
        return state  # type: ignore[no-any-return]
    if _process_state is not None:
        return _process_state
    raise RuntimeError(
        "anypool.worker_state() is only available inside a task or an initializer "
        "run by an anypool pool"
    )


def bind_call(state: dict[str, Any]) -> contextvars.Token[dict[str, Any] | None]:
    """Make ``state`` the worker state of the code running now, until ``unbind_call``.

    For a worker that is the caller's own thread (``inline``): it wins over
    any binding around it (a thread worker's, a coroutine's), and
    ``unbind_call`` gives those back, however the call ended.
    """
    return _context_state.set(state)


def unbind_call(token: contextvars.Token[dict[str, Any] | None]) -> None:
    """Undo the ``bind_call`` that returned ``token``."""
    _context_state.reset(token)


def bind_thread(state: dict[str, Any] | None) -> None:
    """Make ``state`` the worker state of the calling thread (None unbinds)."""
    _thread.state = state


def bind_process(state: dict[str, Any]) -> None:
    """Make ``state`` the worker state of this whole process (worker processes only)."""
    global _process_state
    _process_state = state


def bind_context(state: dict[str, Any]) -> contextvars.Context:
    """A copy of the current context in which ``worker_state()`` returns ``state``."""
    ctx = contextvars.copy_context()
    ctx.run(_context_state.set, state)
    return ctx
