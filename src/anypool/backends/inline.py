"""The ``inline`` backend: every task runs in the caller's thread, at submit time.

Nothing is concurrent.  It is the reference the contract tests compare the
other backends with, and a debugging aid: a breakpoint inside a task stops
in your own thread, with your own stack above it.  ``auto`` never picks it.
Timeouts cannot be enforced (the caller is the one running the task).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..calls import call_items
from ..errors import InitializerFailed, PoolClosed
from ..state import bind_thread, thread_state
from ..tasks import Failure, Task
from .base import Backend, BackendConfig

if TYPE_CHECKING:
    from ..dispatch import Dispatch

__all__ = ["InlineBackend"]


class InlineBackend(Backend):
    """Runs each task immediately in the thread that submits it."""

    name = "inline"

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
        # The caller's own binding, if it is a worker thread itself (an inline
        # pool inside a task): not worker_state(), which would also find a
        # coroutine's or a process's state and then bind it to this thread for good.
        previous = thread_state()
        try:
            bind_thread(self._worker_state())
            t0 = time.time()
            results, failed = call_items(task.fn, task.items, task.style, Failure,
                                         reraise=(KeyboardInterrupt,))
            self.dispatch.finish(task, results, t0, time.time(), self._ws, failed)
        finally:
            bind_thread(previous)

    def _worker_state(self) -> dict[str, object]:
        if self._state is None:
            self._state = {}
            if self.config.initializer is not None:
                bind_thread(self._state)
                try:
                    self.config.initializer(*self.config.initargs)
                except Exception as exc:
                    err = InitializerFailed(f"the worker initializer raised {exc!r}")
                    err.__cause__ = exc
                    self.dispatch.broken(err)
                    raise err from exc
        return self._state

    def shutdown(self, wait: bool = True, kill: bool = False) -> None:
        self._stopped = True
