"""``Pool``: one ``concurrent.futures.Executor`` over every backend, and one-shot helpers.

The pool owns the policy (options, retries, windows, statistics, events) and
hands the mechanism to a backend.  Code written for ``ThreadPoolExecutor`` or
``ProcessPoolExecutor`` runs unchanged; ``imap``, ``imap_unordered``,
``with_options`` and ``stats`` are extras.

Differences from the standard executors, on purpose:

* ``map`` is lazy: it submits a bounded window of work at once and the rest
  as you consume results, so an endless input uses flat memory.  A ``map``
  you never iterate runs only its first window.
* A worker that dies fails only its own task (``WorkerCrashed``); the pool
  goes on.  ``BrokenProcessPool`` handlers still catch it.
* ``shutdown(kill=True)`` stops running work now; leaving a ``with`` block
  on ``KeyboardInterrupt`` or ``SystemExit`` does the same.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from .backends import get_backend
from .backends.base import Backend, BackendConfig
from .dispatch import Dispatch
from .events import Observer
from .futures import Future
from .mapping import MapIterator, MapRun, source_of
from .stats import PoolStats, StatsCollector
from .tasks import CALL, Task, TaskOptions

if TYPE_CHECKING:
    from .commands import CommandResult, Spec
    from .observers.progress import Progress
    from .observers.recorder import Recorder, Row

__all__ = ["Pool", "PoolView", "imap", "map"]

T = TypeVar("T")


class _CommandObject(Protocol):
    def __anypool_command__(self, args: tuple[Any, ...], slot: int) -> Spec: ...


# What the subprocess backend runs: a shell command line, an argv list, or an
# object that makes one per call (see anypool.commands); ``submit`` on one of
# these gives a ``Future[CommandResult]``.
Command = str | Sequence[str] | _CommandObject

log = logging.getLogger("anypool")

# How long shutdown(kill=True) waits for the killed tasks to be reported
# before it closes the job log and the bar (a process backend's take ~10 ms,
# a command's its 0.25 s grace), on backends that can kill a running task.
KILL_SETTLE = 2.0

_live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


@atexit.register
def _stop_live_pools() -> None:
    # Registered after multiprocessing's own exit hook, so it runs first:
    # workers are gone before multiprocessing tries to join them.
    for pool in list(_live_pools):
        try:
            pool.shutdown(wait=False, cancel_futures=True, kill=True)
        except Exception:
            log.exception("anypool: failed to stop a pool at exit")


class _Submitter:
    """What ``Pool`` and ``PoolView`` share: submitting and mapping with a set of options."""

    _pool: Pool
    _options: TaskOptions

    @overload
    def submit(self, fn: Callable[..., Coroutine[Any, Any, T]], /,
               *args: Any, **kwargs: Any) -> Future[T]: ...
    @overload
    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]: ...
    @overload
    def submit(self, fn: Command, /, *args: Any, **kwargs: Any) -> Future[CommandResult]: ...

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)`` and return its :class:`~anypool.Future`.

        Every keyword goes to ``fn``; per-task options go through
        :meth:`with_options`.

        Raises:
            PoolClosed: the pool is shut down.
            BrokenPool: the pool is broken (a worker initializer failed).
            SerializationError: on a process-based backend, ``fn`` or an
                argument cannot be pickled (the message names it).
        """
        pool = self._pool
        dispatch = pool._dispatch
        fut: Future[Any] = pool._backend.future_for(fn)()
        tid = dispatch.begin(1)
        # no kwargs: None, not the fresh empty dict of each call (see CALL);
        # a one-item tuple, not a list: one object, not two (16 B less per pending task)
        task = Task(tid, fn, ((args, kwargs or None),), CALL, self._options, fut, seq=tid)
        if dispatch.observing:  # before the backend has it: it may start, even finish, at once
            dispatch.queued(task)
        try:
            pool._backend.submit(task)
        except BaseException:
            dispatch.abort(1)
            raise
        return fut

    @overload
    def map(self, fn: Callable[..., Coroutine[Any, Any, T]],
            *iterables: Iterable[Any], timeout: float | None = None, chunksize: int | None = None,
            buffersize: int | None = None) -> MapIterator[T]: ...
    @overload
    def map(self, fn: Callable[..., T], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int | None = None, buffersize: int | None = None) -> MapIterator[T]: ...
    @overload
    def map(self, fn: Command, *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int | None = None, buffersize: int | None = None) -> MapIterator[CommandResult]: ...

    def map(
        self,
        fn: Any,
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
    ) -> MapIterator[Any]:
        """Like ``Executor.map``: results in input order, lazily, with bounded work in flight.

        Args:
            timeout: seconds from this call until every result must be in;
                past it, iteration raises ``TimeoutError`` (the stdlib
                meaning; a per-task limit is ``with_options(timeout=)``).
            chunksize: items per batch; default: sized from measured task time.
            buffersize: the most items in flight at once (default: a small
                multiple of the worker count, in batches).

        Raises (while iterating): the first failed task's exception, at its position.
        """
        return self._map(fn, iterables, True, timeout, chunksize, buffersize, False)

    @overload
    def imap(self, fn: Callable[..., Coroutine[Any, Any, T]],
             *iterables: Iterable[Any], chunksize: int | None = None, buffersize: int | None = None,
             return_exceptions: bool = False) -> MapIterator[T]: ...
    @overload
    def imap(self, fn: Callable[..., T], *iterables: Iterable[Any], chunksize: int | None = None,
             buffersize: int | None = None, return_exceptions: bool = False) -> MapIterator[T]: ...
    @overload
    def imap(self, fn: Command, *iterables: Iterable[Any], chunksize: int | None = None,
             buffersize: int | None = None,
             return_exceptions: bool = False) -> MapIterator[CommandResult]: ...

    def imap(self, fn: Any, *iterables: Iterable[Any], chunksize: int | None = None,
             buffersize: int | None = None, return_exceptions: bool = False) -> MapIterator[Any]:
        """Lazy ordered map; with ``return_exceptions`` a failed item yields its exception."""
        return self._map(fn, iterables, True, None, chunksize, buffersize, return_exceptions)

    @overload
    def imap_unordered(self, fn: Callable[..., Coroutine[Any, Any, T]],
                       *iterables: Iterable[Any], chunksize: int | None = None,
                       buffersize: int | None = None, return_exceptions: bool = False) -> MapIterator[T]: ...
    @overload
    def imap_unordered(self, fn: Callable[..., T], *iterables: Iterable[Any],
                       chunksize: int | None = None, buffersize: int | None = None,
                       return_exceptions: bool = False) -> MapIterator[T]: ...
    @overload
    def imap_unordered(self, fn: Command, *iterables: Iterable[Any],
                       chunksize: int | None = None, buffersize: int | None = None,
                       return_exceptions: bool = False) -> MapIterator[CommandResult]: ...

    def imap_unordered(self, fn: Any, *iterables: Iterable[Any],
                       chunksize: int | None = None, buffersize: int | None = None,
                       return_exceptions: bool = False) -> MapIterator[Any]:
        """Lazy map yielding results as they finish (batch by batch), not in input order."""
        return self._map(fn, iterables, False, None, chunksize, buffersize, return_exceptions)

    def _map(self, fn: Callable[..., Any], iterables: tuple[Iterable[Any], ...], ordered: bool,
             timeout: float | None, chunksize: int | None, buffersize: int | None,
             return_exceptions: bool) -> MapIterator[Any]:
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        pool = self._pool
        source, style, length = source_of(iterables)
        run = MapRun(
            dispatch=pool._dispatch, backend=pool._backend, fn=fn, source=source, style=style,
            options=self._options, ordered=ordered, length=length, chunksize=chunksize,
            buffersize=buffersize, timeout=timeout, return_exceptions=return_exceptions,
        )
        bar = pool._progress
        if bar is not None and length is not None:
            bar.expect(run, length)
        return MapIterator(run)

    def with_options(self, **options: Any) -> PoolView:
        """A view of the pool whose tasks use these options instead of the pool's.

        ``pool.with_options(timeout=5, retries=2).submit(fn, x)``.  Options:
        ``timeout``, ``retries``, ``retry_on``, ``backoff``, ``backoff_max``.

        Raises:
            TypeError: an unknown option name.
            ValueError: an out-of-range value.
        """
        return PoolView(self._pool, self._options.merged(**options))


