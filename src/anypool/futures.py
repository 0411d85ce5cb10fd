"""One future type for sync and async code, and ``as_completed`` over any mix.

``Future`` *is* a ``concurrent.futures.Future`` (so ``wait``, ``as_completed``
and every stdlib helper accept it) that can also be awaited from any running
asyncio loop without blocking it.  It keeps the history of failed attempts
(no arguments, no results: a finished task holds no reference to its input).

It is also lighter than the stdlib's: ``concurrent.futures.Future`` builds a
``threading.Condition`` per future (1.4 KB, mostly a preallocated waiter
deque) although few futures are ever waited on by a blocked thread.  Ours
holds a bare re-entrant lock (a C object the garbage collector never walks)
and makes waiter state only when a thread really blocks: about 200 bytes
instead of 1,600 per future, which is what a pool holding 100,000 pending
coroutines pays, and one object fewer for every full collection to visit.
"""

from __future__ import annotations

import _thread
import concurrent.futures as cf
import queue
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from . import waiting

if TYPE_CHECKING:
    import asyncio

_PENDING = cf._base.PENDING
_FINISHED = cf._base.FINISHED
_CANCELLED = (cf._base.CANCELLED, cf._base.CANCELLED_AND_NOTIFIED)
_DONE = (*_CANCELLED, _FINISHED)

__all__ = ["Attempt", "Future", "as_completed"]

T = TypeVar("T")


class Attempt(NamedTuple):
    """One failed attempt of a task: when, where, and how it ended."""

    number: int
    worker: str | None
    started: float | None
    ended: float
    outcome: str  # "error" | "timeout" | "crash"
    error: str


