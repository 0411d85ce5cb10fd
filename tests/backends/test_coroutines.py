"""The async and process+async backends: many coroutines, the caller's loop, cancellation."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import types
import weakref
from collections import Counter
from collections.abc import AsyncGenerator, Generator
from typing import Any

import psutil
import pytest

import anypool
import tasks


def test_ten_thousand_concurrent_sleeps_finish_in_about_a_second() -> None:
    with anypool.Pool("async") as pool:
        t = time.monotonic()
        futs = [pool.submit(tasks.asleep, 1.0, i) for i in range(10_000)]
        assert [f.result(30) for f in futs] == list(range(10_000))
        took = time.monotonic() - t
    assert took < 4.0, f"10,000 one-second sleeps took {took:.1f} s"


async def wait_weakly_held(x: int) -> int:
    """Wait on a future that only a weak reference can complete, as asyncio streams do.

    (A StreamReaderProtocol holds its reader weakly: a coroutine in
    ``readline()`` is kept alive by a reference cycle and by its task alone.)
    """
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    ref = weakref.ref(fut)

    def wake() -> None:
        f = ref()
        if f is not None:
            f.set_result(x)

    loop.call_later(0.3, wake)
    return await fut


@pytest.mark.parametrize("backend", ["async", "auto"])
def test_a_garbage_collection_mid_wait_does_not_lose_running_coroutines(backend: str) -> None:
    """Regression: the pool's own loop kept no strong reference to map items' tasks.

    asyncio references tasks weakly, so a collection while they waited
    destroyed them ("Task was destroyed but it is pending!") and the map
    never ended.
    """
    with anypool.Pool(backend) as pool:
        it = pool.map(wait_weakly_held, range(20), timeout=10)
        time.sleep(0.1)
        gc.collect()
        assert list(it) == list(range(20))


def test_finished_futures_let_their_coroutines_go() -> None:
    """Awaited together (gather keeps every future), 100,000 finished coroutines
    and their asyncio tasks would otherwise stay in memory until the last one ends."""

    async def main() -> int:
        async with anypool.Pool("async") as pool:
            futs = [pool.submit(tasks.asquare, i) for i in range(500)]
            assert await asyncio.gather(*futs) == [i * i for i in range(500)]
            gc.collect()
            return sum(type(o) is asyncio.Task for o in gc.get_objects())

    assert asyncio.run(main()) < 50


@pytest.mark.timeout(30)
def test_thousands_of_calls_that_fail_at_once_while_others_wait_settle_every_one() -> None:
    """Each failed call launched the next waiting one from inside its own settling.

    (A frame deeper each time: RecursionError, futures never settled, the pool's exit
    hung; and settled inside an ``except`` block, each failure's ``__context__`` was the
    one before it, a chain as long as the queue.)
    """
    with anypool.Pool("async", 2) as pool:
        slots = [pool.submit(tasks.asleep, 0.2) for _ in range(2)]  # the rest wait behind these
        bad = [pool.submit(tasks.asquare, 1, 2) for _ in range(3000)]  # a TypeError when called
        mapped = pool.map(tasks.asquare, range(100), range(100))  # the same, as map items
        _, pending = cf.wait(bad, timeout=20)
        assert not pending
        errors = [f.exception(0) for f in bad]
        assert all(isinstance(e, TypeError) for e in errors)
        assert all(e.__context__ is None for e in errors)  # type: ignore[union-attr]
        with pytest.raises(TypeError):
            next(iter(mapped))
        assert [f.result(10) for f in slots] == [None, None]


def test_map_runs_a_sleep_per_item_concurrently() -> None:
    t = time.monotonic()
    assert anypool.map(tasks.asleep, [0.5] * 2000, range(2000), backend="async") == list(range(2000))
    assert time.monotonic() - t < 3.0


def test_workers_caps_how_many_coroutines_run_at_once() -> None:
    running = peak = 0

    async def tracked(_: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    with anypool.Pool("async", 7) as pool:
        list(pool.map(tracked, range(100)))
        for f in [pool.submit(tracked, i) for i in range(50)]:
            f.result(10)
    assert peak <= 7


def test_a_task_on_the_pools_own_loop_wakes_awaiters_on_another_loop() -> None:
    """Regression (def3158): awaiters on a loop other than the pool's were never woken."""
    with anypool.Pool("async") as pool:
        assert pool.submit(tasks.asquare, 2).result(5) == 4  # the pool now runs its own loop

        async def main() -> list[Any]:
            fut = pool.submit(tasks.asleep, 0.05, 3)
            failing = pool.submit(tasks.afail_on, 3)

            async def await_it(f: Any) -> Any:
                return await f

            return await asyncio.wait_for(asyncio.gather(
                await_it(fut), fut, await_it(failing), failing, return_exceptions=True), 5)

        got = asyncio.run(main())
    assert got[:2] == [3, 3]
    assert [type(e) for e in got[2:]] == [ValueError, ValueError]


