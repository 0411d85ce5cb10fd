"""One future type for sync and async code, and ``as_completed`` over any mix.

``Future`` *is* a ``concurrent.futures.Future`` (so ``wait``, ``as_completed``
and every stdlib helper accept it) that can also be awaited from any running
asyncio loop without blocking it.  It keeps the history of failed attempts
(no arguments, no results: a finished task holds no reference to its input).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from typing import Any, NamedTuple, TypeVar

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

    def __init__(self) -> None:
        super().__init__()
        self._history: list[Attempt] | None = None
        # Set by the async backend when this future's task runs on a loop in
        # the caller's own thread, where a blocking wait could never finish.
        self._loop_thread: int | None = None
        self._cancel_running: Callable[[], bool] | None = None

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
        if super().cancel():
            return True
        hook = self._cancel_running
        if hook is not None and hook():
            with self._condition:
                if self._state == cf._base.RUNNING:
                    self._state = cf._base.CANCELLED_AND_NOTIFIED
                    self._condition.notify_all()
                else:
                    return self._state in (cf._base.CANCELLED, cf._base.CANCELLED_AND_NOTIFIED)
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._invoke_callbacks()  # type: ignore[attr-defined]
            return True
        return False

    def _guard_blocking(self) -> None:
        if self._loop_thread is not None and self._loop_thread == threading.get_ident() and not self.done():
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
        self._guard_blocking()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Return the task's exception (None if it succeeded), waiting like ``result``."""
        self._guard_blocking()
        return super().exception(timeout)

    def __await__(self) -> Generator[Any, None, T]:
        return asyncio.wrap_future(self).__await__()


# A class, so it can have __aiter__ too; named like the stdlib function it extends.
class as_completed(Iterable[cf.Future[Any]]):
    """Yield futures as they finish, from sync code (``for``) or a coroutine (``async for``).

    Works on any mix of anypool futures, from any backends, and
    ``concurrent.futures`` futures.  Futures already done are yielded first.

    Raises:
        TimeoutError: ``timeout`` seconds passed before every future finished.
    """

    def __init__(self, fs: Iterable[cf.Future[Any]], timeout: float | None = None) -> None:
        self._fs = list(dict.fromkeys(fs))
        self._timeout = timeout

    def __iter__(self) -> Iterator[cf.Future[Any]]:
        return cf.as_completed(self._fs, timeout=self._timeout)

    def __aiter__(self) -> AsyncIterator[cf.Future[Any]]:
        return self._agen()

    async def _agen(self) -> AsyncIterator[cf.Future[Any]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[cf.Future[Any]] = asyncio.Queue()
        for f in self._fs:
            f.add_done_callback(lambda f: loop.call_soon_threadsafe(queue.put_nowait, f))
        deadline = None if self._timeout is None else loop.time() + self._timeout
        for yielded in range(len(self._fs)):
            if deadline is None:
                yield await queue.get()
                continue
            try:
                yield await asyncio.wait_for(queue.get(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                raise TimeoutError(
                    f"{len(self._fs) - yielded} (of {len(self._fs)}) futures unfinished"
                ) from None