class Future(cf.Future[T]):
    """The result of a task: a ``concurrent.futures.Future`` you can also ``await``.

    ``await fut`` inside a coroutine suspends only that coroutine; the event
    loop keeps running.  ``cancel()`` cancels a task that has not started;
    on the ``async`` backend it also cancels a running coroutine.
    ``attempts`` lists the attempts that failed before the final one.
    """

    # Set on an instance only after a retry (rare), so most futures carry none.
    _history: list[Attempt] | None = None
    # Likewise a list only once a stdlib-style callback is added: most futures
    # get none, and 100,000 pending ones would hold 100,000 empty lists for
    # the garbage collector to walk.
    _done_callbacks: Any = ()
    # The same for the waiters of ``concurrent.futures.wait``/``as_completed``,
    # which reach them as ``_waiters`` (the property below).
    _waiter_list: list[Any] | None = None
    # asyncio-style callbacks: only an AsyncFuture has them, but set_result and
    # set_exception must see them (not only _done_callbacks) to know that
    # _invoke_callbacks has work to do
    _aio_callbacks: Any = None

    # The locks of threads blocked in result()/exception(), released when the
    # future becomes final.  A class default, so only a waited-on future has one.
    _sleepers: list[Any] | None = None

    def __init__(self) -> None:
        # concurrent.futures.Future.__init__ without its Condition and list of
        # waiters: ``_condition`` is only the lock (``with fut._condition`` is
        # all that the stdlib's wait() and as_completed() do with it); the
        # waiting it would do is _sleep/_wake below
        self._condition = _thread.RLock()  # type: ignore[assignment]
        self._state = _PENDING
        self._result = None
        self._exception = None

    def _sleep(self, timeout: float | None) -> None:
        """Condition.wait on ``_condition``, which the caller holds: until _wake or ``timeout``."""
        waiter = _thread.allocate_lock()
        waiter.acquire()
        sleepers = self._sleepers
        if sleepers is None:
            sleepers = self._sleepers = []
        sleepers.append(waiter)
        lock: Any = self._condition
        saved = lock._release_save()  # fully, however deep it is held
        got = False
        try:
            if timeout is None or timeout > 0:
                got = waiting.acquire(waiter, timeout)
            else:
                got = waiter.acquire(False)
        finally:
            lock._acquire_restore(saved)
            if not got:
                try:
                    self._sleepers.remove(waiter)  # type: ignore[union-attr]
                except (AttributeError, ValueError):
                    pass  # woken just as the wait ran out

    def _wake(self) -> None:
        """Condition.notify_all: release every thread in _sleep (the caller holds the lock)."""
        sleepers = self._sleepers
        if sleepers:
            self._sleepers = None
            for w in sleepers:
                w.release()

    @property
    def _waiters(self) -> list[Any]:  # type: ignore[override]
        waiters = self._waiter_list
        if waiters is None:
            waiters = self._waiter_list = []
        return waiters

    def set_result(self, result: T) -> None:
        """Mark the task finished with ``result`` (for backends: one call, once).

        Raises:
            concurrent.futures.InvalidStateError: the future is already done.
        """
        with self._condition:
            if self._state in _DONE:
                raise cf.InvalidStateError(f"{self._state}: {self!r}")
            self._result = result
            self._state = _FINISHED
            if self._waiter_list:
                for waiter in self._waiter_list:
                    waiter.add_result(self)
            self._wake()
        if self._done_callbacks or self._aio_callbacks is not None:  # most have none: no call
            self._invoke_callbacks()  # type: ignore[attr-defined]

    def set_exception(self, exception: BaseException | None) -> None:
        """Mark the task failed with ``exception`` (for backends: one call, once).

        Raises:
            concurrent.futures.InvalidStateError: the future is already done.
        """
        with self._condition:
            if self._state in _DONE:
                raise cf.InvalidStateError(f"{self._state}: {self!r}")
            self._exception = exception
            self._state = _FINISHED
            if self._waiter_list:
                for waiter in self._waiter_list:
                    waiter.add_exception(self)
            self._wake()
        if self._done_callbacks or self._aio_callbacks is not None:  # most have none: no call
            self._invoke_callbacks()  # type: ignore[attr-defined]

    def add_done_callback(self, fn: Callable[[cf.Future[T]], object]) -> None:
        """Call ``fn(future)`` once the task is final; at once, in this thread, if it is already."""
        with self._condition:
            if self._state not in _DONE:
                if self._done_callbacks:
                    self._done_callbacks.append(fn)
                else:
                    self._done_callbacks = [fn]
                return
        try:
            fn(self)
        except Exception:
            cf._base.LOGGER.exception("exception calling callback for %r", self)

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        """The failed attempts before the current or final one, oldest first."""
        return tuple(self._history or ())

    def _add_attempt(self, attempt: Attempt) -> None:
        if self._history is None:
            self._history = []
        self._history.append(attempt)

    def cancel(self) -> bool:
        """Cancel the task; True if it will not run (or, on ``async``, was cancelled).

        As in ``concurrent.futures``, a task already running on a thread or a
        process cannot be cancelled (use ``timeout=`` or ``shutdown(kill=True)``).
        """
        with self._condition:
            if self._state == _PENDING:  # concurrent.futures.Future.cancel, with our wake-up
                self._state = cf._base.CANCELLED
                self._wake()
            elif self._state != cf._base.RUNNING or not self._cancel_running():
                return self._state in _CANCELLED
            else:
                # Asked to stop and marked cancelled under one lock: the runner's
                # own report of the stop (a CancelledError) cannot land in between
                # and make this cancel() look refused.
                self._set_cancelled()  # re-entrant: the same lock, held throughout
                return True
        self._invoke_callbacks()  # type: ignore[attr-defined]
        return True

    def _set_cancelled(self) -> bool:
        """Mark the task cancelled, however far it got; False if it was already final."""
        with self._condition:
            if self._state in _DONE:
                return False
            self._state = cf._base.CANCELLED_AND_NOTIFIED
            self._wake()
        for waiter in self._waiter_list or ():
            waiter.add_cancelled(self)
        self._invoke_callbacks()  # type: ignore[attr-defined]
        return True

    def _cancel_running(self) -> bool:
        """Stop a running task, where the model allows it (the async backend's futures)."""
        return False

    def _blocks_own_loop(self) -> bool:
        """Whether a blocking wait here would stall the loop that must finish this task."""
        return False

    def _guard_blocking(self) -> None:
        if self._blocks_own_loop():
            raise RuntimeError(
                "this task runs on the event loop of the current thread, so waiting for it "
                "here would block that loop forever; use `await future` instead"
            )

    def result(self, timeout: float | None = None) -> T:
        """Return the task's result, waiting up to ``timeout`` seconds.

        Raises:
            TimeoutError: the wait ran out (the task goes on running).
            concurrent.futures.CancelledError: the task was cancelled.
            RuntimeError: waiting would block the event loop that runs the task.
            BaseException: whatever the task raised (as itself), or an anypool
                error (``TaskTimeout``, ``WorkerCrashed``, ``TaskError``...).
        """
        if self._state == _FINISHED and self._exception is None:
            return self._result  # type: ignore[return-value]  # the lock-free common case
        self._guard_blocking()
        try:
            with self._condition:
                self._await_final(timeout)
                if self._exception is not None:
                    raise self._exception
                return self._result  # type: ignore[return-value]
        finally:
            self = None  # type: ignore[assignment]  # as the stdlib: no cycle through a raised traceback

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Return the task's exception (None if it succeeded), waiting like ``result``."""
        if self._state == _FINISHED:
            return self._exception
        self._guard_blocking()
        with self._condition:
            self._await_final(timeout)
            return self._exception

    def _await_final(self, timeout: float | None) -> None:
        """Wait, holding ``_condition``, until the future is final.

        Raises:
            concurrent.futures.CancelledError: it was cancelled.
            TimeoutError: ``timeout`` seconds passed first.
        """
        if self._state not in _DONE:
            self._sleep(timeout)
        if self._state in _CANCELLED:
            raise cf.CancelledError()
        if self._state != _FINISHED:
            raise TimeoutError()

    # Read without the lock: the state is one reference, and a finished
    # future's result is stored before its state says FINISHED.
    def done(self) -> bool:
        """Whether the task finished or was cancelled."""
        return self._state in _DONE

    def cancelled(self) -> bool:
        """Whether the task was cancelled."""
        return self._state in _CANCELLED

    def __await__(self) -> Generator[Any, None, T]:
        if not self.done():
            import asyncio  # only an awaiting coroutine needs it, and it is loaded then

            loop = asyncio.get_running_loop()
            waiter = loop.create_future()
            thread = threading.get_ident()

            def wake(_: object) -> None:
                # on the loop's own thread (the async backend in the caller's loop)
                # no self-pipe write is needed; from any other thread it is
                if threading.get_ident() == thread:
                    _settle(waiter)
                else:
                    try:
                        loop.call_soon_threadsafe(_settle, waiter)
                    except RuntimeError:
                        pass  # that loop is closed: nobody awaits any more

            self.add_done_callback(wake)
            try:
                yield from waiter
            except asyncio.CancelledError:
                self.cancel()  # as wrap_future does: the awaiter gave up, so may the task
                raise
        return self.result()


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


