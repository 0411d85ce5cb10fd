"""The behaviour every backend shares, run against each of them.

Sync backends run the sync task functions of ``tasks``; coroutine backends
run their ``a``-prefixed async twins.  A backend that cannot run here is
skipped with its reason, never silently dropped.  ``dask`` runs on the
session's real Dask cluster (the ``dask_cluster`` fixture in conftest.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

import anypool
import tasks


@dataclass(frozen=True)
class Flavor:
    backend: str
    coroutines: bool
    options: dict[str, Any] = field(default_factory=dict)
    """Pool arguments this backend needs here (the Dask scheduler's address)."""

    def fn(self, name: str) -> Callable[..., Any]:
        return getattr(tasks, ("a" + name) if self.coroutines else name)

    def pool(self, workers: int = 2, **kw: Any) -> anypool.Pool:
        return anypool.Pool(self.backend, workers, **self.options, **kw)


FLAVORS = [
    Flavor("inline", False),
    Flavor("thread", False),
    Flavor("process", False),
    Flavor("async", True),
    Flavor("process+async", True),
    Flavor("dask", False),
]


def _ready(request: pytest.FixtureRequest) -> Flavor:
    flavor: Flavor = request.param
    reason = anypool.available_backends().get(flavor.backend)
    if reason:
        pytest.skip(reason)
    if flavor.backend == "dask":
        cluster = request.getfixturevalue("dask_cluster")
        return replace(flavor, options={"address": cluster.address})
    return flavor


@pytest.fixture(params=FLAVORS, ids=lambda f: f.backend)
def flavor(request: pytest.FixtureRequest) -> Flavor:
    return _ready(request)


CONCURRENT = [f for f in FLAVORS if f.backend != "inline"]


@pytest.fixture(params=CONCURRENT, ids=lambda f: f.backend)
def concurrent(request: pytest.FixtureRequest) -> Flavor:
    return _ready(request)


class TestResults:
    def test_submit_returns_an_anypool_future_with_the_result(self, flavor: Flavor) -> None:
        """submit() gives an anypool.Future that is also a concurrent.futures.Future."""
        with flavor.pool() as pool:
            fut = pool.submit(flavor.fn("square"), 7)
            assert isinstance(fut, anypool.Future)
            assert isinstance(fut, cf.Future)
            assert fut.result(timeout=30) == 49

    def test_keywords_pass_through_to_the_task(self, flavor: Flavor) -> None:
        """Every keyword reaches the callable; pool options never steal one."""
        with flavor.pool() as pool:
            assert pool.submit(flavor.fn("add"), 1, b=2, c=3).result(30) == 6

    def test_map_keeps_input_order(self, flavor: Flavor) -> None:
        with flavor.pool() as pool:
            assert list(pool.map(flavor.fn("square"), range(500))) == [x * x for x in range(500)]

    def test_map_over_several_iterables_stops_at_the_shortest(self, flavor: Flavor) -> None:
        with flavor.pool() as pool:
            assert list(pool.map(flavor.fn("add"), [1, 2, 3], [10, 20])) == [11, 22]

    def test_map_over_nothing_yields_nothing(self, flavor: Flavor) -> None:
        with flavor.pool() as pool:
            assert list(pool.map(flavor.fn("square"), [])) == []

    def test_imap_unordered_yields_every_result(self, flavor: Flavor) -> None:
        with flavor.pool() as pool:
            got = sorted(pool.imap_unordered(flavor.fn("square"), range(300)))
        assert got == sorted(x * x for x in range(300))

    def test_a_returned_exception_object_is_a_value(self, flavor: Flavor) -> None:
        """A task that returns an exception (not raises it) succeeds with it as its result."""
        if flavor.coroutines:
            pytest.skip("sync task function")
        with flavor.pool() as pool:
            value = pool.submit(tasks.return_exception).result(30)
        assert isinstance(value, ValueError)

    def test_module_helpers_build_a_pool_for_one_call(self, flavor: Flavor) -> None:
        assert anypool.map(flavor.fn("square"), range(20), backend=flavor.backend, workers=2,
                           **flavor.options) == [x * x for x in range(20)]
        it = anypool.imap(flavor.fn("square"), itertools.count(), backend=flavor.backend, workers=2,
                          **flavor.options)
        assert list(itertools.islice(it, 10)) == [x * x for x in range(10)]
        it.close()  # type: ignore[attr-defined]


class TestErrors:
    def test_a_task_exception_is_raised_as_itself_with_a_note(self, flavor: Flavor) -> None:
        """except ValueError still works; a note names the task, the worker and the attempt."""
        with flavor.pool() as pool:
            fut = pool.submit(flavor.fn("fail_on"), 3)
            with pytest.raises(ValueError, match="bad item 3") as info:
                fut.result(30)
        notes = getattr(info.value, "__notes__", [])
        assert any("failed on" in n and "attempt 1 of 1" in n for n in notes), notes

    def test_an_exception_whose_str_raises_fails_only_its_task(self, flavor: Flavor) -> None:
        """Its ``__str__`` is user code: sending it back (a worker crashed), retrying and
        recording it (the dispatcher raised) must not need it."""
        with flavor.pool(retries=1, backoff=0, record=True) as pool:
            fut = pool.submit(flavor.fn("raise_broken_str"))
            with pytest.raises(tasks.BrokenStrError):
                fut.result(30)
            assert [a.error for a in fut.attempts] == ["BrokenStrError: <str() raised RuntimeError>"]
            assert pool.submit(flavor.fn("square"), 3).result(30) == 9
            assert pool.stats.crashed == 0
        assert {r.error for r in pool.timeline() if r.outcome != "ok"} == {
            "BrokenStrError: <str() raised RuntimeError>"}

    def test_map_raises_at_the_failing_position_after_earlier_results(self, flavor: Flavor) -> None:
        with flavor.pool() as pool:
            it = iter(pool.map(flavor.fn("fail_on"), range(10)))
            assert [next(it) for _ in range(3)] == [0, 1, 2]
            with pytest.raises(ValueError, match="bad item 3"):
                next(it)

    def test_return_exceptions_yields_them_in_place(self, flavor: Flavor) -> None:
        with flavor.pool() as pool:
            got = list(pool.imap(flavor.fn("fail_on"), range(6), return_exceptions=True))
        assert got[:3] == [0, 1, 2]
        assert got[4:] == [4, 5]
        assert isinstance(got[3], ValueError)

    @pytest.mark.timeout(30)
    def test_a_stopiteration_fails_only_its_own_item_of_a_batch(self, flavor: Flavor) -> None:
        """Raised inside a batch's C loop it read as the batch's end: the batch came back short.

        (A thread worker died of it and the map hung; a process pool broke.)  Every backend
        fails that item with a RuntimeError, as PEP 479 turns one raised in a generator,
        and runs the rest of the batch.
        """
        with flavor.pool() as pool:
            got = list(pool.imap(flavor.fn("stop_on"), range(8), chunksize=8, return_exceptions=True))
            assert got[:3] == [0, 1, 2]
            assert got[4:] == [4, 5, 6, 7]
            assert isinstance(got[3], RuntimeError)
            assert "StopIteration" in str(got[3])
            it = iter(pool.map(flavor.fn("stop_on"), range(8), chunksize=8))
            assert [next(it) for _ in range(3)] == [0, 1, 2]
            with pytest.raises(RuntimeError, match="StopIteration"):
                next(it)
            assert pool.submit(flavor.fn("square"), 3).result(30) == 9

    def test_an_input_that_fails_runs_every_item_it_gave_then_raises(self, flavor: Flavor) -> None:
        """As ``multiprocessing.Pool.imap``: the items read in the batch it broke in run too.

        (They were read into a list that the input's error discarded: here 8 and 9.)
        """
        def source() -> Iterator[int]:
            yield from range(10)
            raise OSError("the input broke")

        with flavor.pool() as pool:
            it = iter(pool.imap(flavor.fn("square"), source(), chunksize=4))
            assert [next(it) for _ in range(10)] == [x * x for x in range(10)]
            with pytest.raises(OSError, match="the input broke"):
                next(it)

    def test_a_failed_task_does_not_hurt_its_neighbours(self, flavor: Flavor) -> None:
        with flavor.pool() as pool:
            futs = [pool.submit(flavor.fn("fail_on"), i) for i in range(8)]
            done = [f.exception(30) is None for f in futs]
        assert done == [i != 3 for i in range(8)]


class TestAsync:
    def test_a_future_can_be_awaited_without_blocking_the_loop(self, flavor: Flavor) -> None:
        async def main() -> tuple[int, int]:
            with flavor.pool() as pool:
                fut = pool.submit(flavor.fn("sleep"), 0.3, 5)
                ticks = 0

                async def ticker() -> None:
                    nonlocal ticks
                    while not fut.done():
                        ticks += 1
                        await asyncio.sleep(0.01)

                t = asyncio.create_task(ticker())
                value = await fut
                await t
                await pool.ashutdown()
                return value, ticks

        if flavor.backend == "inline":
            pytest.skip("inline runs the task inside submit(), in the caller")
        value, ticks = asyncio.run(main())
        assert value == 5
        assert ticks >= 5, "the event loop was blocked while the task ran"

    def test_async_for_over_imap(self, flavor: Flavor) -> None:
        async def main() -> list[int]:
            async with flavor.pool() as pool:
                return [r async for r in pool.imap(flavor.fn("square"), range(50))]

        assert asyncio.run(main()) == [x * x for x in range(50)]

    def test_as_completed_works_on_a_mix_of_futures(self, flavor: Flavor) -> None:
        with flavor.pool() as pool, cf.ThreadPoolExecutor(1) as tpe:
            fs: list[cf.Future[Any]] = [pool.submit(flavor.fn("square"), i) for i in range(5)]
            fs.append(tpe.submit(tasks.square, 10))
            got = sorted(f.result() for f in anypool.as_completed(fs, timeout=30))
        assert got == [0, 1, 4, 9, 16, 100]

    def test_as_completed_in_a_coroutine(self, flavor: Flavor) -> None:
        async def main() -> list[int]:
            async with flavor.pool() as pool:
                fs = [pool.submit(flavor.fn("square"), i) for i in range(5)]
                return sorted([f.result() async for f in anypool.as_completed(fs, timeout=30)])

        assert asyncio.run(main()) == [0, 1, 4, 9, 16]


def _refuses_new_work(pool: anypool.Pool, flavor: Flavor) -> None:
    """A shut-down pool refuses submit and every map at the call, reading none of the input."""
    with pytest.raises(anypool.PoolClosed):
        pool.submit(flavor.fn("square"), 1)
    items = iter(range(5))
    for method in (pool.map, pool.imap, pool.imap_unordered):  # at the call, as submit
        with pytest.raises(anypool.PoolClosed, match="shut down"):
            method(flavor.fn("square"), items)
    assert next(items) == 0  # none of the input was read (and dropped)


class TestLifecycle:
    def test_submit_after_shutdown_is_refused(self, flavor: Flavor) -> None:
        pool = flavor.pool()
        pool.shutdown()
        _refuses_new_work(pool, flavor)

    def test_cancel_before_start_and_cancel_futures(self, concurrent: Flavor) -> None:
        """Queued tasks can be cancelled; shutdown(cancel_futures=True) cancels the rest."""
        with concurrent.pool(workers=1, concurrency=1) as pool:
            first = pool.submit(concurrent.fn("sleep"), 0.5, "first")
            queued = [pool.submit(concurrent.fn("sleep"), 0, i) for i in range(20)]
            deadline = time.monotonic() + 20
            while not first.running() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert queued[-1].cancel()
            pool.shutdown(cancel_futures=True)
            assert first.result(30) == "first"
            assert queued[-1].cancelled()
            assert sum(f.cancelled() for f in queued) >= 10

    @pytest.mark.timeout(30)
    @pytest.mark.parametrize("how", ["for", "async for"])
    def test_leaving_a_map_loop_early_cancels_what_has_not_started(self, concurrent: Flavor,
                                                                   how: str) -> None:
        """No close() and no garbage collection needed: the loop dropping the iterator is enough.

        (As ``ThreadPoolExecutor.map``.  A reference cycle between the result iterator and
        what it returned kept the map open until the next collection, its queued work running.)
        """
        if concurrent.backend == "process+async":
            pytest.skip("it sends every batch of the window to its processes at once: none is queued")
        sleep = concurrent.fn("sleep")

        async def read_async() -> anypool.Pool:
            async with concurrent.pool(workers=1) as pool:
                async for _ in pool.imap(sleep, itertools.repeat(0.05), chunksize=1):
                    break
                await asyncio.sleep(0.01)  # the loop closes a dropped async generator in a task
            return pool

        gc.disable()  # a collection would close it anyway, and hide the cycle
        try:
            if how == "for":
                with concurrent.pool(workers=1) as pool:
                    for _ in pool.imap(sleep, itertools.repeat(0.05), chunksize=1):
                        break
            else:
                pool = asyncio.run(read_async())
        finally:
            gc.enable()
        assert pool.stats.cancelled > 0

    def test_shutdown_without_wait_returns_at_once(self, concurrent: Flavor) -> None:
        pool = concurrent.pool(workers=1)
        fut = pool.submit(concurrent.fn("sleep"), 1.0, "done")
        t = time.monotonic()
        pool.shutdown(wait=False)
        assert time.monotonic() - t < 0.5
        assert fut.result(30) == "done"

    def test_map_results_can_be_read_after_the_with_block(self, flavor: Flavor) -> None:
        """The stdlib idiom: an input of known length runs to its end at shutdown, not one window."""
        with flavor.pool() as pool:
            results = pool.map(flavor.fn("square"), range(300))
            peeked = pool.imap(flavor.fn("square"), range(300))
            assert next(peeked) == 0
            unordered = pool.imap_unordered(flavor.fn("square"), [3] * 300)
        assert list(results) == [x * x for x in range(300)]
        assert list(peeked) == [x * x for x in range(1, 300)]
        assert list(unordered) == [9] * 300
        assert pool.stats.done == 900

    def test_a_map_over_an_iterator_stops_at_shutdown_and_says_why(self, flavor: Flavor) -> None:
        """An iterator may be endless: what was submitted comes back, then a clear PoolClosed."""
        with flavor.pool() as pool:
            results = pool.map(flavor.fn("square"), itertools.count())
        got: list[int] = []
        with pytest.raises(anypool.PoolClosed, match="before this map's input was read to its end"):
            got.extend(results)
        assert got
        assert got == [x * x for x in range(len(got))]
        with flavor.pool() as pool:
            ended = pool.map(flavor.fn("square"), iter([1, 2, 3]))
        assert list(ended) == [1, 4, 9]  # it had ended inside the first window: nothing was cut

    def test_shutdown_from_a_done_callback_closes_the_pool_without_waiting_for_itself(
            self, flavor: Flavor) -> None:
        """The callback runs on a thread the pool needs (a worker's, the manager's): no deadlock."""
        if flavor.backend == "async":
            pytest.skip("on its loop's thread a blocking shutdown() raises: see test_coroutines")
        pool = flavor.pool()
        done = threading.Event()
        first = pool.submit(flavor.fn("square"), 3)
        first.add_done_callback(lambda f: (pool.shutdown(), done.set()))
        assert done.wait(30)
        assert first.result(30) == 9
        _refuses_new_work(pool, flavor)
        pool.shutdown()  # from here it waits, for the workers too (the fixtures check them gone)

    @pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt()],
                             ids=["SystemExit", "KeyboardInterrupt"])
    def test_a_done_callback_raising_system_exit_or_ctrl_c_is_logged_and_the_pool_goes_on(
            self, concurrent: Flavor, exc: BaseException, caplog: pytest.LogCaptureFixture) -> None:
        """The stdlib's Future lets SystemExit and KeyboardInterrupt out of a callback: in
        the thread that settled the task they skipped the rest of its settlement (so
        shutdown waited for ever) and ended that thread (a worker, the manager, the loop)."""
        def quit_(_: object) -> None:
            raise exc

        pool = concurrent.pool(1)
        try:
            first = pool.submit(concurrent.fn("sleep"), 0.5, "first")
            first.add_done_callback(quit_)  # long before the task ends
            assert first.result(30) == "first"
            assert pool.submit(concurrent.fn("square"), 4).result(30) == 16, "the pool still runs tasks"
        finally:
            closer = threading.Thread(target=pool.shutdown, daemon=True)
            closer.start()
            closer.join(30)
        assert not closer.is_alive(), f"shutdown hung: {pool._dispatch.outstanding} unit(s) outstanding"
        s = pool.stats
        assert (s.submitted, s.done, s.running) == (2, 2, 0)
        assert "exception calling callback for" in caplog.text

    def test_initializer_runs_in_each_worker_and_fills_worker_state(self, flavor: Flavor) -> None:
        with flavor.pool(initializer=tasks.set_state, initargs=("who", "init")) as pool:
            got = list(pool.map(flavor.fn("get_state"), ["who"] * 20))
        assert got == ["init"] * 20

    def test_a_failing_initializer_breaks_the_pool_once(self, flavor: Flavor) -> None:
        """The pool reports the initializer's error; it does not restart workers forever."""
        pool = flavor.pool(initializer=tasks.init_fails)
        try:
            with pytest.raises(anypool.InitializerFailed, match="initializer"):
                pool.submit(flavor.fn("square"), 2).result(30)
            with pytest.raises(anypool.BrokenPool):
                _submit_until_refused(pool, flavor.fn("square"))
        finally:
            pool.shutdown(wait=False, kill=True)

    def test_stats_count_what_happened(self, flavor: Flavor) -> None:
        with flavor.pool() as pool:
            list(pool.imap(flavor.fn("fail_on"), range(10), return_exceptions=True))
        s = pool.stats
        assert (s.submitted, s.done, s.failed, s.running) == (10, 9, 1, 0)
        assert s.backend == flavor.backend
        assert "9 done, 1 failed" in str(s)