def test_asyncio_helpers_take_a_cancelled_task_as_they_take_a_cancelled_future() -> None:
    """Regression: gather(..., return_exceptions=True) read ``_cancel_message`` off a
    cancelled AsyncFuture, raised AttributeError inside its callback and never returned."""

    async def main() -> None:
        async with anypool.Pool("async", 2) as pool:
            futs = [pool.submit(tasks.asleep, 0.1, i) for i in range(4)]
            futs[3].cancel()  # still queued behind workers=2
            running = pool.submit(tasks.asleep, 5)
            await asyncio.sleep(0.01)
            running.cancel("no longer wanted")
            got = await asyncio.wait_for(asyncio.gather(*futs, running, return_exceptions=True), 5)
            assert got[:3] == [0, 1, 2]
            assert [type(e) for e in got[3:]] == [asyncio.CancelledError] * 2
            assert got[4].args == ("no longer wanted",)
            with pytest.raises(asyncio.CancelledError, match="no longer wanted"):
                await running
            done, pending = await asyncio.wait(futs, timeout=5)
            assert not pending
            assert sum(f.cancelled() for f in done) == 1

    asyncio.run(main())


class TestAttachedToTheCallersLoop:
    def test_tasks_run_on_the_callers_loop_and_await_never_blocks(self) -> None:
        async def which_loop() -> asyncio.AbstractEventLoop:
            return asyncio.get_running_loop()

        async def main() -> None:
            async with anypool.Pool("async") as pool:
                assert await pool.submit(which_loop) is asyncio.get_running_loop()
                assert [r async for r in pool.imap(tasks.asquare, range(5))] == [0, 1, 4, 9, 16]

        asyncio.run(main())

    def test_an_awaited_task_wakes_its_awaiter_in_one_loop_turn_more_than_asyncio(self) -> None:
        """One turn to hand the call to the pool, none between the coroutine's end and its awaiter.

        The future's awaiter is called from the asyncio task's own done
        callback, not scheduled behind it (a turn and a handle per task, which
        100,000 pending tasks feel).
        """
        async def turns_to_await(make: Any) -> int:
            turns = 0
            stop = False

            async def count() -> None:
                nonlocal turns
                while not stop:
                    turns += 1
                    await asyncio.sleep(0)

            counter = asyncio.create_task(count())
            await asyncio.sleep(0)
            before = turns
            assert await make() in (9, [9])
            after = turns
            stop = True
            await counter
            return after - before

        async def main() -> None:
            async with anypool.Pool("async") as pool:
                plain = await turns_to_await(lambda: asyncio.create_task(tasks.asquare(3)))
                pooled = await turns_to_await(lambda: pool.submit(tasks.asquare, 3))
                gathered = await turns_to_await(
                    lambda: asyncio.gather(pool.submit(tasks.asquare, 3)))
            assert pooled <= plain + 1, (pooled, plain)
            assert gathered <= plain + 2, (gathered, plain)

        asyncio.run(main())

    def test_a_done_callback_that_raises_reaches_the_loops_exception_handler(self) -> None:
        seen: list[dict[str, Any]] = []
        called: list[int] = []

        def bad(fut: Any) -> None:
            called.append(fut.result())
            raise ValueError("callback broke")

        async def main() -> None:
            asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: seen.append(ctx))
            async with anypool.Pool("async") as pool:
                fut = pool.submit(tasks.asquare, 4)
                fut.add_done_callback(bad)
                assert await pool.submit(tasks.asquare, 5) == 25
                assert await fut == 16
                await asyncio.sleep(0.01)

        asyncio.run(main())
        assert called == [16]
        assert [type(c["exception"]) for c in seen] == [ValueError]

    def test_callbacks_and_awaiters_run_in_the_contexts_they_should(self) -> None:
        """An awaiting task resumes in its own context; a plain done callback runs in
        the context the pool was made in, never the pool's worker state (asyncio
        would copy the adder's context: an object per pending future; before, it
        was the context of whichever submit woke the loop, by accident)."""
        import contextvars

        var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
        seen: list[tuple[str, bool]] = []

        def callback(_: Any) -> None:
            try:
                anypool.worker_state()
                has_state = True
            except RuntimeError:
                has_state = False
            seen.append((var.get(), has_state))

        async def awaiter(pool: anypool.Pool, value: str) -> str:
            var.set(value)
            await pool.submit(tasks.asquare, 2)
            return var.get()

        async def main() -> None:
            var.set("at creation")
            async with anypool.Pool("async") as pool:
                var.set("later")
                fut = pool.submit(tasks.asquare, 3)
                fut.add_done_callback(callback)
                assert await asyncio.gather(awaiter(pool, "a"), awaiter(pool, "b")) == ["a", "b"]
                assert await fut == 9
                await asyncio.sleep(0.01)

        asyncio.run(main())
        assert seen == [("at creation", False)]

    def test_every_awaiter_and_callback_is_woken_however_the_task_ends(self) -> None:
        """Regression: with more than one asyncio-style callback on a future, or a
        plain callable's result (set without a coroutine), set_result called no
        callback at all and every ``await`` on that future hung (def3158)."""
        called: list[str] = []

        async def main() -> None:
            async with anypool.Pool("async") as pool:
                async def await_it(fut: Any) -> Any:
                    return await fut

                fut = pool.submit(tasks.asquare, 3)
                fut.add_done_callback(lambda _: called.append("first"))
                fut.add_done_callback(lambda _: called.append("second"))
                assert await asyncio.wait_for(
                    asyncio.gather(await_it(fut), await_it(fut), fut), 5) == [9, 9, 9]
                # a plain function runs on the loop and is settled without an asyncio task
                assert await asyncio.wait_for(pool.submit(tasks.square, 4), 5) == 16
                fut = pool.submit(tasks.square, 5)
                assert await asyncio.wait_for(asyncio.gather(await_it(fut), fut), 5) == [25, 25]
                # a failure reaches every awaiter too
                fut = pool.submit(tasks.afail_on, 3)
                got = await asyncio.wait_for(
                    asyncio.gather(await_it(fut), fut, return_exceptions=True), 5)
                assert [type(e) for e in got] == [ValueError, ValueError]
                await asyncio.sleep(0.01)

        asyncio.run(main())
        assert called == ["first", "second"]

    def test_a_pools_coroutines_share_one_context(self) -> None:
        """As they share worker_state(): documented in the README's limits."""
        import contextvars

        var: contextvars.ContextVar[str] = contextvars.ContextVar("shared", default="unset")

        async def setter() -> None:
            var.set("set by one")

        async def getter() -> str:
            return var.get()

        async def main() -> str:
            async with anypool.Pool("async") as pool:
                await pool.submit(setter)
                seen = await pool.submit(getter)
            assert var.get() == "unset"  # the caller's own context is untouched
            return seen

        assert asyncio.run(main()) == "set by one"

    def test_blocking_calls_on_the_loop_thread_raise_instead_of_deadlocking(self) -> None:
        async def main() -> None:
            pool = anypool.Pool("async")
            fut = pool.submit(tasks.asleep, 0.2, "x")
            with pytest.raises(RuntimeError, match="await future"):
                fut.result()
            with pytest.raises(RuntimeError, match="async for"):
                list(pool.map(tasks.asquare, range(3)))
            with pytest.raises(RuntimeError, match="async for"):  # it hung
                list(anypool.as_completed([fut]))
            with pytest.raises(RuntimeError, match="ashutdown"):
                pool.shutdown()
            assert await fut == "x"
            await pool.ashutdown()

        asyncio.run(main())


    def test_work_left_when_asyncio_run_ends_is_settled_and_what_was_queued_never_starts(
            self, caplog: pytest.LogCaptureFixture) -> None:
        """Regression: the common fire-and-forget ``asyncio.run(main())`` inside a pool's
        ``with``: the futures never settled, result() and the ``with``'s shutdown said
        they would block a loop that was gone, and asyncio's cancelling the running task
        started the queued ones on the closing loop ("Task was destroyed but it is pending")."""
        started: list[int] = []

        async def note_then_sleep(x: int) -> int:
            started.append(x)
            await asyncio.sleep(30)
            return x

        with caplog.at_level(logging.WARNING), anypool.Pool("async", workers=1) as pool:
            async def main() -> list[Any]:
                futs = [pool.submit(note_then_sleep, i) for i in range(3)]
                await asyncio.sleep(0.05)
                return futs

            futs = asyncio.run(main())
            gc.collect()
            assert futs[0].cancelled()  # asyncio.run cancelled it as it ended
            for f in futs[1:]:
                with pytest.raises(anypool.PoolClosed, match="event loop this pool ran its coroutines"):
                    f.result(5)
        assert started == [0]
        assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text

    def test_a_thread_waiting_on_a_task_is_woken_when_its_asyncio_run_ends(self) -> None:
        """Regression: it waited for ever (result(timeout) timed out; the future stayed RUNNING)."""
        got: list[BaseException] = []
        pool = anypool.Pool("async", workers=1)
        try:
            async def main() -> threading.Thread:
                futs = [pool.submit(tasks.asleep, 30, i) for i in range(2)]

                def wait() -> None:
                    for f in futs:
                        try:
                            f.result(20)
                        except BaseException as exc:
                            got.append(exc)

                waiter = threading.Thread(target=wait)
                waiter.start()
                await asyncio.sleep(0.05)
                return waiter

            t0 = time.monotonic()
            asyncio.run(main()).join(20)
            assert time.monotonic() - t0 < 5
            assert [type(e) for e in got] == [cf.CancelledError, anypool.PoolClosed]
        finally:
            pool.shutdown()

    @pytest.mark.parametrize("how", ["result here", "result elsewhere", "shutdown"])
    def test_a_loop_closed_without_asyncio_run_is_let_go_of_at_the_next_wait_or_shutdown(
            self, how: str) -> None:
        """Regression: result() and shutdown() on the loop's thread said they would block
        that loop (closed), and from another thread they waited for ever."""
        pool = anypool.Pool("async", workers=1)
        loop = asyncio.new_event_loop()

        async def main() -> list[Any]:
            futs = [pool.submit(tasks.asleep, 30, i) for i in range(2)]
            await asyncio.sleep(0.05)
            return futs

        futs = loop.run_until_complete(main())
        # the running task is the caller's to end, as any task of its loop
        for t in asyncio.all_tasks(loop):
            t.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        if how == "result here":
            with pytest.raises(anypool.PoolClosed):
                futs[1].result(5)
        elif how == "result elsewhere":
            with cf.ThreadPoolExecutor(1) as other, pytest.raises(anypool.PoolClosed):
                other.submit(futs[1].result, 10).result(15)
        pool.shutdown()
        assert all(f.done() for f in futs)
        with pytest.raises(anypool.PoolClosed):
            futs[1].result(0)

    @pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt()],
                             ids=["SystemExit", "KeyboardInterrupt"])
    def test_a_base_exception_from_a_coroutine_ends_asyncio_run_and_leaves_nothing_hanging(
            self, exc: BaseException) -> None:
        """asyncio lets it out of the loop (as from any task): asyncio.run raises it; the
        pool's other tasks are settled, and the pool works in the next asyncio.run."""
        pool = anypool.Pool("async", workers=1)
        futs: list[Any] = []
        try:
            async def main() -> None:
                futs.extend([pool.submit(_sleep_then_raise, 0.05, exc), pool.submit(tasks.asleep, 30, 1),
                             pool.submit(tasks.asleep, 30, 2)])
                await asyncio.sleep(5)

            with pytest.raises(type(exc)):
                asyncio.run(main())
            with pytest.raises(type(exc)):
                futs[0].result(5)
            for f in futs[1:]:
                with pytest.raises(anypool.PoolClosed):
                    f.result(5)

            async def again() -> Any:
                return await pool.submit(tasks.asquare, 3)

            assert asyncio.run(again()) == 9
        finally:
            pool.shutdown()

    def test_a_task_cancelled_from_outside_leaves_the_queue_running(self) -> None:
        """A task cancelled by other code (as asyncio.run does as it ends) holds the queue
        a moment (HOLD_AFTER_CANCEL), then it starts again: the loop did not end."""
        async def main() -> list[Any]:
            async with anypool.Pool("async", workers=1) as pool:
                futs = [pool.submit(tasks.asleep, 0.01 if i else 30, i) for i in range(3)]
                await asyncio.sleep(0.05)
                backend: Any = pool._backend
                (atask,) = backend._running
                atask.cancel()
                return await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 5)

        got = asyncio.run(main())
        assert isinstance(got[0], asyncio.CancelledError)
        assert got[1:] == [1, 2]


