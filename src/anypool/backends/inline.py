"""The ``inline`` backend: every task runs in the caller's thread, at submit time.

Nothing is concurrent.  It is the reference the contract tests compare the
other backends with, and a debugging aid: a breakpoint inside a task stops
in your own thread, with your own stack above it.  ``auto`` never picks it.
Timeouts cannot be enforced (the caller is the one running the task).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from ..calls import call_items
from ..dispatch import serve, serving
from ..errors import InitializerFailed, PoolClosed
from ..state import bind_call, unbind_call
from ..tasks import Failure, Task
from .base import Backend, BackendConfig

if TYPE_CHECKING:
    from ..dispatch import Dispatch

__all__ = ["InlineBackend"]

_CTRL_C = (KeyboardInterrupt,)


class InlineBackend(Backend):
    """Runs each task immediately in the thread that submits it."""

    name = "inline"
    process_options = False

    def __init__(self, config: BackendConfig, dispatch: Dispatch) -> None:
        super().__init__(config, dispatch)
        self._ws = dispatch.stats.worker("inline")
        self._state: dict[str, object] | None = None
        self._stopped = False

    @property
    def workers(self) -> int:
        return 1

    def submit(self, task: Task) -> None:
        if self._stopped:
            raise PoolClosed("the inline backend is shut down")
        if not task.claim():
            self.dispatch.discard(task)
            return
        if self.dispatch.observing:
            self.dispatch.started(task, self._ws)
        # Bound for this call only, innermost first: an inline pool inside a
        # thread worker's task or a coroutine sees its own state, and theirs
        # is back afterwards (a thread binding would lose to a coroutine's).
        token = bind_call(self._worker_state())
        # the caller's thread is the pool's worker while the task runs: a
        # shutdown() inside it must not wait for the task that called it
        served = serving()
        serve(self.dispatch)
        try:
            # Ctrl-C in a task reaches the caller, as it would without a pool.  Only
            # on the main thread, where it is Ctrl-C: elsewhere (a retry run by the
            # shared clock's thread) it fails the task, as on the thread backend;
            # raised there, it ended that thread and the task was never settled.
            reraise = _CTRL_C if threading.current_thread() is threading.main_thread() else ()
            t0 = time.time()
            results, failed = call_items(task.fn, task.items, task.style, Failure, reraise)
            self.dispatch.finish(task, results, t0, time.time(), self._ws, failed)
        finally:
            serve(served)
            unbind_call(token)

    def _worker_state(self) -> dict[str, object]:
        if self._state is None:
            self._state = {}
            if self.config.initializer is not None:
                token = bind_call(self._state)
                try:
                    self.config.initializer(*self.config.initargs)
                except Exception as exc:
                    err = InitializerFailed(f"the worker initializer raised {exc!r}")
                    err.__cause__ = exc
                    self.dispatch.broken(err)
                    raise err from exc
                finally:
                    unbind_call(token)
        return self._state

    def shutdown(self, wait: bool = True, kill: bool = False) -> None:
        self._stopped = True
