"""``Pool``: one ``concurrent.futures.Executor`` over every backend, and one-shot helpers.

The pool owns the policy (options, retries, windows, statistics, events) and
hands the mechanism to a backend.  Code written for ``ThreadPoolExecutor`` or
``ProcessPoolExecutor`` runs unchanged; ``imap``, ``imap_unordered``,
``with_options`` and ``stats`` are extras.

Differences from the standard executors, on purpose:

* ``map`` is lazy: it submits a bounded window of work at once and the rest
  as you consume results, so an endless input uses flat memory.  A ``map``
  you never iterate runs only its first window until the pool shuts down;
  then an input of known length (a list, a range...) is run to its end, so
  its results can be read after the ``with`` block as with the stdlib, and
  one of unknown length (maybe endless) stops, raising ``PoolClosed`` after
  the results it had.
* A worker that dies fails only its own task (``WorkerCrashed``); the pool
  goes on.  ``BrokenProcessPool`` handlers still catch it.
* ``shutdown(kill=True)`` stops running work now; leaving a ``with`` block
  on ``KeyboardInterrupt`` or ``SystemExit`` does the same.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from . import exiting, waiting
from .backends import get_backend
from .backends.base import Backend, BackendConfig
from .dispatch import Dispatch
from .errors import PoolClosed
from .events import Observer
from .futures import Future
from .interrupts import HeldInterrupts
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

# multiprocessing's start methods (whether this platform has one is checked when workers start)
_START_METHODS = ("fork", "forkserver", "spawn")


class _Life:
    """A pool's shutdown, apart from the ``Pool`` object.

    A pool dropped without a shutdown is closed through this (the ``Pool``
    is gone by then), as the standard executors close theirs: its work
    finishes, then its workers exit.  The exit hook (``anypool.exiting``)
    finds every pool not yet closed here.
    """

    def __init__(self, dispatch: Dispatch, backend: Backend, stats: StatsCollector) -> None:
        self.dispatch = dispatch
        self.backend = backend
        self.stats = stats
        self.closers: list[Callable[[], None]] = []
        self.lock = threading.Lock()
        self.shut = False
        self.killed = False
        self.draining = False  # shut down without waiting: the work finishes in the background
        self.closing = False  # the job log and the bar are being closed, once
        self.closed = threading.Event()

    def shutdown(self, wait: bool, cancel_futures: bool, kill: bool) -> None:
        if sys.is_finalizing():
            # past the exit hook (a generator or a pool collected last): no thread
            # can start, and the pool's own would not run, so stop, as the hook does
            wait, cancel_futures, kill = False, True, True
        with self.lock:
            first = not self.shut
            self.shut = True
            self.killed = self.killed or kill
        dispatch = self.dispatch
        if wait and not kill and dispatch.serves_this_thread():
            # One of this pool's own threads (a task's, a done-callback's): the
            # work waited for would include the caller's own, and on a process
            # pool the manager thread that would report it.
            wait = False
        runs = [] if cancel_futures or kill else dispatch.finite_runs()
        for run in runs:
            run.keep_feeding()
        dispatch.close()
        if cancel_futures or kill:
            cancel = getattr(self.backend, "cancel_pending", None)
            if cancel is not None:
                cancel()
        if kill:
            self.draining = False
            # Ctrl-C pressed again must not stop the kill half way (workers
            # left running, which multiprocessing's exit hook would wait for)
            with HeldInterrupts():
                self.backend.shutdown(wait=False, kill=True)
                # The killed tasks are reported a moment later (a worker's death
                # is noticed, a job's group gets its grace): the job log and the
                # bar close after that, or those attempts would be missing from
                # them.  Not where tasks cannot be killed (threads run on).
                if wait or sys.is_finalizing():
                    if self.backend.kills_running():
                        dispatch.wait_idle(KILL_SETTLE)
                    self._finish_closing()
                else:
                    threading.Thread(target=self._close_when_killed, name="anypool-shutdown",
                                     daemon=True).start()
            return
        if wait:
            try:
                for run in runs:
                    run.feed_to_end()
                dispatch.wait_idle()
                self.backend.shutdown(wait=True)
            except BaseException:
                # Ctrl-C while waiting: stop the work now, as leaving a `with` on Ctrl-C does
                self.shutdown(wait=False, cancel_futures=True, kill=True)
                raise
            self._finish_closing()
            return
        if first:
            self.draining = True
            threading.Thread(target=self._close_when_idle, args=(runs,), name="anypool-shutdown",
                             daemon=True).start()

    def _close_when_idle(self, runs: list[MapRun]) -> None:
        for run in runs:
            run.feed_to_end()
        self.dispatch.wait_idle()
        if not self.killed:
            self.backend.shutdown(wait=True)
        self._finish_closing()

    def _close_when_killed(self) -> None:
        if self.backend.kills_running():
            self.dispatch.wait_idle(KILL_SETTLE)
        self._finish_closing()

    def _finish_closing(self) -> None:
        with self.lock:
            if self.closing:
                return
            self.closing = True
        exiting.discard(self)
        self.stats.close()
        closers, self.closers = self.closers, []
        for close in closers:
            try:
                close()
            except Exception:
                log.exception("anypool: failed to close %r", close)
        self.closed.set()

    def dropped(self) -> None:
        """The ``Pool`` was garbage-collected: close it as ``shutdown(wait=False)`` would."""
        if self.shut:
            return
        if sys.is_finalizing():
            self.shutdown(wait=False, cancel_futures=False, kill=False)
            return
        # Not here: the collection may run inside one of this pool's own
        # threads while it holds the dispatcher's lock, which shutdown takes.
        self.draining = True  # for the exit hook, should it run before that thread
        threading.Thread(target=self.shutdown, args=(False, False, False), name="anypool-shutdown",
                         daemon=True).start()

    # -- for the exit hook --------------------------------------------------

    def kill_at_exit(self) -> None:
        self.shutdown(wait=True, cancel_futures=True, kill=True)

    def wait_closed(self) -> None:
        while not self.closed.wait(waiting.slice_of(None)):
            pass


def _stats_reader(stats: StatsCollector, dispatch: Dispatch) -> Callable[[], PoolStats]:
    """A function returning a pool's statistics snapshot, holding its parts, not the pool."""
    def read() -> PoolStats:
        return stats.snapshot(lambda: dispatch.submitted)  # read last: see snapshot
    return read


