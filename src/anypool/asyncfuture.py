"""``AsyncFuture``: the future of the ``async`` backend, also a native asyncio future.

Kept apart from :mod:`anypool.futures` so that code which never runs a
coroutine (the command-line tool, a thread or process pool) does not pay for
importing asyncio (~30 ms).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from .futures import _DONE, _FINISHED, Future

__all__ = ["AsyncFuture"]

T = TypeVar("T")

# In ``_atask`` from the moment the loop claims the task until its asyncio task exists.
STARTING: Any = object()
# In ``_atask`` while the loop reports a coroutine that has ended (see ``_call_awaiter``).
FINISHING: Any = object()


class AsyncFuture(Future[T]):
    """A Future of the ``async`` backend: also a native asyncio future.

    ``asyncio.gather``, ``wait``, ``shield`` and ``wait_for`` take it as it is,
    without wrapping it in a task of their own (a task and a frame per
    future saved).  That is honest only because such a task can always be
    cancelled, as asyncio expects of its futures: cancelling one cancels its
    coroutine.  Futures of thread and process tasks, which cannot be
    cancelled once running, stay plain ``Future`` objects (awaitable all the
    same).

    Callbacks added from a thread running an event loop follow asyncio's
    rules (scheduled on that loop, with their context, never called in
    place); callbacks added from other threads follow ``concurrent.futures``'.
    """

    _asyncio_future_blocking = False
    # asyncio's own helpers read it off any future they were given (gather's
    # results for a cancelled child); set on the instance only by cancel(msg)
    _cancel_message: Any = None

    def __init__(self) -> None:
        super().__init__()
        # Every attribute is set here, never later: instances then share one
        # key table (a late attribute costs each future a private dict, ~460 B).
        # the coroutine's task once started; STARTING while the loop is creating it
        self._atask: asyncio.Task[Any] | None = None
        # the caller's own loop and its thread, when the task runs on it
        self._home: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        # asyncio-style callbacks: None; the usual single awaiter on the home
        # loop as a bare callable, its context in _aio_ctx (no tuple per future);
        # or a list of (fn, loop, context) entries
        self._aio_callbacks: Any = None
        self._aio_ctx: Any = None

    def _cancel_running(self) -> bool:
        atask = self._atask
        if atask is STARTING:
            return True  # the loop will see the cancelled state and cancel what it starts
        if atask is None or atask is FINISHING or atask.done():
            return False
        loop = atask.get_loop()
        if asyncio._get_running_loop() is loop:
            atask.cancel()
        else:
            loop.call_soon_threadsafe(atask.cancel)
        return True

    def _blocks_own_loop(self) -> bool:
        if self._state in _DONE:
            return False
        home = self._home
        if home is not None and home.is_closed():
            # the caller's loop it ran on closed with it unfinished (a loop.close()
            # alone; asyncio.run lets go as it ends): its pool fails it now, or
            # it would be waited for ever
            from .backends.coroutines import let_go_of

            let_go_of(home)
            return False
        return self._loop_thread == threading.get_ident()

    def _running_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop running in this thread, if any.

        On the thread of the loop the task runs on, that loop, known without
        asking asyncio: its lookup costs a ``getpid()`` system call each time
        (to notice a fork), and gather, await and the done callbacks would
        ask three times per task.
        """
        if self._loop_thread is not None and self._loop_thread == threading.get_ident():
            return self._home
        return asyncio._get_running_loop()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop of whoever asks (any loop may await it); outside one, the task's.

        Outside a running loop (``loop.run_until_complete(fut)`` asks before
        it runs) the answer is the loop the task runs on, as an asyncio
        future's would be: a different loop is then told plainly it is not
        this future's, and ``await fut`` inside a coroutine works from any loop.

        Raises:
            RuntimeError: no event loop runs in this thread and the task has none yet.
        """
        if self._loop_thread is not None and self._loop_thread == threading.get_ident():
            return self._home  # type: ignore[return-value]  # _running_loop, inline: once a task
        loop = asyncio._get_running_loop() or self._home
        if loop is None:
            raise RuntimeError("no running event loop")
        return loop

    def add_done_callback(self, fn: Callable[..., object], *, context: Any = None) -> None:
        """Call ``fn(future)`` when done: asyncio's way inside a running loop, else the stdlib's.

        Without ``context``, a callback added on the loop the task runs on
        runs in the context the pool was created in (asyncio would copy the
        one current here: an object per pending future).
        """
        loop = self._running_loop()
        if loop is None:
            super().add_done_callback(fn)
            return
        with self._condition:
            if self._state not in _DONE:
                held = self._aio_callbacks
                if held is None and loop is self._home:
                    self._aio_callbacks, self._aio_ctx = fn, context
                else:
                    entries = self._entries()
                    entries.append((fn, loop, context))
                    self._aio_callbacks = entries
                return
        loop.call_soon(fn, self, context=context)

    def remove_done_callback(self, fn: Callable[..., object]) -> int:
        """Forget ``fn`` (asyncio's API); returns how many registrations were removed."""
        with self._condition:
            entries = self._entries()
            before = len(self._done_callbacks) + len(entries)
            self._done_callbacks = [f for f in self._done_callbacks if f != fn]
            kept = [e for e in entries if e[0] != fn]
            self._aio_callbacks = kept or None
            return before - len(self._done_callbacks) - len(kept)

    def _invoke_callbacks(self) -> None:
        if self._done_callbacks:
            super()._invoke_callbacks()
        held = self._aio_callbacks
        if held is None:
            return
        if self._atask is FINISHING and type(held) is not list:
            return  # the lone awaiter on the home loop: _call_awaiter calls it next
        entries = self._entries()
        self._aio_callbacks = self._aio_ctx = None
        here = self._running_loop()
        for fn, loop, context in entries:
            try:
                if loop is here:
                    loop.call_soon(fn, self, context=context)
                else:
                    loop.call_soon_threadsafe(fn, self, context=context)
            except RuntimeError:
                pass  # that loop is closed: nobody is waiting there any more

    def _call_awaiter(self) -> None:
        """After the loop has reported the coroutine's end: call the lone awaiter in place.

        asyncio would schedule that callback (usually ``gather``'s or an
        awaiting task's wake-up) with ``call_soon``, but the caller is itself
        a callback the loop has just run (the asyncio task's done callback),
        so the wake-up comes no later than asyncio's own tasks' do; one loop
        hop and one handle per task are saved.  Never called from user code
        (``cancel()`` keeps asyncio's rule of no callback called in place).
        """
        if self._atask is not FINISHING:
            return
        self._atask = None
        fn = self._aio_callbacks
        if fn is None or type(fn) is list or self._state not in _DONE:
            return  # none, scheduled already, or to be retried
        ctx = self._aio_ctx
        self._aio_callbacks = self._aio_ctx = None
        try:
            if ctx is None:
                fn(self)
            else:
                ctx.run(fn, self)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            assert self._home is not None
            self._home.call_exception_handler({
                "message": f"Exception in callback {fn!r}", "exception": exc, "future": self})

    def _entries(self) -> list[tuple[Any, asyncio.AbstractEventLoop, Any]]:
        """The asyncio-style callbacks as a list of (fn, loop, context) entries."""
        held = self._aio_callbacks
        if held is None:
            return []
        if isinstance(held, list):
            return held
        assert self._home is not None
        return [(held, self._home, self._aio_ctx)]

    def cancel(self, msg: Any = None) -> bool:
        """Cancel the task, running or not; asyncio's ``msg`` becomes the awaiters' CancelledError's."""
        if not super().cancel():
            return False
        if msg is not None:
            self._cancel_message = msg
        # Cancelled while the loop was starting it: the loop cancels the task
        # it creates once it sees this state, and if it created it meanwhile,
        # this cancels it (twice is harmless).
        self._cancel_running()
        return True

    def _make_cancelled_error(self) -> BaseException:
        msg = self._cancel_message
        return asyncio.CancelledError() if msg is None else asyncio.CancelledError(msg)

    def result(self, timeout: float | None = None) -> T:
        """As :meth:`Future.result`; cancelled: ``asyncio.CancelledError`` inside a running loop."""
        if self._state == _FINISHED and self._exception is None:
            return self._result  # type: ignore[return-value]  # gather asks every future
        try:
            return super().result(timeout)
        except cf.CancelledError:
            if _in_loop():
                raise self._make_cancelled_error() from None
            raise

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """As :meth:`Future.exception`; cancelled: ``asyncio.CancelledError`` inside a running loop."""
        if self._state == _FINISHED:
            return self._exception  # gather asks every future, twice
        try:
            return super().exception(timeout)
        except cf.CancelledError:
            if _in_loop():
                raise self._make_cancelled_error() from None
            raise

    def __await__(self) -> Generator[Any, None, T]:
        if not self.done():
            self._asyncio_future_blocking = True
            yield self  # the awaiting task registers its wake-up and sleeps
        if not self.done():
            raise RuntimeError("await wasn't used with future")
        return self.result()

    __iter__ = __await__


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
