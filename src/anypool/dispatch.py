"""The dispatcher: where every backend reports, and where the core's policy lives.

Backends run tasks; the dispatcher decides what an outcome means::

    backend ──finish(task, results)──> Dispatch ──> Future.set_result / set_exception
                                          │     └─> Batch.deliver (map result slots)
                                          ├─> retry?  back-off on the shared clock, resubmit
                                          ├─> WorkerStats (counters, timing histograms)
                                          ├─> the timeline (``Recorder``), if the pool records
                                          └─> observers (TaskEvent), only if any are attached
                                              (``finished_only`` ones get no queued/started events)

It also keeps the count of *outstanding* units (submitted and not yet
final), which is what ``shutdown(wait=True)`` waits on, and the pool's
broken state (a failed initializer).  Nothing here is backend-specific.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import clock, waiting
from .errors import PoolClosed, add_note, exception_line
from .events import Observer, TaskEvent
from .futures import Attempt
from .stats import UNASSIGNED
from .tasks import Failure, Task

if TYPE_CHECKING:
    from .backends.base import Backend
    from .mapping import MapRun
    from .observers.recorder import Recorder
    from .stats import StatsCollector, WorkerStats

__all__ = ["Dispatch"]

log = logging.getLogger("anypool")

_new_event: Any = tuple.__new__

# Which pool the current thread works for (see serve()).
_serving = threading.local()
EVERY_POOL = object()  # a thread every pool may need: the shared clock's


def serve(dispatch: object) -> None:
    """Mark the current thread as one ``dispatch``'s pool needs to finish its work.

    Its worker, manager and loop threads run tasks and done-callbacks: a
    ``shutdown()`` there must not wait for that pool's work (itself among it).
    """
    _serving.dispatch = dispatch


def serving() -> object:
    """What the current thread was marked as serving (None: nothing)."""
    return getattr(_serving, "dispatch", None)


_NAME_LIMIT = 200  # characters of an argv command kept as its name

# Failure kinds that another attempt cannot fix.
_NEVER_RETRY = frozenset({"cancelled", "unsendable"})


def fn_name(fn: Any) -> str:
    """The name events and messages use for a task's callable."""
    if isinstance(fn, str):
        return fn
    if isinstance(fn, (list, tuple)):
        # A command given as an argv: named by the command, shell-quoted as one
        # would type it (by its type it read "list" in events and reports).
        # Cut: an argv may be long, and the name is repeated in every event and row.
        import shlex

        words = (os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in fn)
        text = shlex.join(words)
        return text if len(text) <= _NAME_LIMIT else text[: _NAME_LIMIT - 1] + "…"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None and isinstance(fn, functools.partial):
        return f"partial({fn_name(fn.func)})"
    return str(name or type(fn).__name__)


