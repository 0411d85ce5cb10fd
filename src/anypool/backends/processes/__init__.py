"""The ``process`` and ``process+async`` backends: worker processes anypool runs itself.

``process`` runs sync callables, one task at a time per process: for
CPU-bound pure Python.  ``process+async`` runs coroutine functions on an
event loop inside each process, up to ``concurrency`` at once per process:
for IO-heavy work that also needs more than one core.

What they promise (and the standard pools do not):

* a worker that dies (SIGKILL, ``os._exit``, segfault, OOM) fails only the
  task it was running, with :class:`~anypool.WorkerCrashed` naming the
  signal or exit code; it is replaced and the pool goes on;
* ``timeout=`` kills the worker running the late task (and every process
  that task started) within a fraction of a second, and replaces it;
* an argument that cannot be pickled fails in ``submit``, naming it;
* ``max_tasks_per_worker`` and ``max_memory_per_worker`` recycle workers
  between tasks without losing any;
* workers exit on their own when the pool's process dies, even by SIGKILL.

The mechanism is in ``manager.py`` (parent side), ``worker.py`` (child
side) and ``protocol.py`` (the messages between them).

Start method, by default: the first workers are *forked* when the process
has a single thread at that moment (a fork takes ~1 ms and nothing can be
holding a lock in another thread); otherwise, and for every later worker,
they come from the *fork server* (safe with threads; ~0.3 s to start once
per process, then fast).  ``start_method="fork"`` always forks (big read-only
data is then shared copy-on-write, even with threads around: your risk),
``"forkserver"`` never does, ``"spawn"`` starts a fresh interpreter per
worker.  As with ``multiprocessing``, a script whose workers may come from
the fork server or ``spawn`` needs the ``if __name__ == "__main__":`` guard
(without it, the pool breaks at once and says so: see ``anypool.mainguard``).
A forked worker holds every file descriptor the pool's process had open at
the fork (as ``multiprocessing``'s forked workers do): a pipe's write end it
holds keeps the reader from seeing end-of-file until the pool closes.  Where
that matters, ``start_method="forkserver"``.  A task may run a process pool
of its own: a forked worker forgets its parent's fork server (which is not
its child, so ``multiprocessing`` could not use it) and starts its own when
that pool needs one.
"""

from __future__ import annotations

import threading
import types
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from ... import exiting, mainguard, waiting
from ...errors import PoolClosed, SerializationError
from ...serialize import dumps_args, dumps_callable, dumps_initializer, explain_args, explain_item
from ...tasks import Task
from ..base import Backend, BackendConfig

if TYPE_CHECKING:
    from ...dispatch import Dispatch
    from .manager import Manager

__all__ = ["AsyncProcessBackend", "ProcessBackend"]

_FN_REGISTRY = 256  # callables whose pickles are kept, so repeated submits pickle them once
# callables with no state of their own to change between two submits (a closure's
# cells and a function's globals travel as they were first sent, as they would in a
# worker forked or started before they changed)
_STATELESS = frozenset({types.FunctionType, types.BuiltinFunctionType})