def test_cancel_stops_a_running_coroutine() -> None:
    seen: list[str] = []

    async def long_job() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    with anypool.Pool("async") as pool:
        fut = pool.submit(long_job)
        time.sleep(0.1)
        assert fut.cancel()
        assert fut.cancelled()
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
    assert seen == ["cancelled"]


def test_a_timeout_cancels_the_coroutine_and_runs_its_cleanup() -> None:
    cleaned: list[bool] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.append(True)

    with anypool.Pool("async") as pool:
        with pytest.raises(anypool.TaskTimeout):
            pool.with_options(timeout=0.2).submit(slow).result(10)
        assert pool.submit(tasks.asquare, 3).result(10) == 9
    assert cleaned == [True]


def test_a_blocked_loop_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    async def blocks() -> None:
        time.sleep(1.5)  # the mistake the warning is for

    with caplog.at_level(logging.WARNING, logger="anypool"), anypool.Pool("async") as pool:
        pool.submit(blocks).result(10)
    assert any("event loop has not turned" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(60)
def test_a_kill_waits_for_a_blocked_loop_once_not_at_every_step(caplog: pytest.LogCaptureFixture) -> None:
    """A call blocking the pool's own loop cannot be stopped; the kill's three steps
    (cancel what waits, cancel what runs, join the loop) each waited 5 s for it."""
    release = threading.Event()
    pool = anypool.Pool("async", 2)
    try:
        blocked = pool.submit(release.wait, 20)  # a plain call runs on the loop: it holds it
        time.sleep(1.5)  # its heartbeat stops
        queued = pool.submit(tasks.asquare, 3)
        t0 = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="anypool"):
            pool.shutdown(kill=True)
        took = time.monotonic() - t0
        assert took < 8, f"the kill took {took:.1f} s"
        assert queued.cancelled()
    finally:
        release.set()
    assert blocked.result(10) is True


