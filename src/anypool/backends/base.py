"""The backend protocol: the little a backend must do; the core does the rest.

A backend runs tasks on one execution model.  It does **not** decide about
retries, ordering, windows, progress, statistics or job logs: the
dispatcher (``anypool.dispatch``) does, the same way for every backend.

The contract, in full:

* ``submit(task)`` takes a :class:`~anypool.tasks.Task` and returns at once.
  It may be called from any thread, including the backend's own (retries).
  For a single ``submit`` call it raises ``SerializationError`` in the
  caller when the task cannot be sent.
* Right before running a task the backend calls ``task.claim()``; if that
  returns False the task was cancelled: ``dispatch.discard(task)``.
* It reports how each item ended, exactly once, through
  ``dispatch.finish(task, results, started, ended, worker)``, with a
  :class:`~anypool.tasks.Failure` in place of a result for an item that
  raised, timed out (``kind="timeout"``, only where ``can_kill`` or the model
  can at least give up on it) or lost its worker (``kind="crash"``).
  ``dispatch.requeue(task)`` hands back work that never started.
* ``shutdown(wait, kill)`` stops its workers: after everything submitted has
  finished (the dispatcher waits for that first), or at once with ``kill``.
* A worker initializer that fails makes the backend call
  ``dispatch.broken(InitializerFailed(...))`` once and stop starting workers.
"""

from __future__ import annotations

import os
import queue
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from ..futures import Future
from ..records import Record

if TYPE_CHECKING:
    from ..dispatch import Dispatch
    from ..tasks import Task

__all__ = ["Backend", "BackendConfig", "default_workers", "drain"]


class BackendConfig(Record):
    """The pool settings a backend may use (each backend reads what applies)."""

    __slots__ = (  # noqa: RUF023 - field order: repr and positional arguments follow it
        "workers", "initializer", "initargs", "max_tasks_per_worker", "max_memory_per_worker",
        "start_method", "concurrency", "address", "extra",
    )

    def __init__(self, workers: int | None = None, initializer: Callable[..., Any] | None = None,
                 initargs: tuple[Any, ...] = (), max_tasks_per_worker: int | None = None,
                 max_memory_per_worker: int | None = None, start_method: str | None = None,
                 concurrency: int | None = None, address: str | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        self.workers = workers
        self.initializer = initializer
        self.initargs = initargs
        self.max_tasks_per_worker = max_tasks_per_worker
        self.max_memory_per_worker = max_memory_per_worker
        self.start_method = start_method
        self.concurrency = concurrency
        self.address = address
        self.extra: dict[str, Any] = {} if extra is None else extra


class Backend(ABC):
    """One execution model behind the pool (see the module docstring for the contract)."""

    name: ClassVar[str]
    can_kill: ClassVar[bool] = False
    """True if a timed-out task is really stopped, not just abandoned."""
    transports: ClassVar[bool] = False
    """True if tasks are serialized to another process (arguments must pickle)."""
    batch_seconds: ClassVar[float] = 0.002
    """How long one batch of small ``map`` items should take on this backend."""
    max_batch: ClassVar[int] = 4096
    coroutines: ClassVar[bool] = False
    """True if the backend runs coroutine functions (else sync callables)."""
    options: ClassVar[tuple[str, ...]] = ()
    process_options: ClassVar[bool] = True
    """False where ``start_method`` and ``max_*_per_worker`` cannot apply (no worker processes)."""
    """Backend-only ``Pool(**options)`` this backend takes (others raise ``TypeError``)."""
    future_class: ClassVar[type[Future[Any]]] = Future
    """What ``submit`` returns; ``AsyncFuture`` where a running task can always be cancelled."""

    def __init__(self, config: BackendConfig, dispatch: Dispatch) -> None:
        self.config = config
        self.dispatch = dispatch

    @property
    def workers(self) -> int:
        """How many tasks run at once at most (threads, processes, coroutines...)."""
        return self.config.workers or default_workers()

    @abstractmethod
    def submit(self, task: Task) -> None:
        """Queue ``task``; report its end through the dispatcher."""

    @abstractmethod
    def shutdown(self, wait: bool = True, kill: bool = False) -> None:
        """Stop the workers (all submitted work is already final unless ``kill``)."""

    def start(self) -> None:
        """Start the workers now instead of on the first task (a router warming its likely pick).

        Backends whose workers are cheap to start on demand need not do anything.
        """
        return

    def lend(self) -> None:
        """Run one task fewer at once until ``give_back()``: a worker's share is in use elsewhere.

        ``auto`` lends one while its probe thread still runs a task of a
        callable it has already handed to this backend: ``workers=N`` then
        still means N calls at once, not N plus the probe's.  Backends that
        ``auto``'s probe never picks need not do anything.
        """
        return

    def give_back(self) -> None:
        """End one ``lend()``."""
        return

    def future_for(self, fn: Callable[..., Any]) -> type[Future[Any]]:
        """The future class ``submit(fn, ...)`` returns (a router answers per callable)."""
        return self.future_class

    def plan(self, fn: Callable[..., Any]) -> Backend:
        """The backend that will run ``fn`` (a router answers for its choice)."""
        return self

    def window(self) -> int:
        """How many batches of one ``map`` call may be in flight at once."""
        return 2 * self.workers + 2

    def kills_running(self) -> bool:
        """Whether ``shutdown(kill=True)`` stops every running task (``can_kill``; ``auto``: its picks')."""
        return self.can_kill

    def fixed_batch(self) -> int | None:
        """A fixed ``map`` batch size, or None to size batches by measured time."""
        return None

    def describe(self) -> str:
        """A one-line description for logs and ``pool.stats``."""
        return f"{self.name} ({self.workers} workers)"


def default_workers() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def drain(q: queue.SimpleQueue[Task | None]) -> Iterator[Task]:
    """Take every task still waiting in a worker queue, without blocking (stop markers skipped)."""
    while True:
        try:
            task = q.get_nowait()
        except queue.Empty:
            return
        if task is not None:
            yield task