class ProcessBackend(Backend):
    """Sync callables in worker processes (see the module docstring)."""

    name = "process"
    can_kill = True
    transports = True
    batch_seconds = 0.02
    max_batch = 4096
    worker_mode: ClassVar[str] = "sync"

    def __init__(self, config: BackendConfig, dispatch: Dispatch) -> None:
        super().__init__(config, dispatch)
        self.pending: deque[Task] = deque()
        self._lock = threading.Lock()
        self._manager: Manager | None = None
        self._closed = False
        self._fns: OrderedDict[Any, tuple[int, bytes]] = OrderedDict()
        self._fn_ids = 0
        self.lent = 0  # workers' shares lent out (see lend()): that many fewer run tasks at once
        self.init_bytes = dumps_initializer(config.initializer, config.initargs, "to worker processes")

    def describe(self) -> str:
        method = self.config.start_method or "fork while single-threaded, else the fork server"
        return f"{self.name} ({self.workers} worker processes, {method})"

    def _fn_entry(self, fn: Callable[..., Any]) -> tuple[int, bytes]:
        """The id and pickle of ``fn``, as it is now (an LRU of them).

        A function is pickled once and known by itself.  Anything carrying
        state (a bound method, a callable object, a partial) is pickled
        again each time, as ``ProcessPoolExecutor`` does, so a change to its
        state reaches the next task; identical pickles keep one id, so a
        worker unpickles it once while the state stays the same.
        """
        if type(fn) in _STATELESS:
            key: Any = fn
            with self._lock:
                entry = self._fns.get(key)
                if entry is not None:
                    self._fns.move_to_end(key)
                    return entry
            data = dumps_callable(fn)
        else:
            data = dumps_callable(fn)
            key = data
            with self._lock:
                entry = self._fns.get(key)
                if entry is not None:
                    self._fns.move_to_end(key)
                    return entry
        with self._lock:
            self._fn_ids += 1
            entry = (self._fn_ids, data)
            self._fns[key] = entry  # holds fn, so its id is never reused while cached
            if len(self._fns) > _FN_REGISTRY:
                self._fns.popitem(last=False)
        return entry

    def _serialize(self, task: Task) -> None:
        fn_id, fn_bytes = self._fn_entry(task.fn)
        if task.future is not None:
            args, kwargs = task.items[0]
            try:
                blob, shared = dumps_args(task.items[0])
            except (Exception, SystemExit) as exc:
                raise explain_args(args, kwargs or {}, exc) from exc
            task.payload = (fn_id, fn_bytes, True, [blob], shared)
            return
        try:
            blob, shared = dumps_args(task.items)
        except (Exception, SystemExit) as exc:
            if len(task.items) == 1:
                raise explain_item(task.seq, task.items[0], exc) from exc
            raise SerializationError(f"a batch of map items cannot be pickled: {exc}") from exc
        task.payload = (fn_id, fn_bytes, False, blob, shared)

    def prepare(self, task: Task) -> None:
        """Pickle ``task`` now, as ``submit`` would (kept on the task, done once).

        Raises:
            SerializationError: its callable or arguments cannot be pickled, naming which.
        """
        if task.payload is None:
            self._serialize(task)

    def submit(self, task: Task) -> None:
        if self._closed:
            raise PoolClosed("the process backend is shut down")
        if task.payload is None:
            self._serialize(task)
        self.pending.append(task)
        manager = self._manager
        if manager is None:
            manager = self._start()
        if manager.broken is not None:
            # The manager fails what is pending once, as it breaks; a task that
            # came after that (auto sending on what its probe held) fails here.
            manager.fail_pending(manager.broken, "unsendable")
            return
        manager.wake()

    def lend(self) -> None:
        with self._lock:
            self.lent += 1

    def give_back(self) -> None:
        with self._lock:
            self.lent -= 1
        manager = self._manager
        if manager is not None and not self._closed:
            # a worker may take a task now; not once shut down, when the manager
            # may have closed its wake pipe (and its number gone to another file)
            manager.wake()

    def _start(self) -> Manager:
        from .manager import Manager

        with self._lock:
            if self._manager is None:
                # a pool merely made at import is harmless; one that starts its workers there is not
                mainguard.check("a process pool")
                exiting.run_before_multiprocessing()  # its workers must be gone before it joins them
                self._manager = Manager(self)
            return self._manager

    def cancel_pending(self) -> None:
        """Cancel every task not yet handed to a worker."""
        while self.pending:
            try:
                task = self.pending.popleft()
            except IndexError:
                return
            self.dispatch.cancel(task)

    def shutdown(self, wait: bool = True, kill: bool = False) -> None:
        self._closed = True
        manager = self._manager
        if manager is None:
            return
        if kill:
            manager.kill()
            manager.thread.join(5.0)
            return
        manager.stop()
        if wait:
            waiting.join(manager.thread)


class AsyncProcessBackend(ProcessBackend):
    """Coroutine functions on an event loop in each worker process (``process+async``).

    ``workers`` processes, each running up to ``concurrency`` coroutines at
    once (default 1000).  ``timeout=`` cancels the coroutine inside its
    process (one that handles the cancellation and ends by itself ends with
    its own value or error, as on ``async``); if it still runs
    ``ASYNC_GRACE`` (1 s) later (it blocks the loop,
    ignores the cancellation, or the process is stopped), the process is
    killed: that coroutine fails with ``TaskTimeout``, the others run again.
    A process that dies while a coroutine's step runs (``os._exit``,
    a segfault) fails that coroutine only; the others it held run again,
    without using up an attempt (results that had finished but were not yet
    sent back run again too: at-least-once).  A death while no step runs (a
    kill from outside, the OOM killer) can blame none of them: each fails
    with ``WorkerCrashed``, an attempt each.
    """

    name = "process+async"
    can_kill = False
    coroutines = True
    worker_mode = "async"

    @property
    def concurrency(self) -> int:
        return self.config.concurrency or 1000

    def fixed_batch(self) -> int | None:
        size = self.concurrency // 8
        if self.config.max_tasks_per_worker is not None:  # a batch never outlasts its worker
            size = min(size, self.config.max_tasks_per_worker)
        return max(1, size)

    def window(self) -> int:
        return 2 * self.workers * 8 + 2

    def describe(self) -> str:
        return f"{self.name} ({self.workers} processes x {self.concurrency} coroutines)"