class TestOptions:
    def test_retries_until_success(self, flavor: Flavor, tmp_path: Any) -> None:
        counter = tmp_path / "attempts"
        with flavor.pool() as pool:
            fut = pool.with_options(retries=3, backoff=0).submit(_flaky, str(counter), 2)
            assert fut.result(30) == "ok after 3"
        assert len(fut.attempts) == 2
        assert all(a.outcome == "error" for a in fut.attempts)

    def test_retry_on_limits_what_is_retried(self, flavor: Flavor) -> None:
        with flavor.pool() as pool:
            view = pool.with_options(retries=3, backoff=0, retry_on=(KeyError,))
            fut = view.submit(flavor.fn("fail_on"), 3)
            with pytest.raises(ValueError):
                fut.result(30)
        assert fut.attempts == ()

    @pytest.mark.timeout(30)
    def test_a_retry_on_predicate_that_raises_means_no_retry(
            self, flavor: Flavor, caplog: pytest.LogCaptureFixture) -> None:
        """The task fails with its own error, which names the predicate's; logged once.

        (It raised on the backend's thread: a worker died and the map hung, a process pool
        broke, an inline submit raised the predicate's error.)
        """
        with flavor.pool() as pool:
            view = pool.with_options(retries=2, backoff=0, retry_on=tasks.never)
            fut = view.submit(flavor.fn("fail_on"), 3)
            with pytest.raises(ValueError, match="bad item 3") as info:
                fut.result(30)
            assert fut.attempts == ()
            notes = getattr(info.value, "__notes__", [])
            assert any("retry_on predicate never raised" in n and "the predicate broke" in n
                       for n in notes), notes
            got = list(view.imap(flavor.fn("fail_on"), range(6), return_exceptions=True))
            assert got[:3] == [0, 1, 2]
            assert got[4:] == [4, 5]
            assert isinstance(got[3], ValueError)
        logged = [r for r in caplog.records if "retry_on predicate" in r.getMessage()]
        assert len(logged) == 1

    def test_a_timeout_fails_the_task_on_time(self, concurrent: Flavor) -> None:
        with concurrent.pool() as pool:
            t = time.monotonic()
            fut = pool.with_options(timeout=0.5).submit(concurrent.fn("sleep"), 20)
            with pytest.raises(anypool.TaskTimeout) as info:
                fut.result(30)
            assert time.monotonic() - t < 3.0
            assert pool.submit(concurrent.fn("square"), 3).result(30) == 9
        # before, thread and dask said "was stopped" of a call that runs on
        stoppable = concurrent.backend not in ("thread", "dask")
        assert info.value.stopped is stoppable
        assert ("and was stopped" if stoppable else "and was abandoned: a running call cannot be "
                "stopped here, so it runs on") in str(info.value)

    def test_with_options_rejects_unknown_names(self, flavor: Flavor) -> None:
        with flavor.pool() as pool, pytest.raises(TypeError, match="unknown task option"):
            pool.with_options(timout=3)


class TestBackPressure:
    def test_imap_over_an_endless_generator_stays_a_bounded_distance_ahead(self, flavor: Flavor) -> None:
        pulled = 0

        def source() -> Iterator[int]:
            nonlocal pulled
            for i in itertools.count():
                pulled = i + 1
                yield i

        limit = 20_000 if not flavor.coroutines else 3_000
        with flavor.pool() as pool:
            lead = 0
            for n, r in enumerate(pool.imap(flavor.fn("square"), source())):
                assert r == n * n
                lead = max(lead, pulled - n)
                if n + 1 == limit:
                    break
        assert pulled < limit + 100_000
        assert lead <= 50_000, lead


def _flaky(path: str, failures: int) -> str:
    """Fail the first ``failures`` calls (counted in a file, so across processes)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        n = len(os.read(fd, 1000)) + 1
        os.write(fd, b"x")
    finally:
        os.close(fd)
    if n <= failures:
        raise ConnectionError(f"flaky failure {n}")
    return f"ok after {n}"


def _submit_until_refused(pool: anypool.Pool, fn: Callable[..., Any]) -> None:
    for _ in range(50):
        pool.submit(fn, 2).result(30)
        time.sleep(0.05)