class PoolView(_Submitter):
    """The pool seen with other task options (from :meth:`Pool.with_options`)."""

    def __init__(self, pool: Pool, options: TaskOptions) -> None:
        self._pool = pool
        self._options = options

    @property
    def options(self) -> TaskOptions:
        """The task options this view applies."""
        return self._options


class Pool(_Submitter, cf.Executor):
    """Run callables concurrently on the backend that suits them.

    Args:
        backend: ``"auto"`` (default: coroutine functions → ``async``,
            commands → ``subprocess``, sync callables → ``process`` when
            measured CPU-bound holding the GIL, else ``thread``), or
            ``"thread"``, ``"process"``, ``"async"``, ``"process+async"``,
            ``"subprocess"``, ``"dask"``, ``"inline"``.
        workers: how many tasks run at once (threads, processes,
            coroutines); default: the CPUs available (10,000 on ``async``).
            ``max_workers`` is accepted as a synonym.  Under ``auto`` it sizes
            the thread and process pools; coroutines are capped by
            ``concurrency`` instead (default 10,000).
        timeout, retries, retry_on, backoff, backoff_max: the default
            :class:`~anypool.TaskOptions` for every task.
        initializer, initargs: called once in each worker before its first task.
        max_tasks_per_worker: replace a worker process after this many tasks.
        max_memory_per_worker: replace a worker process, between tasks, once
            its resident memory passes this many bytes.
        start_method: ``"forkserver"``, ``"fork"`` or ``"spawn"``, for
            process backends.  Default: the first workers are forked while
            the program has a single thread, all others come from the fork
            server.
        concurrency: coroutines per worker process (``process+async``), and
            coroutines at once on an ``auto`` pool's ``async`` backend.
        address: the Dask scheduler (``dask``); default: a local cluster.
        progress: show a progress bar (tqdm, with ETA and done / failed /
            retried counts): True when stderr is a terminal or in a Jupyter
            notebook (and ``ANYPOOL_PROGRESS`` is not ``0``), ``"always"``
            even when it is not, False (default) never.
        observers: callables receiving every :class:`~anypool.TaskEvent`.
        record: keep a timeline of every attempt, readable as ``pool.timeline()``.
        joblog: a path: record every finished attempt of every task in this
            SQLite job log (created if missing, appended to otherwise); see
            :mod:`anypool.observers.joblog`.
        backend_options: options only one backend understands: ``security``
            (a ``distributed.Security``, for ``tls://`` clusters) and
            ``connect_timeout`` (seconds) on ``dask``; ``own_loop=True`` on
            ``async`` runs the coroutines on the pool's own loop thread even
            when the pool is created inside a running loop; ``on_output`` on
            ``subprocess`` streams each job's output lines as they come.  An
            option the backend does not take raises ``TypeError``.

    Raises:
        BackendUnavailable: unknown backend, or its extra is not installed.
        ValueError: ``workers`` < 1, an out-of-range option, or a ``progress``
            other than True, False or ``"always"``.
        JobLogError: ``joblog`` names a file that is not a job log.
    """

    def __init__(
        self,
        backend: str = "auto",
        workers: int | None = None,
        *,
        max_workers: int | None = None,
        timeout: float | None = None,
        retries: int = 0,
        retry_on: Any = (Exception,),
        backoff: float = 0.1,
        backoff_max: float = 30.0,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | None = None,
        start_method: str | None = None,
        concurrency: int | None = None,
        address: str | None = None,
        progress: bool | str = False,
        observers: Iterable[Observer] = (),
        record: bool = False,
        joblog: str | os.PathLike[str] | None = None,
        **backend_options: Any,
    ) -> None:
        if max_workers is not None:
            if workers is not None and workers != max_workers:
                raise TypeError("give workers= or max_workers=, not both")
            workers = max_workers
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
            raise ValueError(f"workers must be an int >= 1, not {workers!r}")
        for name, value in (("max_tasks_per_worker", max_tasks_per_worker),
                            ("max_memory_per_worker", max_memory_per_worker),
                            ("concurrency", concurrency)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an int >= 1 or None, not {value!r}")
        if progress not in (True, False, None, "always"):
            raise ValueError(f"progress must be True, False or 'always', not {progress!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, not {initializer!r}")
        self._options = TaskOptions(timeout, retries, retry_on, backoff, backoff_max)
        self._pool = self
        self._backend_name = backend
        self._config = BackendConfig(
            workers=workers, initializer=initializer, initargs=tuple(initargs),
            max_tasks_per_worker=max_tasks_per_worker, max_memory_per_worker=max_memory_per_worker,
            start_method=start_method, concurrency=concurrency, address=address,
            extra=backend_options,
        )
        if backend == "auto":
            from .choose import AutoBackend

            backend_cls: type[Backend] = AutoBackend
        else:
            backend_cls = get_backend(backend)
        unknown = sorted(set(backend_options) - set(backend_cls.options))
        if unknown:
            takes = ", ".join(backend_cls.options) or "none"
            raise TypeError(
                f"unknown option(s) for backend {backend!r}: {', '.join(unknown)} "
                f"(its own options: {takes}; see Pool's docstring for the common ones)"
            )
        self._stats = StatsCollector(backend, workers or 0)
        self._dispatch = Dispatch(self._stats, list(observers))
        self._backend = backend_cls(self._config, self._dispatch)
        self._dispatch.backend = self._backend
        self._stats.workers = self._backend.workers
        self._shutdown_lock = threading.Lock()
        self._shut = False
        self._recorder: Recorder | None = None
        self._closers: list[Callable[[], None]] = []
        if record:
            from .observers.recorder import Recorder

            self._recorder = Recorder()
            self._dispatch.record(self._recorder)
        if joblog is not None:
            # an observer like the recorder; the log is closed with the pool
            from .observers.joblog import JobLog, JobLogObserver

            log_ = JobLog(joblog)
            log_.begin_run({"pool": backend})
            self._dispatch.add_observer(JobLogObserver(log_))
            self._closers.append(log_.close)
        self._progress: Progress | None = None
        if progress:
            from .observers.progress import Progress

            self._progress = Progress.for_pool(self, progress)
            if self._progress is not None:
                self._closers.append(self._progress.close)
        _live_pools.add(self)
        log.debug("anypool: pool started on %s", self._backend.describe())

    # -- introspection --------------------------------------------------------

    @property
    def backend(self) -> str:
        """The backend name this pool was created with."""
        return self._backend_name

    @property
    def workers(self) -> int:
        """How many tasks run at once at most."""
        return self._backend.workers

    @property
    def options(self) -> TaskOptions:
        """The pool's default task options."""
        return self._options

    @property
    def stats(self) -> PoolStats:
        """A frozen snapshot of counters and timings; ``print(pool.stats)`` for a table."""
        return self._stats.snapshot(lambda: self._dispatch.submitted)  # read last: see snapshot

    def add_observer(self, observer: Observer) -> None:
        """Start sending every :class:`~anypool.TaskEvent` to ``observer``."""
        self._dispatch.add_observer(observer)

    def remove_observer(self, observer: Observer) -> None:
        """Stop sending events to ``observer``."""
        self._dispatch.remove_observer(observer)

    def timeline(self) -> list[Row]:
        """Every attempt recorded so far, oldest first (needs ``record=True``).

        Raises:
            RuntimeError: the pool was created without ``record=True``.
        """
        if self._recorder is None:
            raise RuntimeError("pool.timeline() needs record=True when the pool is created")
        return self._recorder.rows()

    def report(self, path: str | os.PathLike[str], *, title: str | None = None) -> str:
        """Write the timeline report of this pool's run so far to ``path``; return its absolute path.

        One self-contained HTML file (see :mod:`anypool.observers.report`):
        a timeline of every recorded attempt by worker, coloured by outcome,
        a histogram of run times, utilisation and this pool's ``stats``.
        Callable while the pool runs, or after ``shutdown``.

        Raises:
            RuntimeError: the pool was created without ``record=True``.
            OSError: the file cannot be written.
        """
        if self._recorder is None:
            raise RuntimeError("pool.report() needs a timeline: create the pool with record=True, "
                               "e.g. anypool.Pool(..., record=True)")
        from .observers.report import write_report

        rec = self._recorder
        return write_report(path, rec.rows(), stats=self.stats, sampled=rec.sampled,
                            title=title if title is not None else f"anypool: {self._backend.describe()}")

    # -- lifecycle ------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False, kill: bool = False) -> None:
        """Stop taking tasks and release the workers.

        Args:
            wait: block until every submitted task is final and the workers
                are gone; with False, return at once (the work finishes in
                the background, and then the workers exit).
            cancel_futures: cancel the tasks that have not started.
            kill: stop running tasks now (worker processes are killed, their
                tasks fail with ``PoolClosed``; threads cannot be killed and
                run their current call to its end).  With ``wait``, returns
                once the killed tasks are settled and recorded (within
                ``KILL_SETTLE`` seconds), where every task could be killed.
        """
        if wait and not kill and self._dispatch.outstanding and \
                getattr(self._backend, "loop_thread", None) == threading.get_ident():
            raise RuntimeError(
                "shutdown(wait=True) would block the event loop that runs this pool's tasks; "
                "use `await pool.ashutdown()` or `async with Pool(...)`"
            )
        with self._shutdown_lock:
            first = not self._shut
            self._shut = True
        self._dispatch.close()
        if cancel_futures or kill:
            cancel = getattr(self._backend, "cancel_pending", None)
            if cancel is not None:
                cancel()
        if kill:
            self._backend.shutdown(wait=False, kill=True)
            # The killed tasks are reported a moment later (a worker's death
            # is noticed, a job's group gets its grace): the job log and the
            # bar close after that, or those attempts would be missing from
            # them.  Not where tasks cannot be killed (threads run on).
            if wait:
                if self._backend.kills_running():
                    self._dispatch.wait_idle(KILL_SETTLE)
                self._finish_closing(first)
            else:
                threading.Thread(target=self._close_when_killed, args=(first,),
                                 name="anypool-shutdown", daemon=True).start()
            return
        if wait:
            self._dispatch.wait_idle()
            self._backend.shutdown(wait=True)
            self._finish_closing(first)
            return
        threading.Thread(target=self._close_when_idle, args=(first,), name="anypool-shutdown",
                         daemon=True).start()

    def _close_when_idle(self, first: bool) -> None:
        self._dispatch.wait_idle()
        self._backend.shutdown(wait=True)
        self._finish_closing(first)

    def _close_when_killed(self, first: bool) -> None:
        if self._backend.kills_running():
            self._dispatch.wait_idle(KILL_SETTLE)
        self._finish_closing(first)

    def _finish_closing(self, first: bool) -> None:
        if not first:
            return
        _live_pools.discard(self)
        self._stats.close()
        closers, self._closers = self._closers, []
        for close in closers:
            try:
                close()
            except Exception:
                log.exception("anypool: failed to close %r", close)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            # Ctrl-C or SystemExit: stop now rather than wait for running work
            self.shutdown(wait=False, cancel_futures=True, kill=True)
        else:
            self.shutdown(wait=True)

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            self.shutdown(wait=False, cancel_futures=True, kill=True)
            return
        await self.ashutdown()

    async def ashutdown(self, *, cancel_futures: bool = False) -> None:
        """``shutdown(wait=True)`` for coroutines: waits without blocking the event loop."""
        self._dispatch.close()
        if cancel_futures:
            cancel = getattr(self._backend, "cancel_pending", None)
            if cancel is not None:
                cancel()
        import asyncio

        await asyncio.wrap_future(self._dispatch.idle_future())
        self.shutdown(wait=False)

    def __repr__(self) -> str:
        state = "shut down" if self._shut else "running"
        return f"<anypool.Pool {self._backend.describe()} {state}>"


@overload
def map(fn: Callable[..., Coroutine[Any, Any, T]], *iterables: Iterable[Any],  # noqa: A001
        backend: str = "auto", workers: int | None = None, chunksize: int | None = None,
        **options: Any) -> list[T]: ...
@overload
def map(fn: Callable[..., T], *iterables: Iterable[Any], backend: str = "auto",  # noqa: A001
        workers: int | None = None, chunksize: int | None = None, **options: Any) -> list[T]: ...
@overload
def map(fn: Command, *iterables: Iterable[Any], backend: str = "auto",  # noqa: A001
        workers: int | None = None, chunksize: int | None = None,
        **options: Any) -> list[CommandResult]: ...


def map(fn: Any, *iterables: Iterable[Any], backend: str = "auto",  # noqa: A001
        workers: int | None = None, chunksize: int | None = None, **options: Any) -> list[Any]:
    """Run ``fn`` over the iterables on a pool built for this call; return results in order.

    Keyword ``options`` are :class:`Pool` arguments (``timeout`` here is the
    per-task limit, ``progress``, ``retries``, ``initializer``, ...).

    Raises:
        BaseException: the first failed task's exception (after its retries).
    """
    with Pool(backend, workers, **options) as pool:
        return list(pool.imap(fn, *iterables, chunksize=chunksize))


@overload
def imap(fn: Callable[..., Coroutine[Any, Any, T]], *iterables: Iterable[Any], backend: str = "auto",
         workers: int | None = None, ordered: bool = True, chunksize: int | None = None,
         **options: Any) -> Iterator[T]: ...
@overload
def imap(fn: Callable[..., T], *iterables: Iterable[Any], backend: str = "auto",
         workers: int | None = None, ordered: bool = True, chunksize: int | None = None,
         **options: Any) -> Iterator[T]: ...
@overload
def imap(fn: Command, *iterables: Iterable[Any], backend: str = "auto",
         workers: int | None = None, ordered: bool = True, chunksize: int | None = None,
         **options: Any) -> Iterator[CommandResult]: ...


def imap(fn: Any, *iterables: Iterable[Any], backend: str = "auto",
         workers: int | None = None, ordered: bool = True, chunksize: int | None = None,
         **options: Any) -> Iterator[Any]:
    """Lazily run ``fn`` over the iterables on a pool that closes when iteration ends.

    Input is read as results are consumed, with bounded work in flight, so an
    endless generator is fine.  ``ordered=False`` yields in completion order.
    """
    pool = Pool(backend, workers, **options)
    finished = False
    try:
        if ordered:
            yield from pool.imap(fn, *iterables, chunksize=chunksize)
        else:
            yield from pool.imap_unordered(fn, *iterables, chunksize=chunksize)
        finished = True
    finally:
        if finished:
            pool.shutdown(wait=True)
        else:  # the consumer stopped early or a task failed: the rest is not wanted
            pool.shutdown(wait=False, cancel_futures=True, kill=True)
