"""The ``thread`` backend: sync callables on a fixed set of worker threads.

For IO-bound code and for code that releases the GIL (hashlib, zlib, numpy).
Tasks are passed by reference, never pickled.

Threads and timeouts: nothing can stop a running Python function in a
thread.  When a task passes its ``timeout=``, its future fails on time with
``TaskTimeout``, the thread is *abandoned* (it runs the call to its end and
then exits, its result thrown away) and a fresh thread takes its place, so
the pool keeps its full capacity.  Abandoned threads are daemons: they never
hold up interpreter exit.

::

    submit ──> SimpleQueue ──> worker thread: claim, call, dispatch.finish
                                   │ (task with a timeout)
                                   └─ deadline on the shared clock ──> fail on time,
                                      abandon the thread, start a replacement
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from .. import clock, waiting
from ..calls import call_items, call_one
from ..dispatch import serve
from ..errors import InitializerFailed, PoolClosed, TaskTimeout
from ..state import bind_thread
from ..tasks import Failure, Task
from .base import Backend, BackendConfig, drain

if TYPE_CHECKING:
    from ..dispatch import Dispatch
    from ..stats import WorkerStats

__all__ = ["ThreadBackend"]

log = logging.getLogger("anypool")


class _Running:
    """What one worker thread is doing, for its deadline checks (guarded by the backend lock)."""

    __slots__ = ("abandoned", "failed", "index", "item_start", "out", "started", "task", "token")

    def __init__(self) -> None:
        self.task: Task | None = None
        self.token = 0
        self.index = 0
        self.item_start = 0.0
        self.started = 0.0
        self.out: list[Any] = []
        self.failed: list[int] = []
        self.abandoned = False


class ThreadBackend(Backend):
    """Runs sync callables on ``workers`` threads (see the module docstring)."""

    name = "thread"
    process_options = False
    can_kill = False
    batch_seconds = 0.002
    max_batch = 4096

    def __init__(self, config: BackendConfig, dispatch: Dispatch) -> None:
        super().__init__(config, dispatch)
        self._queue: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: dict[threading.Thread, _Running] = {}
        self._names = itertools.count(1)
        self._started = False
        self._stopping = False
        self._broken: BaseException | None = None

    def submit(self, task: Task) -> None:
        if not self._started:
            self.start()
        if self._stopping:
            raise PoolClosed("the thread backend is shut down")
        self._queue.put(task)
        if self._stopping:  # set meanwhile by another thread's shutdown()
            # shutdown() came between the check and the put: the task may sit behind
            # the stop markers, where no thread would take it (nor its future end).
            # One more thread and one more marker: every queued item is taken.
            # (A lock around check and put cost 4% of a submit, for this rare race.)
            with self._lock:  # type: ignore[unreachable]  # mypy cannot see the other thread
                self._spawn()
            self._queue.put(None)

    def start(self) -> None:
        with self._lock:
            if self._started or self._stopping:
                return
            self._started = True
            for _ in range(self.workers):
                self._spawn()

    def lend(self) -> None:
        # A stop marker ahead of whatever comes next retires the first thread
        # to go idle: one thread fewer takes tasks until give_back() starts one.
        self.start()
        with self._lock:
            if self._stopping:
                return
            self._queue.put(None)

    def give_back(self) -> None:
        with self._lock:
            if not self._stopping:
                self._spawn()

    def _spawn(self) -> None:
        # caller holds self._lock
        name = f"thread-{next(self._names)}"
        rec = _Running()
        t = threading.Thread(target=self._work, args=(name, rec), name=f"anypool-{name}", daemon=True)
        self._threads[t] = rec
        t.start()

    def _work(self, name: str, rec: _Running) -> None:
        dispatch = self.dispatch
        ws = dispatch.stats.worker(name)
        serve(dispatch)
        bind_thread({})
        try:
            if self.config.initializer is not None and not self._initialize():
                return
            q = self._queue
            while True:
                task = q.get()
                if task is None:
                    break
                try:
                    self._execute(task, rec, ws)
                except BaseException:
                    # The task's own exceptions, its callbacks' and its observers' are
                    # all caught before they get here: this is a bug in anypool's
                    # settlement.  Said loudly; the thread goes on taking tasks, where
                    # ending it would shrink the pool without a word.
                    log.critical("anypool: %s failed to settle task %s", name, task.label(),
                                 exc_info=True)
                # drop the task before blocking for the next one: a finished
                # task's arguments must not stay alive while the pool idles
                del task
                if rec.abandoned:
                    return  # timed out: a replacement thread has taken this one's place
        finally:
            bind_thread(None)
            dispatch.stats.worker_gone(name)
            with self._lock:
                self._threads.pop(threading.current_thread(), None)

    def _execute(self, task: Task, rec: _Running, ws: WorkerStats) -> None:
        dispatch = self.dispatch
        if self._broken is not None:
            dispatch.fail_unrun(task, self._broken)
            return
        if not task.claim():
            dispatch.discard(task)
            return
        if dispatch.observing:
            dispatch.started(task, ws)
        if task.options.timeout is not None:
            self._run_timed(task, rec, ws)
            return
        t0 = time.time()
        if task.future is not None:
            args, kwargs = task.items[0]
            try:
                r = task.fn(*args, **kwargs) if kwargs else task.fn(*args)
            except BaseException as exc:
                r = Failure(exc)
            dispatch.finish_one(task, r, t0, time.time(), ws)
        else:
            results, failed = call_items(task.fn, task.items, task.style, Failure)
            dispatch.finish(task, results, t0, time.time(), ws, failed)

    def _initialize(self) -> bool:
        assert self.config.initializer is not None
        try:
            self.config.initializer(*self.config.initargs)
        except BaseException as exc:
            err = InitializerFailed(f"the worker initializer {self.config.initializer!r} raised {exc!r}")
            err.__cause__ = exc
            self._set_broken(err)
            return False
        return True

    def _set_broken(self, err: BaseException) -> None:
        with self._lock:
            if self._broken is not None:
                return
            self._broken = err
        self.dispatch.broken(err)
        self._fail_queued(err)

    def _fail_queued(self, err: BaseException) -> None:
        for task in drain(self._queue):
            self.dispatch.fail_unrun(task, err)

    # -- timeouts -------------------------------------------------------------

    def _run_timed(self, task: Task, rec: _Running, ws: WorkerStats) -> None:
        timeout = task.options.timeout
        assert timeout is not None
        fn, style, lock = task.fn, task.style, self._lock
        started = time.time()
        with lock:
            rec.task, rec.out, rec.failed = task, [], []
            rec.index, rec.item_start, rec.started = 0, started, started
            rec.token += 1
            token = rec.token
        clock.call_later(timeout, self._check, rec, token, ws)
        out, failed = rec.out, rec.failed
        last = len(task.items) - 1
        for i, item in enumerate(task.items):
            try:
                r = call_one(fn, style, item)
            except BaseException as exc:
                r = Failure(exc)
            # One locked step from "item i is running" to "item i+1 is" (or "the
            # task is over"): the deadline check sees the one state or the other.
            # With a gap between storing the result and moving on, a check landing
            # there judged item i by its old start, failed it although it had
            # finished, and the task was reported twice.
            with lock:
                if rec.abandoned:
                    return  # failed on time already: this result comes too late
                if type(r) is Failure:
                    failed.append(i)
                out.append(r)
                if i < last:
                    rec.index, rec.item_start = i + 1, time.time()
                else:
                    rec.task, rec.out, rec.failed = None, [], []
                    rec.token += 1
        self.dispatch.finish(task, out, started, time.time(), ws, failed or None)

    def _check(self, rec: _Running, token: int, ws: WorkerStats) -> None:
        """Clock callback: fail the item running past its deadline, or re-arm."""
        with self._lock:
            task = rec.task
            if rec.token != token or task is None or rec.abandoned:
                return
            timeout = task.options.timeout
            assert timeout is not None
            now = time.time()
            deadline = rec.item_start + timeout
            if now < deadline:
                clock.call_later(deadline - now, self._check, rec, token, ws)
                return
            # the worker stores a result and moves on in one locked step: the
            # item at rec.index is still running, the ones before it are done
            assert len(rec.out) == rec.index
            rec.abandoned = True
            i = rec.index
            done, failed = list(rec.out), list(rec.failed)
            if not self._stopping:
                self._spawn()
        exc = TaskTimeout(timeout, task.label(), stopped=False)
        head = task.head(i + 1)
        self.dispatch.finish(head, [*done, Failure(exc, "timeout")], rec.started, now, ws, [*failed, i])
        if i + 1 < len(task.items):
            self.dispatch.requeue(task.subtask(i + 1, task.items[i + 1:]))

    # -- shutdown -------------------------------------------------------------

    def cancel_pending(self) -> None:
        """Cancel every queued task that has not started."""
        for task in drain(self._queue):
            self.dispatch.cancel(task)

    def shutdown(self, wait: bool = True, kill: bool = False) -> None:
        with self._lock:
            self._stopping = True
            threads = dict(self._threads)
        if kill:
            # a running call cannot be stopped: it finishes in the background and
            # its future still gets the result; only queued tasks are cancelled
            self.cancel_pending()
        for _ in threads:
            self._queue.put(None)
        if wait and not kill:
            me = threading.current_thread()
            for t, rec in threads.items():
                if t is not me and not rec.abandoned:
                    waiting.join(t)