# A class, so it can have __aiter__ too; named like the stdlib function it extends.
class as_completed(Iterable[cf.Future[T]]):
    """Yield futures as they finish, from sync code (``for``) or a coroutine (``async for``).

    Works on any mix of anypool futures, from any backends, and
    ``concurrent.futures`` futures.  Futures already done are yielded first.

    Raises:
        TimeoutError: ``timeout`` seconds passed before every future finished.
    """

    def __init__(self, fs: Iterable[cf.Future[T]], timeout: float | None = None) -> None:
        self._fs = list(dict.fromkeys(fs))
        self._timeout = timeout

    def __iter__(self) -> Iterator[cf.Future[T]]:
        """Iterate in this thread, blocking it between futures.

        Raises:
            RuntimeError: a future is run by the event loop of this thread,
                which the wait would stall for ever (use ``async for``).
        """
        for f in self._fs:
            if isinstance(f, Future) and f._blocks_own_loop():
                raise RuntimeError(
                    "a task here runs on the event loop of the current thread, so waiting for it "
                    "with a plain `for` would block that loop forever; use `async for` instead")
        if threading.get_ident() != threading.main_thread().ident:
            return cf.as_completed(self._fs, timeout=self._timeout)
        return self._sliced()

    def _sliced(self) -> Iterator[cf.Future[T]]:
        """As ``cf.as_completed``, with waits a signal handler can cut into (see :mod:`anypool.waiting`).

        One callback per future feeds a queue, so the cost stays one wake-up
        per finished future, however many are pending.
        """
        done: queue.SimpleQueue[cf.Future[T]] = queue.SimpleQueue()
        for f in self._fs:
            f.add_done_callback(done.put)
        steps = waiting.slices(self._timeout)
        for yielded in range(len(self._fs)):
            try:
                f = done.get_nowait()  # finished already: yielded even past the deadline, as the stdlib does
            except queue.Empty:
                while True:
                    try:
                        f = done.get(timeout=next(steps))
                        break
                    except queue.Empty:
                        pass
                    except StopIteration:
                        raise TimeoutError(
                            f"{len(self._fs) - yielded} (of {len(self._fs)}) futures unfinished") from None
            yield f

    def __aiter__(self) -> AsyncIterator[cf.Future[T]]:
        return self._agen()

    async def _agen(self) -> AsyncIterator[cf.Future[T]]:
        import asyncio

        loop = asyncio.get_running_loop()
        finished: asyncio.Queue[cf.Future[T]] = asyncio.Queue()
        def arrived(f: cf.Future[T]) -> None:
            try:
                loop.call_soon_threadsafe(finished.put_nowait, f)
            except RuntimeError:
                pass  # that loop is closed: the iteration was left before this one finished

        for f in self._fs:
            f.add_done_callback(arrived)
        deadline = None if self._timeout is None else loop.time() + self._timeout
        for yielded in range(len(self._fs)):
            if deadline is None:
                yield await finished.get()
                continue
            try:
                yield await asyncio.wait_for(finished.get(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                raise TimeoutError(
                    f"{len(self._fs) - yielded} (of {len(self._fs)}) futures unfinished"
                ) from None