@pytest.mark.timeout(30)
@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt()], ids=["SystemExit", "KeyboardInterrupt"])
def test_a_base_exception_in_a_coroutine_leaves_the_pools_own_loop_running(
        exc: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    """Regression: asyncio re-raises SystemExit and KeyboardInterrupt from a task out of
    the loop, and the pool's own loop closed for good: later tasks failed with "Event
    loop is closed" or never ran, and the exit waited on them for ever."""
    with caplog.at_level(logging.WARNING, logger="anypool"), anypool.Pool("async") as pool:
        with pytest.raises(type(exc)) as raised:
            pool.submit(_sleep_then_raise, 0.01, exc).result(10)
        assert raised.value is exc  # the task's own exception, as on threads
        assert pool.submit(tasks.asquare, 3).result(10) == 9
        # raised by a task the coroutine started, which is nobody's to fail
        assert pool.submit(_start_then_return, 0.05, exc).result(10) == "started"
        time.sleep(0.3)
        assert pool.submit(tasks.asquare, 4).result(10) == 16
    assert sum("went no further" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize("backend", ["async", "process+async"])
def test_a_coroutine_that_handles_its_timeouts_cancellation_ends_with_what_it_made_of_it(
        backend: str) -> None:
    """As ``asyncio.timeout()`` has it, on both backends: a fallback value, or its own
    error (process+async failed both with TaskTimeout)."""
    with anypool.Pool(backend, 1, timeout=0.2) as pool:
        assert pool.submit(_fallback_on_cancel, "value").result(10) == "fallback"
        with pytest.raises(ValueError, match="its own"):
            pool.submit(_fallback_on_cancel, "error").result(10)
        with pytest.raises(anypool.TaskTimeout):
            pool.submit(_fallback_on_cancel, "cancelled").result(10)
        assert pool.stats.timed_out == 1


@pytest.mark.parametrize("backend", ["async", "process+async"])
def test_a_coroutine_raising_cancelled_error_itself_is_cancelled(backend: str) -> None:
    """As asyncio marks its task (process+async failed the future with the CancelledError)."""
    with anypool.Pool(backend, 1) as pool:
        fut = pool.submit(_cancel_itself)
        with pytest.raises(cf.CancelledError):
            fut.result(10)
        assert fut.cancelled()
        assert pool.stats.cancelled == 1


@pytest.mark.parametrize("backend", ["async", "process+async", "auto", "auto on the caller's loop"])
def test_an_async_generator_function_fails_saying_to_collect_its_items(backend: str) -> None:
    """Regression: on async (and auto, which sent it to a thread) the result was an
    async_generator object nobody could use; on process+async, a SerializationError."""
    match = r"_agen is an async generator function, not a coroutine function.*async for x in _agen"
    if backend == "auto on the caller's loop":
        async def main() -> None:
            async with anypool.Pool("auto") as pool:
                with pytest.raises(TypeError, match=match):
                    await pool.submit(_agen, 2)
                assert await pool.submit(tasks.asquare, 3) == 9

        asyncio.run(main())
        return
    with anypool.Pool(backend, 1) as pool:
        with pytest.raises(TypeError, match=match):
            pool.submit(_agen, 2).result(10)
        got = list(pool.imap(_agen, [1, 2], return_exceptions=True))
        assert [type(g) for g in got] == [TypeError, TypeError], got
        assert pool.submit(tasks.asquare, 3).result(10) == 9


@types.coroutine
def _generator_based(n: int) -> Generator[Any, None, int]:
    """A pre-async-def coroutine: a generator that yields to the event loop."""
    yield from asyncio.sleep(0.01).__await__()
    return n * 2


@pytest.mark.parametrize("backend", ["async", "process+async"])
def test_generator_based_coroutines_run_on_the_async_backends(backend: str) -> None:
    with anypool.Pool(backend, 1) as pool:
        assert pool.submit(_generator_based, 21).result(10) == 42
        assert pool.with_options(timeout=5).submit(_generator_based, 1).result(10) == 2


class TestProcessAsync:
    def test_coroutines_spread_over_processes_run_concurrently(self) -> None:
        with anypool.Pool("process+async", 2, concurrency=100) as pool:
            t = time.monotonic()
            got = list(pool.map(tasks.asleep, [0.3] * 400, range(400)))
            took = time.monotonic() - t
            pids = set(pool.map(_apid, range(200)))
        assert got == list(range(400))
        assert took < 3.0, f"400 sleeps of 0.3 s at 2 x 100 took {took:.1f} s"
        assert len(pids) == 2

    def test_a_dead_process_fails_only_the_coroutines_it_held(self) -> None:
        with anypool.Pool("process+async", 2, concurrency=10) as pool:
            victims = [pool.submit(_sleep_then_die, 0.3) for _ in range(1)]
            others = [pool.submit(tasks.asleep, 0.05, i) for i in range(40)]
            with pytest.raises(anypool.WorkerCrashed, match="exited with code 13"):
                victims[0].result(30)
            survived = [f.result(30) for f in others if f.exception(30) is None]
            assert len(survived) >= 20  # those on the other process, at least
            assert pool.submit(tasks.asquare, 5).result(30) == 25

    def test_a_timeout_cancels_the_coroutine_inside_its_process(self) -> None:
        with anypool.Pool("process+async", 1) as pool:
            with pytest.raises(anypool.TaskTimeout):
                pool.with_options(timeout=0.3).submit(tasks.asleep, 30).result(10)
            assert pool.submit(tasks.asquare, 4).result(10) == 16

    @pytest.mark.parametrize("exc", [SystemExit(4), KeyboardInterrupt()],
                             ids=["SystemExit", "KeyboardInterrupt"])
    def test_a_base_exception_in_a_coroutine_with_a_timeout_fails_only_that_task(
            self, exc: BaseException) -> None:
        """Regression: with timeout= each coroutine ran in a task of its own (wait_for), and
        asyncio re-raises SystemExit/KeyboardInterrupt from a task out of the loop: the
        worker ended and the coroutines beside it failed with a bare CancelledError."""
        with anypool.Pool("process+async", 1, timeout=10) as pool:
            others = [pool.submit(tasks.asleep, 0.5, i) for i in range(3)]
            quitter = pool.submit(_sleep_then_raise, 0.1, exc)
            with pytest.raises(type(exc)):
                quitter.result(30)
            assert [f.result(30) for f in others] == [0, 1, 2]
            assert pool.stats.crashed == 0

    @pytest.mark.parametrize("exc", [SystemExit(4), KeyboardInterrupt()],
                             ids=["SystemExit", "KeyboardInterrupt"])
    def test_a_base_exception_in_a_task_a_coroutine_started_ends_nothing(self, exc: BaseException) -> None:
        """Regression: asyncio let it out of the worker's loop, and asyncio.run cancelled
        every coroutine the process held: each came back as a bare CancelledError (not
        WorkerCrashed, never retried), and the process exited."""
        with anypool.Pool("process+async", 1, retries=2) as pool:
            pid = pool.submit(_apid, 0).result(10)
            others = [pool.submit(tasks.asleep, 0.5, i) for i in range(3)]
            assert pool.submit(_start_then_return, 0.1, exc).result(10) == "started"
            assert [f.result(10) for f in others] == [0, 1, 2]
            assert pool.submit(_apid, 0).result(10) == pid
            assert pool.stats.crashed == 0

    def test_a_coroutine_that_kills_its_process_fails_alone_and_the_others_run_again(self) -> None:
        """Regression: every coroutine the dead process held failed with it, even those that
        had finished (their results still in its outbox) or never started."""
        with anypool.Pool("process+async", 2) as pool:
            got = list(pool.imap(_double_or_die, range(30), [7] * 30, return_exceptions=True))
            assert isinstance(got[7], anypool.WorkerCrashed)
            assert "while running #7 _double_or_die" in str(got[7])
            assert [g for i, g in enumerate(got) if i != 7] == [2 * i for i in range(30) if i != 7]
            assert pool.stats.crashed == 1

    def test_retries_re_run_the_others_without_using_up_their_attempts(self) -> None:
        with anypool.Pool("process+async", 2, retries=3, backoff=0.01) as pool:
            futs = [pool.submit(_double_or_die, i, 7) for i in range(30)]
            with pytest.raises(anypool.WorkerCrashed, match="exited with code 3") as info:
                futs[7].result(30)
            assert "attempt 4 of 4" in str(info.value.__notes__)
            others = [f for i, f in enumerate(futs) if i != 7]
            assert [f.result(30) for f in others] == [2 * i for i in range(30) if i != 7]
            assert all(len(f.attempts) == 0 for f in others)
            assert pool.stats.crashed == 4

    def test_a_process_killed_while_its_coroutines_wait_fails_them_all_saying_why(self,
                                                                                 tmp_path: Any) -> None:
        """No coroutine held the loop: none can be blamed, so each fails (an attempt each)."""
        with anypool.Pool("process+async", 1) as pool:
            futs = [pool.submit(tasks.amark_then_sleep, str(tmp_path / str(i)), 30) for i in range(3)]
            deadline = time.monotonic() + 10
            while len(os.listdir(tmp_path)) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            pid = pool.submit(_apid, 0).result(10)
            os.kill(pid, signal.SIGKILL)
            for f in futs:
                with pytest.raises(anypool.WorkerCrashed, match="none could be blamed"):
                    f.result(10)
            assert pool.submit(tasks.asquare, 3).result(10) == 9

    def test_a_coroutine_blocking_its_loop_past_its_timeout_is_stopped(self) -> None:
        """Regression: a coroutine that never yields to its loop (time.sleep) ran on past its
        timeout and returned a success; now its process is killed, ASYNC_GRACE after the
        deadline, and the coroutines waiting behind it run again."""
        with anypool.Pool("process+async", 1, timeout=1) as pool:
            blocker = pool.submit(_block, 6)
            others = [pool.submit(tasks.asleep, 0.2, i) for i in range(3)]
            t0 = time.monotonic()
            with pytest.raises(anypool.TaskTimeout, match=r"task #1 _block ran past its timeout of 1 s"):
                blocker.result(30)
            assert time.monotonic() - t0 < 4
            assert [f.result(30) for f in others] == [0, 1, 2]
            assert pool.stats.timed_out == 1

    def test_a_stopped_process_still_times_out(self) -> None:
        """Regression: a SIGSTOPped worker never timed out (nor ended shutdown(wait=True))."""
        with anypool.Pool("process+async", 1, timeout=0.5) as pool:
            pid = pool.submit(_apid, 0).result(10)
            futs = [pool.submit(tasks.asleep, 30, i) for i in range(2)]
            while not all(f.running() for f in futs):
                time.sleep(0.01)
            os.kill(pid, signal.SIGSTOP)
            for f in futs:
                with pytest.raises(anypool.TaskTimeout, match=r"task #\d asleep ran past"):
                    f.result(10)
            assert pool.submit(tasks.asquare, 3).result(10) == 9

    def test_a_timeout_names_the_task(self) -> None:
        with anypool.Pool("process+async", 1) as pool:
            with pytest.raises(anypool.TaskTimeout, match=r"task #1 asleep ran past its timeout of 0.3 s"):
                pool.with_options(timeout=0.3).submit(tasks.asleep, 30).result(10)
            got = list(pool.with_options(timeout=0.3).imap(tasks.asleep, [0, 30], return_exceptions=True))
            assert "task #1 asleep ran past" in str(got[1])  # numbered within the map

    def test_max_tasks_per_worker_recycles_processes(self) -> None:
        """Regression: process+async ignored max_tasks_per_worker (40 of 40 tasks on one pid)."""
        with anypool.Pool("process+async", 2, max_tasks_per_worker=3) as pool:
            by_map = Counter(pool.map(_apid, range(40)))
            by_submit = Counter(f.result(30) for f in [pool.submit(_apid, i) for i in range(40)])
        assert max(by_map.values()) <= 3, by_map
        assert max(by_submit.values()) <= 3, by_submit
        assert sum(by_map.values()) == sum(by_submit.values()) == 40


_SPAWNING_SCRIPT = """
import asyncio, os, subprocess, sys
sys.path.insert(0, {tests!r})
import anypool

async def spawn(i):
    child = subprocess.Popen(["sleep", "104"])
    with open(os.path.join({out!r}, str(child.pid)), "w"):
        pass
    await asyncio.sleep(60)

if __name__ == "__main__":
    # the fork server's workers, as in any program with threads (a forked worker holds its
    # siblings' sockets, so only the last one forked would see end-of-file)
    with anypool.Pool("process+async", 2, start_method="forkserver") as pool:
        futs = [pool.submit(spawn, i) for i in range(4)]
        while len(os.listdir({out!r})) < 4:
            pass
        print("ready", flush=True)
        for f in futs:
            f.result()
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_processes_a_coroutine_started_die_with_the_program(tmp_path: Any, sig: int) -> None:
    """Regression: a process+async worker saw end-of-file on its socket when the pool's
    process died, returned normally and exited before its watchdog could kill its group,
    leaving every process its coroutines had started running."""
    out = tmp_path / "children"
    out.mkdir()
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", _SPAWNING_SCRIPT.format(tests=tests_dir, out=str(out))],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    children: list[psutil.Process] = []
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        children = [psutil.Process(int(name)) for name in os.listdir(out)]
        proc.send_signal(sig)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        alive = children
        while alive and time.monotonic() < deadline:
            alive = [c for c in alive if _alive(c)]
            time.sleep(0.05)
        assert alive == [], f"{len(alive)} of 4 children outlived the pool's process"
    finally:
        for c in children:
            try:
                c.kill()
            except psutil.Error:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _sleep_then_raise(seconds: float, exc: BaseException) -> None:
    await asyncio.sleep(seconds)
    raise exc


async def _start_then_return(seconds: float, exc: BaseException) -> str:
    """Start a task of its own that raises ``exc`` after ``seconds``, and return."""
    asyncio.get_running_loop().create_task(_sleep_then_raise(seconds, exc))
    return "started"


async def _fallback_on_cancel(then: str) -> str:
    """Sleep; cancelled: return a fallback, raise an error of its own, or let it through."""
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        if then == "value":
            return "fallback"
        if then == "error":
            raise ValueError("its own") from None
        raise
    return "slept"


async def _agen(n: int) -> AsyncGenerator[int, None]:
    for i in range(n):
        yield i


async def _cancel_itself() -> None:
    await asyncio.sleep(0.01)
    raise asyncio.CancelledError


async def _double_or_die(x: int, bad: int) -> int:
    await asyncio.sleep(0.01)
    if x == bad:
        os._exit(3)
    return 2 * x


async def _block(seconds: float) -> str:
    time.sleep(seconds)  # never yields to the loop: only killing the process stops it
    return "finished"


async def _apid(_: int) -> int:
    await asyncio.sleep(0.01)
    return os.getpid()


async def _sleep_then_die(seconds: float) -> None:
    await asyncio.sleep(seconds)
    os._exit(13)


def test_cancelling_a_running_coroutine_is_never_reported_as_refused() -> None:
    """Regression: the loop could report the stop (a CancelledError) before cancel() marked the
    future cancelled, and cancel() then returned False although it had cancelled the coroutine."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns often: the loop may act inside cancel()
    try:
        _cancel_running_coroutines(200)
    finally:
        sys.setswitchinterval(interval)


def _cancel_running_coroutines(n: int) -> None:
    with anypool.Pool("async") as pool:
        for _ in range(n):
            fut = pool.submit(tasks.asleep, 30)
            deadline = time.monotonic() + 5
            while not fut.running() and time.monotonic() < deadline:
                time.sleep(0.001)
            assert fut.cancel()
            assert fut.cancelled()


class TestAsyncioSemantics:
    """What asyncio code expects of a future, found wanting by a bug hunt (stop 20)."""

    def test_a_task_waiting_to_retry_can_be_cancelled(self) -> None:
        """Between attempts the task is pending again: cancel() succeeds, so wait_for and
        timeout() end on time instead of waiting out the back-off and the next attempt."""
        calls: list[int] = []

        async def flaky() -> str:
            calls.append(1)
            raise ValueError("fails")

        def fails_when_called() -> None:
            calls.append(2)
            raise ValueError("fails before any coroutine exists")

        async def main() -> None:
            async with anypool.Pool("async") as pool:
                # the back-off is drawn at random (full jitter): retried until one is long enough
                retrying = pool.with_options(retries=1, backoff=0.5, backoff_max=0.5)
                for fn in (flaky, fails_when_called):
                    for _ in range(30):
                        fut = retrying.submit(fn)
                        while not fut.attempts:
                            await asyncio.sleep(0.005)
                        if fut.done() or fut.running():
                            await asyncio.gather(fut, return_exceptions=True)
                            continue  # the retry began already
                        n = len(calls)
                        assert fut.cancel()
                        assert fut.cancelled()
                        with pytest.raises(asyncio.CancelledError):
                            await fut
                        await asyncio.sleep(0.6)  # past any back-off: the retry was dropped
                        assert len(calls) == n
                        break
                    else:
                        pytest.fail("no back-off long enough to cancel in")
                slow_retry = pool.with_options(retries=3, backoff=2.0, backoff_max=2.0)
                t = time.monotonic()
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(slow_retry.submit(flaky), 0.2)
                assert time.monotonic() - t < 1.0

        asyncio.run(main())

    def test_a_retry_waits_on_threads_can_be_cancelled_too(self) -> None:
        with anypool.Pool("thread", 1) as pool:
            retrying = pool.with_options(retries=1, backoff=1.0, backoff_max=1.0)
            for _ in range(30):
                fut = retrying.submit(tasks.fail_on, 3)
                deadline = time.monotonic() + 10
                while not fut.attempts and time.monotonic() < deadline:
                    time.sleep(0.005)
                if fut.cancel():
                    break
                with pytest.raises(ValueError):  # its retry had begun: cannot be stopped
                    fut.result(10)
            else:
                pytest.fail("no back-off long enough to cancel in")
            assert fut.cancelled()
            with pytest.raises(cf.CancelledError):
                fut.result(5)
            assert len(fut.attempts) == 1

    def test_a_coroutine_cancelled_from_inside_leaves_its_future_cancelled(self) -> None:
        async def cancelled_inside() -> None:
            inner = asyncio.ensure_future(asyncio.sleep(5))
            asyncio.get_running_loop().call_later(0.01, inner.cancel)
            await inner  # its CancelledError ends this coroutine, as in an asyncio.Task

        async def main() -> None:
            async with anypool.Pool("async") as pool:
                fut = pool.submit(cancelled_inside)
                got = await asyncio.gather(fut, return_exceptions=True)
                assert type(got[0]) is asyncio.CancelledError
                assert fut.cancelled()
                with pytest.raises(asyncio.CancelledError):
                    fut.exception()

        asyncio.run(main())

    def test_a_cancelled_ashutdown_does_not_strand_the_last_task(self) -> None:
        async def main() -> None:
            pool = anypool.Pool("async")
            fut = pool.submit(tasks.asleep, 0.3, "done")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(pool.ashutdown(), 0.05)
            assert await asyncio.wait_for(fut, 5) == "done"

        asyncio.run(main())

    def test_result_inside_a_coroutine_on_the_pools_own_loop_raises_instead_of_hanging(self) -> None:
        with anypool.Pool("async") as pool:
            async def outer() -> Any:
                return pool.submit(tasks.asquare, 2).result()

            with pytest.raises(RuntimeError, match="use `await future`"):
                pool.submit(outer).result(10)

    def test_a_timed_out_coroutine_that_handles_its_cancellation_is_not_kept(self) -> None:
        async def fallback() -> str:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                return "fallback"
            return "slept"

        async def main() -> None:
            async with anypool.Pool("async") as pool:
                fut = pool.with_options(timeout=0.01).submit(fallback)
                assert await asyncio.wait_for(fut, 5) == "fallback"
                backend: Any = pool._backend
                assert not backend._expired
                assert not backend._running

        asyncio.run(main())

    def test_a_pool_made_outside_any_loop_follows_the_next_asyncio_run(self) -> None:
        """It attaches to the first loop that uses it; once that loop has closed, to the
        next (a fresh initializer there), instead of failing with "Event loop is closed"."""
        inits: list[int] = []

        def init() -> None:
            inits.append(1)

        pool = anypool.Pool("async", initializer=init)
        try:
            for _ in range(2):
                async def main() -> list[Any]:
                    return await asyncio.gather(pool.submit(tasks.asquare, 3), pool.submit(tasks.square, 4))

                assert asyncio.run(main()) == [9, 16]
            assert inits == [1, 1]
        finally:
            pool.shutdown(kill=True)  # the last loop is closed: quietly nothing to cancel

    @pytest.mark.parametrize("how", ["wait=False", "kill=True", "no shutdown"])
    def test_leaving_a_pool_behind_at_exit_prints_nothing(self, how: str) -> None:
        import subprocess

        from helpers import python

        stop = {"wait=False": "pool.shutdown(wait=False)", "kill=True": "pool.shutdown(kill=True)",
                "no shutdown": ""}[how]
        code = f"""
import asyncio, anypool, tasks
pool = anypool.Pool("async")
async def main():
    return await pool.submit(tasks.asquare, 3)
assert asyncio.run(main()) == 9  # attached to a loop that then closed
own = anypool.Pool("async")
futs = [own.submit(tasks.asleep, 0.1, i) for i in range(5)]
{stop.replace("pool.", "own.")}
if "kill" in {how!r}:
    assert all(isinstance(f.exception(5), anypool.PoolClosed) for f in futs)
else:
    assert [f.result(5) for f in futs] == list(range(5))
{stop}
print("end")
"""
        for _ in range(3):  # the exit races the loop thread: a few tries
            proc = subprocess.run(python(code), capture_output=True, text=True, timeout=60,
                                  cwd=os.path.dirname(os.path.dirname(__file__)))
            assert proc.stdout.strip() == "end", proc.stderr
            assert proc.stderr == ""

    def test_async_for_over_as_completed_left_early_logs_nothing(self, caplog: Any) -> None:
        pool = anypool.Pool("thread", 2)
        try:
            futs = [pool.submit(tasks.sleep, d, d) for d in (0.01, 0.3, 0.3)]

            async def main() -> Any:
                async for f in anypool.as_completed(futs):
                    return f.result()

            assert asyncio.run(main()) == 0.01
            assert [f.result(5) for f in futs[1:]] == [0.3, 0.3]
        finally:
            pool.shutdown()
        assert not [r for r in caplog.records if "Event loop is closed" in r.getMessage()
                    or "exception calling callback" in r.getMessage()]

    def test_another_loop_is_told_plainly_that_a_task_is_not_its_own(self) -> None:
        """As with an asyncio future of another loop (it said "no running event loop")."""
        with anypool.Pool("async") as pool:
            assert pool.submit(tasks.asquare, 2).result(5) == 4  # its own loop thread
            loop = asyncio.new_event_loop()
            try:
                fut = pool.submit(tasks.asquare, 3)
                with pytest.raises(ValueError, match="belongs to a different loop"):
                    loop.run_until_complete(fut)

                async def await_it() -> Any:
                    return await fut

                assert loop.run_until_complete(await_it()) == 9
            finally:
                loop.close()
