"""The ``async`` backend: coroutine functions on an event loop.

From sync code the pool runs its own loop on a thread and works like a
portal: ``submit`` returns at once, ``result()`` blocks the caller, never the
loop.  Created inside a running loop, the pool *attaches* to that loop, so
coroutines share it with the caller's code (and its loop-bound objects, such
as client sessions); there, ``await fut`` and ``async for`` never block, and
the blocking calls that would deadlock the loop (``result()`` on an
unfinished task, ``for`` over ``map``, ``shutdown(wait=True)``) raise
``RuntimeError`` saying what to use instead.  As that loop ends
(``asyncio.run`` returns) the pool lets go of it, settling what it left
unfinished (see ``AsyncBackend._detach``).

``workers`` caps how many coroutines run at once (default 10,000);
``timeout=`` cancels a coroutine that runs past it; ``Future.cancel()``
cancels one that is running.  A callable that returns a plain value (not an
awaitable) runs on the loop too, so keep such calls short: while any call
blocks, every coroutine waits.  The pool logs a warning when its own loop
has been blocked for more than half a second.

::

    submit (any thread) ──> inbox ──call_soon_threadsafe (once per burst)──> _drain on the loop
        ──> create_task(fn(*args)) ──done callback──> dispatch.finish_one / batch slot
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextvars
import inspect
import logging
import sys
import threading
import time
import types
import weakref
from collections import deque
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from .. import clock, waiting
from ..asyncfuture import FINISHING, STARTING, AsyncFuture
from ..errors import BrokenPool, InitializerFailed, PoolClosed, TaskTimeout
from ..futures import _CANCELLED
from ..state import bind_context
from ..tasks import ONE, Failure, Task
from .base import Backend, BackendConfig

if TYPE_CHECKING:
    from ..dispatch import Dispatch

__all__ = ["AsyncBackend"]

log = logging.getLogger("anypool")

BLOCKED_WARNING = 0.5  # seconds the pool's own loop may be stuck before a warning
# After a task of an attached pool is cancelled by neither the pool nor its
# future (asyncio.run cancels every task as it ends), queued tasks wait this
# long (seconds) before they start: time for that ending to let go of the loop.
HOLD_AFTER_CANCEL = 0.1
LOOP_END_GRACE = 1.0  # seconds an ending loop is given to end the tasks the pool cancelled there
_NO_KWARGS: dict[str, Any] = {}
_TASK_CONTEXT = sys.version_info >= (3, 11)  # create_task(context=) exists
_CANCELLING = sys.version_info >= (3, 11)  # Task.cancelling() exists
_Coroutine = types.CoroutineType
_AsyncGenerator = types.AsyncGeneratorType


def async_gen_error(gen: Any) -> TypeError:
    """The error for a task whose callable gave an async generator, where a coroutine was expected."""
    name = getattr(gen, "__qualname__", "the callable")
    return TypeError(
        f"{name} is an async generator function, not a coroutine function: the pool awaits what a "
        f"task returns, and an async generator cannot be awaited (collect its items in an async def: "
        f"`return [x async for x in {name}(...)]`)")


# the pools attached to a caller's loop (see let_go_of), and what guards that set
_ATTACHED: weakref.WeakSet[AsyncBackend] = weakref.WeakSet()
_ATTACHED_LOCK = threading.Lock()


def let_go_of(loop: asyncio.AbstractEventLoop) -> None:
    """Detach every pool attached to ``loop``, which has closed.

    What it never finished fails with ``PoolClosed``.  For a future of such a
    pool that is waited for: without this it would wait for ever.
    """
    with _ATTACHED_LOCK:
        attached = list(_ATTACHED)
    for backend in attached:
        if backend._loop is loop:
            backend.let_go_if_closed()


class _BatchRun:
    """The items of one batch task running as separate coroutines."""

    __slots__ = ("failed", "remaining", "results", "started", "task", "times")

    def __init__(self, task: Task, started: float) -> None:
        n = len(task.items)
        self.task = task
        self.results: list[Any] = [None] * n
        self.times: list[float] = [0.0] * (2 * n)
        self.failed: list[int] = []
        self.remaining = n
        self.started = started


class AsyncBackend(Backend):
    """Coroutine functions on an event loop (see the module docstring)."""

    name = "async"
    process_options = False
    can_kill = True
    coroutines = True
    future_class = AsyncFuture
    options = ("own_loop",)

    def __init__(self, config: BackendConfig, dispatch: Dispatch) -> None:
        super().__init__(config, dispatch)
        self._lock = threading.RLock()  # _detach settles tasks: their callbacks may submit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.loop_thread: int | None = None  # ident of the thread running the loop
        self.loop_tid: int | None = None  # and its kernel thread id (for its CPU statistics)
        self.attached = False
        self._inbox: deque[Task] = deque()
        self._drain_scheduled = False
        self._waiting: deque[Task] = deque()
        self._launching = False  # _launch_waiting is running (see there)
        self._active = 0
        # every asyncio task not yet finished -> its Task (a submitted call) or
        # (batch run, item index); also what keeps it alive (see _start_item)
        self._running: dict[asyncio.Task[Any], Any] = {}
        # one bound method for every task's done callback, not one per task, run
        # in one context: asyncio would copy the current one for each task, an
        # object more per pending task for every full collection to walk (it and
        # the awaiters it calls in place see the context the pool was made in)
        self._on_done_cb = self._on_done
        self._cb_ctx = contextvars.copy_context()
        self._expired: set[asyncio.Task[Any]] = set()  # cancelled by their timeout
        self._timers: dict[asyncio.Task[Any], asyncio.TimerHandle] = {}
        self._ready = True  # False while nothing may start: an initializer runs, or see _hold
        self._held = False  # see _hold
        # suspended in the caller's loop while it runs: see _watch_loop_end
        self._sentinel: AsyncGenerator[None, None] | None = None
        self._ended: weakref.ref[asyncio.AbstractEventLoop] | None = None  # a caller's loop that is ending
        self._stopping = False
        self._broken: BaseException | None = None
        self._ws = dispatch.stats.worker("loop")
        self._state: dict[str, Any] = {}
        self._ctx = bind_context(self._state)
        self._beat = 0.0
        self._stuck = False  # a call on the loop went unanswered for 5 s: a blocking call holds it

    @property
    def workers(self) -> int:
        return self.config.workers or 10_000

    def fixed_batch(self) -> int | None:
        return max(1, self.workers // 16)

    def window(self) -> int:
        return 34

    def on_callers_loop(self) -> bool:
        """Whether coroutines run on the loop of the code using the pool (settled on first use)."""
        self._ensure_loop()
        return self.attached

    def describe(self) -> str:
        where = "the caller's loop" if self.attached else "its own loop thread"
        return f"async (up to {self.workers} coroutines on {where})"

    # -- the loop ---------------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None and not (self.attached and loop.is_closed()):
            return loop
        with self._lock:
            if self._loop is not None:
                if not (self.attached and self._loop.is_closed()):
                    return self._loop
                self._detach()
            try:
                running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not None and not self.config.extra.get("own_loop", False):
                if self._ended is not None and self._ended() is running:
                    # its asyncio.run is ending: a task started now would be destroyed unfinished
                    raise PoolClosed("the event loop this pool runs its coroutines on is shutting down")
                self.attached = True
                self.loop_thread = threading.get_ident()
                self.loop_tid = threading.get_native_id()
                self._loop = running
                with _ATTACHED_LOCK:
                    _ATTACHED.add(self)
                self._sentinel = _watch_loop_end(self, running)
                self._initialize_here()
                return running
            loop = asyncio.new_event_loop()
            started = threading.Event()
            self._thread = threading.Thread(target=self._run_loop, args=(loop, started),
                                            name="anypool-async-loop", daemon=True)
            self._thread.start()
            started.wait()
            self._loop = loop
            self._initialize_own()
            return loop

    def _detach(self) -> list[asyncio.Task[Any]]:
        """Let go of the caller's loop, ending or closed (an ``asyncio.run`` that ended).

        A pool made outside any loop attaches to the first one that uses it;
        used again from a later ``asyncio.run`` (or the next test's loop), it
        attaches to that one, and runs its initializer there again (what it
        set up belonged to the closed loop).  Tasks the old loop never
        finished fail with ``PoolClosed``: those that never started, and those
        still running (cancelled, where the loop still runs).  Let go of as
        ``asyncio.run`` ends (see :func:`_watch_loop_end`), or else once the
        loop is found closed (a ``loop.close()`` alone).

        Returns the tasks it cancelled, whose end a loop still running must
        see.  The caller holds ``self._lock``.
        """
        loop = self._loop
        assert loop is not None
        closed = loop.is_closed()
        err = PoolClosed("the event loop this pool ran its coroutines on closed before this task ended")
        unstarted = [*self._inbox, *self._waiting]
        settle: list[tuple[Any, Any]] = []
        kept: dict[asyncio.Task[Any], Any] = {}
        cancelled: list[asyncio.Task[Any]] = []
        for atask, job in self._running.items():
            if not atask.done():
                settle.append((job, Failure(err, "cancelled")))
                if not closed:  # asyncio.run's shutdown: cancelled (and awaited) without reporting it
                    atask.remove_done_callback(self._on_done_cb)
                    atask.cancel()
                    cancelled.append(atask)
            elif closed:  # ended, never reported: the loop closed with its done callback pending
                settle.append((job, self._outcome(job if type(job) is Task else job[0].task, atask)))
            else:
                kept[atask] = job  # its done callback, already scheduled, reports it
        for atask, timer in self._timers.items():
            if atask not in kept:
                timer.cancel()
        self._timers = {a: t for a, t in self._timers.items() if a in kept}
        self._expired = {a for a in self._expired if a in kept}
        self._running = kept
        self._inbox.clear()
        self._waiting.clear()
        self._drain_scheduled = False
        self._active = len(settle) + len(kept)  # each _settle takes one off
        self._loop = None
        self._sentinel = None  # a closed loop's finalizer hook lets it go quietly
        with _ATTACHED_LOCK:
            _ATTACHED.discard(self)
        self.attached = False
        self.loop_thread = self.loop_tid = None
        self._ready = True
        self._held = False
        for task in unstarted:
            self.dispatch.fail_unrun(task, err, "cancelled")
        for job, value in settle:
            if type(job) is Task:
                self._settle(job, None, 0, job.started, value)
            else:
                run, i = job
                self._settle(run.task, run, i, run.started, value)
        return cancelled

    def _loop_ending(self, loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
        """The caller's loop is shutting down: let go of it now (see :meth:`_detach`).

        Returns the tasks cancelled, for the loop to see them end.
        """
        with self._lock:
            if not self.attached or self._loop is not loop:
                return []
            self._ended = weakref.ref(loop)
            return self._detach()

    def let_go_if_closed(self) -> bool:
        """Let go of the caller's loop if it has closed; whether it had.

        What that loop never finished fails with ``PoolClosed`` (see
        :meth:`_detach`), so waiting on it or shutting the pool down no
        longer waits for ever, nor says it would block a loop.
        """
        loop = self._loop
        if not self.attached or loop is None or not loop.is_closed():
            return False
        with self._lock:
            if self.attached and self._loop is loop:
                self._detach()
        return True

    def _run_loop(self, loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        self.loop_thread = threading.get_ident()
        self.loop_tid = threading.get_native_id()
        loop.call_soon(started.set)
        loop.call_soon(self._heartbeat, loop)
        clock.call_later(BLOCKED_WARNING, self._watch, 0.0)
        ended: BaseException | None = None
        try:
            while True:
                try:
                    loop.run_forever()
                    break
                except (SystemExit, KeyboardInterrupt) as exc:
                    # asyncio re-raises these out of the loop once the task that
                    # raised them holds them (a task of the pool fails with it, from
                    # its done callback, next turn): one coroutine must not end the
                    # loop that every other task runs on.  Stopping, the stop this
                    # ended may have been lost with it: end here.
                    if self._stopping:
                        break
                    log.warning("anypool: %r raised by a coroutine on the pool's event loop went no "
                                "further (the loop goes on)", exc)
        except BaseException as exc:
            ended = exc
            raise
        finally:
            close_loop(loop)
            if not self._stopping:  # never expected: asyncio itself failed
                self._broken = BrokenPool(f"the async backend's event loop ended: {ended!r}")
                self.dispatch.broken(self._broken)
            self._fail_unstarted(self._broken or PoolClosed("the async backend is shut down"))

    def _fail_unstarted(self, err: BaseException) -> None:
        """Fail the tasks that never started, the loop that would run them having closed."""
        for q in (self._inbox, self._waiting):
            while q:
                try:
                    task = q.popleft()
                except IndexError:  # a submit that failed took its task back meanwhile
                    break
                self.dispatch.fail_unrun(task, err, "cancelled")

    def _heartbeat(self, loop: asyncio.AbstractEventLoop) -> None:
        # The loop comes as an argument: the first beat can run before
        # _ensure_loop has stored it in self._loop.
        self._beat = time.monotonic()
        if not self._stopping:
            loop.call_later(0.1, self._heartbeat, loop)

    def _watch(self, warned_at: float) -> None:
        """Clock callback: warn when the pool's own loop stops turning."""
        if self._stopping or self._loop is None or self._loop.is_closed():
            return
        stuck = time.monotonic() - self._beat
        if stuck > BLOCKED_WARNING and self._beat != warned_at:
            log.warning(
                "anypool: the event loop has not turned for %.1f s: a coroutine is calling something "
                "blocking (use backend='thread' or asyncio.to_thread for it), or CPU work leaves it no "
                "time (backend='process+async' spreads coroutines over processes)", stuck)
            warned_at = self._beat
        clock.call_later(BLOCKED_WARNING, self._watch, warned_at)

    def _initialize_own(self) -> None:
        init = self.config.initializer
        if init is None:
            return
        loop = self._loop
        assert loop is not None
        done: cf.Future[None] = cf.Future()

        def settle(t: asyncio.Task[Any]) -> None:
            exc = asyncio.CancelledError() if t.cancelled() else t.exception()
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

        def start() -> None:  # on the loop thread, in the workers' context
            try:
                r = self._ctx.run(init, *self.config.initargs)
            except BaseException as exc:
                done.set_exception(exc)
                return
            if inspect.isawaitable(r):
                self._ctx.run(loop.create_task, _await(r)).add_done_callback(settle)
            else:
                done.set_result(None)

        loop.call_soon_threadsafe(start)
        try:
            for step in waiting.slices(None):  # Ctrl-C here is the caller's, not the initializer's
                try:
                    done.result(step)
                    break
                except cf.TimeoutError:
                    continue
        except (KeyboardInterrupt, SystemExit):
            if done.done():
                raise
            # Interrupted while the initializer still runs: tasks wait for its end
            # on the loop (as on a caller's loop), and it may yet fail the pool.
            self._ready = False
            done.add_done_callback(lambda f: loop.call_soon_threadsafe(self._initialized, f))
            raise
        except BaseException as exc:  # what the initializer raised, set on `done`
            self._init_failed(exc)

    def _initialized(self, done: cf.Future[None]) -> None:
        """On the loop: an initializer the creating thread stopped waiting for has ended."""
        exc = done.exception()
        if exc is not None:
            self._init_failed(exc)
            return
        self._ready = True
        self._launch_waiting()

    def _initialize_here(self) -> None:
        init = self.config.initializer
        if init is None:
            return
        try:
            r = self._ctx.run(init, *self.config.initargs)
        except BaseException as exc:
            self._init_failed(exc)
            return
        if inspect.isawaitable(r):
            self._ready = False
            assert self._loop is not None
            t = self._ctx.run(self._loop.create_task, _await(r))
            t.add_done_callback(self._init_done)

    def _init_done(self, t: asyncio.Task[Any]) -> None:
        exc = None if t.cancelled() else t.exception()
        if exc is not None or t.cancelled():
            self._init_failed(exc or asyncio.CancelledError())
            return
        self._ready = True
        self._launch_waiting()

    def _init_failed(self, exc: BaseException) -> None:
        err = InitializerFailed(f"the initializer raised {exc!r}")
        err.__cause__ = exc
        self._broken = err
        self.dispatch.broken(err)
        while self._waiting:
            self.dispatch.fail_unrun(self._waiting.popleft(), err)

    # -- submitting -------------------------------------------------------------

    def submit(self, task: Task) -> None:
        if self._stopping:
            raise PoolClosed("the async backend is shut down")
        loop = self._ensure_loop()
        if self._broken is not None:
            raise self._broken
        if task.future is not None:
            # which loop runs it: awaiters there are woken in place, and a blocking
            # result() there (a coroutine of this pool waiting on another) raises
            fut: Any = task.future
            fut._home, fut._loop_thread = loop, self.loop_thread
        self._inbox.append(task)
        if not self._drain_scheduled:
            # set before the drain is scheduled, not after: the drain may run
            # (and clear it) before this thread returns from scheduling it
            self._drain_scheduled = True
            try:
                if threading.get_ident() == self.loop_thread:
                    loop.call_soon(self._drain)
                else:
                    loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop closed: a shutdown under way, or it broke
                self._drain_scheduled = False
                try:
                    self._inbox.remove(task)
                except ValueError:
                    return  # the loop's end failed it already, and its future says so
                raise self._broken or PoolClosed("the async backend is shut down") from None

    def _drain(self) -> None:
        self._drain_scheduled = False
        inbox = self._inbox
        limit = self.workers
        while inbox:
            task = inbox.popleft()
            if self._broken is not None:
                self.dispatch.fail_unrun(task, self._broken)
            elif self._waiting or not self._ready or (
                self._active and self._active + len(task.items) > limit
            ):
                self._waiting.append(task)
            else:
                self._launch(task)

    def _launch_waiting(self) -> None:
        # Not re-entered: a task launched here may settle at once (a call that
        # fails or returns a plain value), and its _settle would launch the next
        # from inside this one, a frame deeper each time (RecursionError past a
        # thousand).  The outermost loop launches them all, one after another.
        if self._launching:
            return
        self._launching = True
        try:
            limit = self.workers
            waiting = self._waiting
            while waiting and self._ready and (
                    not self._active or self._active + len(waiting[0].items) <= limit):
                self._launch(waiting.popleft())
        finally:
            self._launching = False

    def _launch(self, task: Task) -> None:
        fut: Any = task.future
        if fut is not None:
            fut._atask = STARTING  # a cancel() from now on is left to _start_item to carry out
        if not task.claim():
            self.dispatch.discard(task)
            return
        if self.dispatch.observing:
            self.dispatch.started(task, self._ws)
        now = time.time()
        if task.future is not None:
            args, kwargs = task.items[0]
            self._start_item(task, None, 0, now, args, kwargs or _NO_KWARGS)
            return
        run = _BatchRun(task, now)
        one = task.style == ONE
        for i, item in enumerate(task.items):
            if one:
                self._start_item(task, run, i, now, (item,), _NO_KWARGS)
            else:
                self._start_item(task, run, i, now, item, _NO_KWARGS)

    def _start_item(self, task: Task, run: _BatchRun | None, i: int, now: float,
                    args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Call the task's function on one item and run what it returns to its end.

        Per item this allocates the coroutine and its asyncio task, nothing
        more: with 100,000 coroutines pending, every object counts.
        """
        self._active += 1
        try:
            r = self._ctx.run(task.fn, *args, **kwargs)
        except BaseException as exc:
            # settled below, as a returned value is, not in here: settled inside
            # the except block, every failure's __context__ was the one before
            r = Failure(exc)
        coro: Any
        if type(r) is _Coroutine:  # an async def's: the commonest, checked without two calls
            coro = r
        elif inspect.isawaitable(r):
            coro = r if asyncio.iscoroutine(r) else _await(r)
        else:
            if type(r) is _AsyncGenerator:
                r = Failure(async_gen_error(r))
            self._settle(task, run, i, now, r)
            return
        loop = self._loop
        assert loop is not None
        if _TASK_CONTEXT:  # no copy of the context per task
            atask = loop.create_task(coro, context=self._ctx)  # type: ignore[call-arg]  # 3.11+
        else:
            atask = self._ctx.run(loop.create_task, coro)
        # asyncio keeps only weak references to tasks: a coroutine waiting on a
        # stream is otherwise held by a reference cycle alone, which the
        # garbage collector may destroy mid-wait (and the map would never end)
        self._running[atask] = task if run is None else (run, i)
        if task.options.timeout is not None:
            self._timers[atask] = loop.call_later(task.options.timeout, self._expire, atask)
        atask.add_done_callback(self._on_done_cb, context=self._cb_ctx)
        if run is None:
            task.started = now
            fut: Any = task.future
            fut._atask = atask
            if fut._state in _CANCELLED:  # cancel() came while this task was being made
                atask.cancel()

    def _on_done(self, atask: asyncio.Task[Any]) -> None:
        job = self._running.pop(atask)
        if type(job) is Task:
            # a finished task is never cancelled, and the future may outlive it
            # by far (gather holds them all): let it go, with its coroutine; and
            # wake the future's awaiter from here, not one loop turn later
            fut: Any = job.future
            fut._atask = FINISHING
            self._settle(job, None, 0, job.started, self._outcome(job, atask))
            fut._call_awaiter()
        else:
            run, i = job
            self._settle(run.task, run, i, run.started, self._outcome(run.task, atask))

    def _outcome(self, task: Task, atask: asyncio.Task[Any]) -> Any:
        timer = self._timers.pop(atask, None) if self._timers else None
        if timer is not None:
            timer.cancel()
        expired = False
        if self._expired and atask in self._expired:
            # whatever it ended with: a coroutine may turn the cancellation into
            # its own error or a fallback value, and the set must not keep it
            self._expired.discard(atask)
            expired = True
        if atask.cancelled():
            if expired:
                return Failure(TaskTimeout(task.options.timeout or 0.0, task.label()), "timeout")
            if self._stopping:
                return Failure(PoolClosed("the pool was shut down while this coroutine ran"), "cancelled")
            if self.attached and not self._held and (
                    task.future is None or task.future._state not in _CANCELLED) and (
                    not _CANCELLING or atask.cancelling()):  # type: ignore[attr-defined]  # 3.11+
                # not one that raised CancelledError itself (3.11+ tells them apart)
                self._hold()
            return Failure(cf.CancelledError("the coroutine was cancelled"), "cancelled")
        exc = atask.exception()
        return Failure(exc) if exc is not None else atask.result()

    def _hold(self) -> None:
        """Start no queued task for a moment: the caller's loop may be ending.

        Called when a task on the caller's loop was cancelled from outside
        (neither its timeout, a shutdown nor its future): ``asyncio.run``
        does that to every task as it ends, and a queued task started in
        their place would run on a loop about to close.  If it is ending,
        :func:`_watch_loop_end` lets go of it well before
        ``HOLD_AFTER_CANCEL`` has passed; if not, the queue starts again then.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # being let go of (see _detach)
        self._held = True
        self._ready = False
        loop.call_later(HOLD_AFTER_CANCEL, self._unhold, loop)

    def _unhold(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._held and self._loop is loop:
            self._held = False
            self._ready = True
            self._launch_waiting()

    def _settle(self, task: Task, run: _BatchRun | None, i: int, t0: float, value: Any) -> None:
        self._active -= 1
        if run is None:
            self.dispatch.finish_one(task, value, t0, time.time(), self._ws)
        else:
            self._item_done(run, i, t0, value)
        if self._waiting:
            self._launch_waiting()

    def _item_done(self, run: _BatchRun, i: int, t0: float, value: Any) -> None:
        run.results[i] = value
        run.times[2 * i] = t0
        run.times[2 * i + 1] = time.time()
        if type(value) is Failure:
            run.failed.append(i)
        run.remaining -= 1
        if run.remaining == 0:
            run.failed.sort()
            self.dispatch.finish(run.task, run.results, run.started, time.time(), self._ws,
                                 run.failed or None, run.times)

    def _expire(self, atask: asyncio.Task[Any]) -> None:
        self._expired.add(atask)
        atask.cancel()

    # -- shutdown ---------------------------------------------------------------

    def cancel_pending(self) -> None:
        """Cancel every task that has not started."""
        def cancel() -> None:
            for q in (self._inbox, self._waiting):
                while q:
                    self.dispatch.cancel(q.popleft())

        self._call_on_loop(cancel)

    def _call_on_loop(self, fn: Any) -> None:
        loop = self._loop
        if loop is None or not loop.is_running() or threading.get_ident() == self.loop_thread:
            fn()  # nothing else runs there now (a closed loop, or the caller's, ended)
        elif self._stuck or (self._thread is not None and time.monotonic() - self._beat > 1.0):
            # its heartbeat stopped, or it did not answer last time: a blocking
            # call holds it, and a shutdown does not wait 5 s a step for it
            self._stuck = True
            fn()
        else:
            try:
                asyncio.run_coroutine_threadsafe(_call(fn), loop).result(5.0)
            except (cf.TimeoutError, cf.CancelledError, RuntimeError):
                # stuck (a call blocking it), or stopped meanwhile (its last turn
                # cancels what is left)
                self._stuck = loop.is_running()
                fn()

    def shutdown(self, wait: bool = True, kill: bool = False) -> None:
        self._stopping = True
        self.let_go_if_closed()
        loop = self._loop
        if loop is None:
            return
        if kill:
            def cancel_all() -> None:
                assert loop is not None
                # this very call may run in a task: spare it (the loop given, as
                # it may have ended: an attached pool outliving its asyncio.run)
                me = asyncio.current_task(loop)
                # the pool's own tasks only: on its own loop the rest (tasks they
                # made) are cancelled as the loop ends, and this may run during that
                # ending, where all_tasks() includes the loop's own shutdown_asyncgens
                for t in list(self._running):
                    if t is not me:
                        try:
                            t.cancel()
                        except RuntimeError:
                            pass  # its loop is closed: the task ended with it
                for q in (self._inbox, self._waiting):
                    while q:
                        self.dispatch.cancel(q.popleft())

            self._call_on_loop(cancel_all)
        if self.attached:
            return
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None and (wait or kill) and self._thread is not threading.current_thread():
            self._thread.join(0.1 if self._stuck else 5.0)


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close a loop that has stopped as ``asyncio.run`` does: its tasks cancelled and waited for first.

    Then its async generators are closed, and the loop itself.
    """
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def _watch_loop_end(backend: AsyncBackend,
                    loop: asyncio.AbstractEventLoop) -> AsyncGenerator[None, None]:
    """Start and return an async generator that lets ``backend`` go of ``loop`` as it ends.

    Called in ``loop``, so the generator is registered with it (asyncio's
    async generator hooks): ``asyncio.run`` closes it after cancelling every
    task and before closing the loop, and its ``finally`` detaches the pool
    (see ``AsyncBackend._detach``).  Unlike a task, it is nobody's to wait
    for: ``asyncio.all_tasks()`` does not list it.  It refers to the backend
    weakly, so a pool dropped is not kept by the loop.
    """
    gen = _loop_end(weakref.ref(backend), loop)
    try:
        gen.asend(None).send(None)  # runs to its yield, at once
    except StopIteration:
        pass
    return gen


async def _loop_end(ref: weakref.ref[AsyncBackend],
                    loop: asyncio.AbstractEventLoop) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        backend = ref()
        cancelled = backend._loop_ending(loop) if backend is not None else []
        if cancelled:
            await asyncio.wait(cancelled, timeout=LOOP_END_GRACE)


async def _await(awaitable: Any) -> Any:
    return await awaitable


async def _call(fn: Any) -> None:
    fn()