class _Submitter:
    """What ``Pool`` and ``PoolView`` share: submitting and mapping with a set of options."""

    # The pool a view submits to; None on the pool itself, which is then its
    # own target (a reference to itself would make every pool a cycle, freed
    # only by a full collection: a dropped pool would not finish its work)
    _pool: Pool | None = None
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
        pool: Pool = self._pool or self  # type: ignore[assignment]
        dispatch = pool._dispatch
        fut: Future[Any] = pool._backend.future_for(fn)()
        tid = dispatch.begin(1)
        # no kwargs: None, not the fresh empty dict of each call (see CALL);
        # a one-item tuple, not a list: one object, not two (16 B less per pending task)
        task = Task(tid, fn, ((args, kwargs or None),), CALL, self._options, fut, seq=tid)
        try:
            if dispatch.observing:  # before the backend has it: it may start, even finish, at once
                dispatch.queued(task)
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

        Raises:
            PoolClosed: the pool is shut down.
            TypeError, ValueError: a bad ``chunksize`` or ``buffersize``.

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
        for name, value in (("chunksize", chunksize), ("buffersize", buffersize)):
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int or None, not {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, not {value!r}")
        pool: Pool = self._pool or self  # type: ignore[assignment]
        if pool._dispatch.closed:  # as submit and the stdlib: at the call, before reading any input
            raise PoolClosed("cannot map over a pool that is shut down")
        source, style, length = source_of(iterables)
        run = MapRun(
            dispatch=pool._dispatch, backend=pool._backend, fn=fn, source=source, style=style,
            options=self._options, ordered=ordered, length=length, chunksize=chunksize,
            buffersize=buffersize, timeout=timeout, return_exceptions=return_exceptions,
        )
        run.owner = pool  # a pool dropped while its map is read would close under the reader
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
        return PoolView(self._pool or self, self._options.merged(**options))  # type: ignore[arg-type]


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
        max_tasks_per_worker: replace a worker process after this many tasks
            (each map item counts: batches are cut to fit).
        max_memory_per_worker: replace a worker process, between tasks, once
            its resident memory passes this many bytes.  On ``process`` it
            is read after every task (each map item counts; tasks of under
            0.1 ms share a reading): the task that passes it is the worker's
            last, and the rest of its batch runs on another worker.  On
            ``process+async`` it is read as results come back: a process
            past it is sent no more, and the coroutines it holds run to
            their end.  These two and ``start_method`` are refused where no
            worker processes run (``thread``, ``async``, ``subprocess``,
            ``inline``, ``dask``).
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
        ValueError: ``workers`` < 1, an out-of-range option, an option the
            backend cannot apply, or a ``progress`` other than True, False or
            ``"always"``.
        JobLogError: ``joblog`` names a file that is not a job log, or one
            that another process (or another open pool) is writing.
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
        if start_method is not None and start_method not in _START_METHODS:
            raise ValueError(f"start_method must be one of {', '.join(map(repr, _START_METHODS))} "
                             f"or None, not {start_method!r}")
        if progress not in (True, False, None, "always"):
            raise ValueError(f"progress must be True, False or 'always', not {progress!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, not {initializer!r}")
        self._options = TaskOptions(timeout, retries, retry_on, backoff, backoff_max)
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
        if not backend_cls.process_options:
            given: tuple[tuple[str, object], ...] = (
                ("start_method", start_method), ("max_tasks_per_worker", max_tasks_per_worker),
                ("max_memory_per_worker", max_memory_per_worker))
            for opt, val in given:
                if val is not None:
                    raise ValueError(
                        f"{opt}= does not apply to the {backend!r} backend: it runs no worker "
                        "processes of anypool's (it applies to 'process', 'process+async' and 'auto')")
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
        self._life = _Life(self._dispatch, self._backend, self._stats)
        # what reads the counters without holding the pool (the progress bar's thread
        # holding it would keep a dropped pool alive, and its work would be killed at exit)
        self._read_stats = _stats_reader(self._stats, self._dispatch)
        self._recorder: Recorder | None = None
        if record:
            from .observers.recorder import Recorder

            self._recorder = Recorder()
            self._dispatch.record(self._recorder)
        if joblog is not None:
            # an observer like the recorder; the log is closed with the pool
            from .observers.joblog import JobLog, JobLogObserver

            log_ = JobLog(joblog)
            try:
                log_.begin_run({"pool": backend})
            except BaseException:
                log_.close()  # and its writer lock with it
                raise
            self._dispatch.add_observer(JobLogObserver(log_))
            self._life.closers.append(log_.close)
        self._progress: Progress | None = None
        if progress:
            from .observers.progress import Progress

            self._progress = Progress.for_pool(self, progress)
            if self._progress is not None:
                self._life.closers.append(self._progress.close)
        exiting.add(self._life)
        # not atexit: the exit hook closes the pools still open, in its own order
        weakref.finalize(self, self._life.dropped).atexit = False
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
        return self._read_stats()

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

        A ``map``/``imap`` over an input of known length (a list, a range...)
        made before the shutdown still runs to its end, as the standard
        executors' ``map`` does, so its results can be read afterwards; one
        over an iterator (possibly endless) yields what was submitted, then
        raises ``PoolClosed``.

        Args:
            wait: block until every submitted task is final and the workers
                are gone; with False, return at once (the work finishes in
                the background, even past the end of the program, and then
                the workers exit).  Called from one of the pool's own tasks
                or done-callbacks, where waiting would wait for the caller
                itself, it does not wait.
            cancel_futures: cancel the tasks that have not started (and
                the rest of every map's input).
            kill: stop running tasks now (worker processes are killed, their
                tasks fail with ``PoolClosed``; threads cannot be killed and
                run their current call to its end).  With ``wait``, returns
                once the killed tasks are settled and recorded (within
                ``KILL_SETTLE`` seconds), where every task could be killed.
        """
        let_go = getattr(self._backend, "let_go_if_closed", None)
        if let_go is not None:
            # attached to a loop closed since: what it never finished fails now,
            # instead of being waited for (for ever) or blamed on a loop gone
            let_go()
        if wait and not kill and self._dispatch.outstanding and \
                getattr(self._backend, "loop_thread", None) == threading.get_ident():
            raise RuntimeError(
                "shutdown(wait=True) would block the event loop that runs this pool's tasks; "
                "use `await pool.ashutdown()` or `async with Pool(...)`"
            )
        self._life.shutdown(wait, cancel_futures, kill)

    @property
    def _shut(self) -> bool:
        return self._life.shut

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
        runs = [] if cancel_futures else self._dispatch.finite_runs()
        for run in runs:
            run.keep_feeding()
        self._dispatch.close()
        if cancel_futures:
            cancel = getattr(self._backend, "cancel_pending", None)
            if cancel is not None:
                cancel()
        for run in runs:
            run.feed_to_end()
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
    The pool is built and the arguments checked at the call, as ``Pool.imap``
    checks them.

    Raises:
        BackendUnavailable: an unknown backend, or one whose extra is missing.
        ValueError, TypeError: a bad option or ``chunksize``.
        BaseException (while iterating): the first failed task's exception.
    """
    pool = Pool(backend, workers, **options)
    try:
        if ordered:
            results = pool.imap(fn, *iterables, chunksize=chunksize)
        else:
            results = pool.imap_unordered(fn, *iterables, chunksize=chunksize)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True, kill=True)
        raise
    return _closing(pool, results)


def _closing(pool: Pool, results: Iterator[Any]) -> Iterator[Any]:
    """``results``, then ``pool`` shut down: waited for at their end, killed if left early."""
    finished = False
    try:
        yield from results
        finished = True
    finally:
        if finished:
            pool.shutdown(wait=True)
        else:  # the consumer stopped early or a task failed: the rest is not wanted
            pool.shutdown(wait=False, cancel_futures=True, kill=True)