class Dispatch:
    """Settles task outcomes for one pool (see the module docstring)."""

    def __init__(self, stats: StatsCollector, observers: Sequence[Observer] = ()) -> None:
        self.backend: Backend | None = None
        self.stats = stats
        self.observers: list[Observer] = []
        self._lifecycle: list[Observer] = []
        self.observing = False  # an observer wants queued / started / retried events
        self.finishing = False  # an observer (or the timeline) wants finished events
        # The pool's timeline, fed rows directly rather than TaskEvents: a
        # submitted task's row then costs ~0.65 us of CPU against ~1.2 us.
        self._timeline: Recorder | None = None
        self._set_observers(list(observers))
        self.unassigned = stats.worker(UNASSIGNED)  # tasks that failed before reaching any worker
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._outstanding = 0
        self._submitted = 0
        self._next_id = 1
        self._closed = False
        self._idle_waiters: list[cf.Future[None]] = []
        self._runs: weakref.WeakSet[MapRun] = weakref.WeakSet()
        self.broken_exc: BaseException | None = None
        self._last_name: tuple[Any, str] = (None, "")  # (callable, fn_name of it)
        self._broken_predicates: list[Any] = []  # retry_on predicates that raised (logged once)

    # -- accounting ---------------------------------------------------------

    def begin(self, items: int, draining: bool = False) -> int:
        """Count one new unit of ``items`` tasks; return the id of its first task.

        ``draining``: a map run made before the shutdown, feeding the rest of its input.

        Raises:
            PoolClosed: the pool is shut down.
            BrokenPool: the pool is broken (e.g. an initializer failed).
        """
        with self._lock:
            if self._closed and not draining:
                raise PoolClosed("cannot submit tasks to a pool that is shut down")
            if self.broken_exc is not None:
                raise self.broken_exc
            first = self._next_id
            self._next_id += items
            self._submitted += items
            self._outstanding += 1
        return first

    def _end(self) -> None:
        with self._lock:
            self._outstanding -= 1
            if self._outstanding > 0:
                return
            self._idle.notify_all()
            waiters, self._idle_waiters = self._idle_waiters, []
            left = self._outstanding
        if left < 0:
            # A unit reported final twice: a bug in anypool.  Said loudly, with the
            # stack that reported it; and waiters still see the pool idle (below 0
            # counts as idle), or shutdown() would wait for ever without a word.
            log.error("anypool: internal error: a unit of work was reported final twice "
                      "(%d outstanding); please report this", left, stack_info=True)
        for f in waiters:
            try:
                f.set_result(None)
            except cf.InvalidStateError:
                pass  # cancelled: the ashutdown() that waited on it was itself cancelled

    def abort(self, items: int) -> None:
        """Undo a ``begin(items)`` whose unit never reached the backend (its submit raised).

        Its tasks are un-counted as well as the unit: the caller got the
        exception instead of a future, so they were never the pool's to run,
        and counted they would read as running for ever.
        """
        with self._lock:
            self._submitted -= items
        self._end()

    @property
    def submitted(self) -> int:
        return self._submitted

    @property
    def outstanding(self) -> int:
        return self._outstanding

    def add_run(self, run: MapRun) -> None:
        """Know of a map run, so a graceful shutdown can run its input to its end."""
        with self._lock:
            self._runs.add(run)

    def finite_runs(self) -> list[MapRun]:
        """The map runs still feeding from an input of known length (finite: in memory)."""
        with self._lock:
            runs = list(self._runs)
        return [r for r in runs if r.finite and not r.fed]

    def serves_this_thread(self) -> bool:
        """Whether the current thread is one this pool needs to finish its work (see ``serve``)."""
        owner = serving()
        return owner is self or owner is EVERY_POOL

    def close(self) -> None:
        """Refuse new units from now on."""
        with self._lock:
            self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every unit is final; False if ``timeout`` ran out first."""
        with self._idle:
            for step in waiting.slices(timeout):
                if self._outstanding <= 0:
                    return True
                self._idle.wait(step)
            return self._outstanding <= 0

    def idle_future(self) -> cf.Future[None]:
        """A future that completes when every unit is final (for ``await``)."""
        f: cf.Future[None] = cf.Future()
        with self._lock:
            if self._outstanding > 0:
                self._idle_waiters.append(f)
                return f
        f.set_result(None)
        return f

    # -- outcomes -----------------------------------------------------------

    def finish(
        self,
        task: Task,
        results: list[Any],
        started: float,
        ended: float,
        worker: WorkerStats,
        failed: Sequence[int] | None = None,
        times: Sequence[float] | None = None,
    ) -> None:
        """Report every item of ``task``: ``results[i]`` is a value or a ``Failure``.

        ``failed`` lists the indices holding a ``Failure`` (None: there are none),
        so the common all-good batch is never scanned item by item.  ``times``
        gives each item's own (start, end), flattened, where items overlapped
        (coroutines) or were timed one by one; else they share the batch's average.
        """
        if task.future is not None:
            self.finish_one(task, results[0], started, ended, worker)
            return
        batch = task.batch
        assert batch is not None
        n = len(results)
        if n != len(task.items):
            results, failed = self._misreported(task, n, worker)
            n = len(results)
        retried = 0
        retries: list[tuple[Task, Failure]] = []
        retrying: list[int] = []  # indices of the items tried again, for the finished event
        outcome = "ok"
        error: BaseException | None = None
        if failed:
            for i in failed:
                f = results[i]
                self._count_failure(f, worker)
                if outcome == "ok" or f.kind in ("crash", "timeout"):
                    outcome, error = f.kind, f.exc
                if self._may_retry(task, f):
                    retried += 1
                    retries.append((task.subtask(i, [task.items[i]]), f))
                    retrying.append(i)
                    results[i] = _RETRYING
                else:
                    if f.kind != "cancelled":  # counted as cancelled (above), never as failed too
                        worker.failed += 1
                    self._annotate(task, f.exc, worker, index=i)
        worker.done += n - len(failed or ())
        if worker is self.unassigned:
            pass  # never ran (cancelled or unsendable): no run time or queue wait to count
        elif times:
            for k in range(0, len(times), 2):
                worker.record(times[k], times[k + 1], task.submitted, 1)
        else:
            worker.record(started, ended, task.submitted, n)
        batch.run.observe(n, ended - started)
        if self.finishing:
            shown = results
            if retrying:  # the event shows what each retried item failed with, not the placeholder
                shown = list(results)  # a copy: the batch is delivered the placeholders
                for (_, f), i in zip(retries, retrying, strict=True):
                    shown[i] = f
            self._emit_finished(task, worker, started, ended, outcome, error, shown, not retried,
                                retrying=tuple(retrying))
        complete = batch.deliver(task.offset, results, n - retried, bool(failed))
        # Retries leave only now: one that finished before this delivery would
        # complete the batch, and this delivery (its placeholder and all) would
        # then complete it again, ending the unit twice (shutdown then waited
        # forever) and overwriting the retry's result.
        for sub, f in retries:
            self._schedule_retry(sub, f, started, ended, worker)
        if complete:
            self._end()

    @staticmethod
    def _misreported(task: Task, n: int, worker: WorkerStats) -> tuple[list[Any], range]:
        """Fail every item of a batch reported with ``n`` results for its items.

        Which result belongs to which item is then unknown, so none is kept;
        settled this way the batch still ends (a short one was never complete,
        and its map and the pool's shutdown waited for it for ever).
        """
        m = len(task.items)
        exc = RuntimeError(f"anypool: {worker.name} reported {n} results for the {m} items of "
                           f"{task.label()} (a bug in anypool): the batch is failed")
        log.error("%s", exc)
        return [Failure(exc) for _ in range(m)], range(m)

    def finish_one(self, task: Task, value: Any, started: float, ended: float, worker: WorkerStats) -> None:
        """Report a single-item task (the hot path of ``submit``)."""
        fut = task.future
        if fut is None:
            self.finish(task, [value], started, ended, worker,
                        [0] if type(value) is Failure else None)
            return
        if type(value) is Failure:
            self._count_failure(value, worker)
            if worker is not self.unassigned:  # else it never ran: no times to count
                worker.record(started, ended, task.submitted, 1)
            if self._may_retry(task, value):
                if self.finishing:
                    self._emit_finished(task, worker, started, ended, value.kind, value.exc,
                                        [value.exc], False, retrying=_FIRST_ITEM)
                self._schedule_retry(task, value, started, ended, worker)
                return
            if value.kind != "cancelled":  # a cancelled task is counted as cancelled, not failed
                worker.failed += 1
            if value.kind == "cancelled" and type(value.exc) is cf.CancelledError:
                # a coroutine cancelled by other code than cancel() (a timeout it
                # awaited, the loop's ending): cancelled, as asyncio marks its task
                fut._set_cancelled()
            else:
                self._annotate(task, value.exc, worker)
                try:
                    fut.set_exception(value.exc)
                except cf.InvalidStateError:
                    pass  # cancelled while running (async) or failed on time already
            if self.finishing:
                self._emit_finished(task, worker, started, ended, value.kind, value.exc,
                                    [value.exc], True)
        else:
            worker.done += 1
            worker.record(started, ended, task.submitted, 1)
            try:
                fut.set_result(value)
            except cf.InvalidStateError:
                pass
            if self.finishing:
                timeline = self._timeline
                if timeline is not None:
                    named, name = self._last_name  # _name, inline: this runs once a task
                    timeline.ok(task, worker.name, started, ended,
                                name if task.fn is named else self._name(task.fn))
                if self.observers:
                    self._emit_finished(task, worker, started, ended, "ok", None, [value], True,
                                        timeline=False)
        self._end()

    def discard(self, task: Task) -> None:
        """Drop a task that was cancelled before it ran."""
        with self._lock:  # backend threads may drop tasks at the same time
            self.unassigned.cancelled += len(task.items)
        if task.future is None:
            assert task.batch is not None
            if not task.batch.discard(len(task.items)):
                return
        self._end()

    def fail_unrun(self, task: Task, exc: BaseException, kind: str = "unsendable") -> None:
        """Fail every item of a task that never reached a worker (no retry)."""
        now = time.time()
        results: list[Any] = [Failure(exc, kind) for _ in task.items]
        self.finish(task, results, now, now, self.unassigned, range(len(results)))

    def cancel(self, task: Task) -> None:
        """Cancel a task that never ran (shutdown with ``cancel_futures``)."""
        if task.future is not None:
            task.future.cancel()
            self.discard(task)
        else:
            self.fail_unrun(task, cf.CancelledError("the pool was shut down before this task ran"),
                            "cancelled")

    def requeue(self, task: Task) -> None:
        """Give back a task that never started (e.g. queued on a worker that died).

        Its items fail as cancelled where the backend no longer takes work
        (shut down with ``kill=True`` meanwhile), as a retry's do: raising
        instead would leave them unsettled in the backend thread or clock
        callback that requeues, and the pool waiting for them for ever.
        """
        assert self.backend is not None
        try:
            self.backend.submit(task)
        except Exception as exc:
            self.fail_unrun(task, exc, "cancelled" if isinstance(exc, PoolClosed) else "unsendable")

    def broken(self, exc: BaseException) -> None:
        """Mark the pool broken: every later submit raises ``exc``."""
        with self._lock:
            if self.broken_exc is None:
                self.broken_exc = exc
                log.error("anypool: pool is broken: %s", exc)

    def started(self, task: Task, worker: WorkerStats) -> None:
        """Emit a ``started`` event (backends call this only when ``observing``)."""
        self.emit(TaskEvent("started", task.id, task.seq, len(task.items), task.attempt,
                            time.time(), fn_name(task.fn), worker.name, items=task.items))

    def queued(self, task: Task) -> None:
        """Emit a ``queued`` event (the pool calls this only when ``observing``)."""
        self.emit(TaskEvent("queued", task.id, task.seq, len(task.items), task.attempt,
                            task.submitted, fn_name(task.fn), items=task.items))

    # -- retries ------------------------------------------------------------

    @staticmethod
    def _count_failure(f: Failure, worker: WorkerStats) -> None:
        # "cancelled" is never retried, so this counts each cancelled task once:
        # it is final, and counted there instead of in ``failed``.
        if f.kind == "timeout":
            worker.timed_out += 1
        elif f.kind == "crash":
            worker.crashed += 1
        elif f.kind == "cancelled":
            worker.cancelled += 1

    def _may_retry(self, task: Task, f: Failure) -> bool:
        opts = task.options
        if task.attempt > opts.retries or f.kind in _NEVER_RETRY:
            return False
        try:
            return opts.should_retry(f.exc)
        except Exception as err:
            # Raised here, on a backend's thread or the loop, it would stop the
            # settling half-way: the worker gone, the map or the shutdown waiting for ever.
            self._predicate_failed(opts.retry_on, f.exc, err)
            return False

    def _predicate_failed(self, rule: Any, exc: BaseException, err: Exception) -> None:
        """A ``retry_on`` predicate raised: the task fails with its own error, which says so."""
        add_note(exc, f"anypool: not retried: the retry_on predicate {fn_name(rule)} raised {err!r}")
        with self._lock:
            if any(r is rule for r in self._broken_predicates):
                return
            self._broken_predicates.append(rule)
        log.error("anypool: the retry_on predicate %s raised; the failures it raises on are not "
                  "retried (logged once)", fn_name(rule), exc_info=err)

    def _schedule_retry(self, task: Task, f: Failure, started: float, ended: float,
                        worker: WorkerStats) -> None:
        worker.retried += 1
        fut = task.future
        if fut is not None:
            # Until its next attempt starts the task is not running: pending again,
            # so cancel() during the back-off succeeds (and claim() then drops it),
            # as asyncio's wait_for and timeout() expect of a future they cancel.
            with fut._condition:
                if fut._state == cf._base.RUNNING:
                    fut._state = cf._base.PENDING
            fut._add_attempt(Attempt(task.attempt, worker.name, started, ended, f.kind,
                                     exception_line(f.exc)))
        delay = task.options.delay(task.attempt)
        task.attempt += 1
        if self.observing:
            self.emit(TaskEvent("retried", task.id, task.seq, len(task.items), task.attempt,
                                time.time(), fn_name(task.fn), worker.name,
                                error=f.exc, items=task.items))
        if delay > 0:
            clock.call_later(delay, self._resubmit, task)
        else:
            self._resubmit(task)

    def _resubmit(self, task: Task) -> None:
        task.submitted = time.time()  # a retry's queue wait starts now, not at the first submit
        self.requeue(task)

    def _annotate(self, task: Task, exc: BaseException, worker: WorkerStats, index: int = 0) -> None:
        notes = getattr(exc, "__notes__", None)
        if notes and notes[-1].startswith("anypool: task"):
            return
        add_note(exc, f"anypool: task #{task.seq + index} ({fn_name(task.fn)}) failed on {worker.name}, "
                      f"attempt {task.attempt} of {task.options.retries + 1}")

    # -- events -------------------------------------------------------------

    def _emit_finished(self, task: Task, worker: WorkerStats, started: float, ended: float,
                       outcome: str, error: BaseException | None, results: Sequence[Any],
                       final: bool, timeline: bool = True, retrying: tuple[int, ...] = ()) -> None:
        shown = [r.exc if type(r) is Failure else r for r in results] if outcome != "ok" else results
        # tuple.__new__ skips TaskEvent's Python-level __new__: this runs once a task when observed
        event = _new_event(TaskEvent, ("finished", task.id, task.seq, len(task.items), task.attempt,
                                       ended, self._name(task.fn), worker.name, started, outcome,
                                       error, final, task.items, shown, retrying))
        if timeline and self._timeline is not None:
            self._timeline(event)
        self.emit(event)

    def _name(self, fn: Any) -> str:
        named, name = self._last_name  # one callable for a whole run, mostly: name it once
        if fn is not named:
            name = fn_name(fn)
            self._last_name = (fn, name)  # one assignment: threads never see a torn pair
        return name

    def record(self, timeline: Recorder) -> None:
        """Keep ``timeline`` (the pool's ``record=True``) fed with every finished attempt."""
        self._timeline = timeline
        self._set_observers(self.observers)

    def emit(self, event: TaskEvent) -> None:
        """Send ``event`` to the observers that want it; one that raises is logged and removed.

        Anything it raises is caught, ``SystemExit`` and ``KeyboardInterrupt``
        included: this runs in the middle of settling a task (on a worker, a
        backend thread, the event loop), and an exception escaping here would
        skip the rest of the settlement (the unit never ended, so ``shutdown``
        waited for ever) and kill the thread that reports every later task.
        Except a ``KeyboardInterrupt`` on the main thread: that is Ctrl-C
        arriving while an observer ran there, and it is the user's to have.
        """
        for obs in self.observers if event.kind == "finished" else self._lifecycle:
            try:
                obs(event)
            except KeyboardInterrupt:
                if threading.current_thread() is threading.main_thread():
                    raise
                log.exception("anypool: observer %r failed and was removed", obs)
                self.remove_observer(obs)
            except BaseException:  # see above: no observer may stop the bookkeeping
                log.exception("anypool: observer %r failed and was removed", obs)
                self.remove_observer(obs)

    def add_observer(self, obs: Observer) -> None:
        self._set_observers([*self.observers, obs])

    def remove_observer(self, obs: Observer) -> None:
        self._set_observers([o for o in self.observers if o is not obs])

    def _set_observers(self, observers: list[Observer]) -> None:
        # New lists, never mutated: emit() iterates them without a copy or a lock.
        self._lifecycle = [o for o in observers if not getattr(o, "finished_only", False)]
        self.observers = observers
        self.observing = bool(self._lifecycle)  # someone wants queued / started / retried
        self.finishing = bool(observers) or self._timeline is not None  # someone wants finished


class _Retrying:
    """Placeholder in a batch's results for an item whose retry is pending."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<retrying>"


_RETRYING: Any = _Retrying()
_FIRST_ITEM = (0,)  # the ``retrying`` of a one-item task's failed attempt that is tried again
