"""Small pieces on their own: options, errors, futures, batch sizing, statistics, map semantics."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import itertools
import pickle
import random
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import anypool
import tasks
from anypool.errors import describe_exit
from anypool.mapping import BatchSizer
from anypool.stats import Histogram, WorkerStats
from anypool.tasks import POOL_DEFAULT, TaskOptions


class TestTaskOptions:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"timeout": 0}, "timeout must be a positive number"),
            ({"timeout": -1}, "timeout must be a positive number"),
            ({"retries": -1}, "retries must be an int >= 0"),
            ({"retries": 1.5}, "retries must be an int >= 0"),
            ({"backoff": -1}, "backoff and backoff_max must be >= 0"),
        ],
    )
    def test_bad_values_are_refused_with_a_clear_message(self, kwargs: dict, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            TaskOptions(**kwargs)

    @pytest.mark.parametrize("kwargs", [{"timeout": "1"}, {"backoff": "0.5"}, {"backoff_max": None},
                                        {"timeout": True}])
    def test_a_value_that_is_not_a_number_is_refused_by_name(self, kwargs: dict) -> None:
        name = next(iter(kwargs))
        with pytest.raises(TypeError, match=f"{name} must be a number of seconds"):
            TaskOptions(**kwargs)
        if kwargs != {"backoff_max": None}:  # None clears an option in with_options
            with anypool.Pool("thread", 1) as pool, \
                    pytest.raises(TypeError, match=f"{name} must be a number of seconds"):
                pool.with_options(**kwargs)

    def test_retry_on_must_be_exception_types_or_a_predicate(self) -> None:
        with pytest.raises(TypeError, match="retry_on must be"):
            TaskOptions(retry_on=(ValueError, "nope"))  # type: ignore[arg-type]
        assert TaskOptions(retry_on=lambda e: "flaky" in str(e)).should_retry(OSError("flaky disk"))

    def test_pool_default_keeps_the_pools_value_and_none_clears_it(self) -> None:
        base = TaskOptions(timeout=5, retries=2)
        assert base.merged(timeout=POOL_DEFAULT).timeout == 5
        assert base.merged(timeout=None).timeout is None
        assert base.merged(retries=POOL_DEFAULT, timeout=POOL_DEFAULT) is base
        custom = TaskOptions(timeout=5, retries=2, retry_on=(OSError,), backoff=1, backoff_max=2)
        assert custom.merged(timeout=None, retries=None, retry_on=None, backoff=None,
                             backoff_max=None) == TaskOptions()  # each raised before

    def test_options_are_frozen_values(self) -> None:
        opts = TaskOptions(timeout=5, retries=2)
        assert opts == TaskOptions(5, 2)
        assert hash(opts) == hash(TaskOptions(5, 2))
        assert opts != TaskOptions(timeout=5)
        assert repr(opts) == ("TaskOptions(timeout=5, retries=2, retry_on=(<class 'Exception'>,), "
                              "backoff=0.1, backoff_max=30.0)")
        with pytest.raises(AttributeError, match="TaskOptions is frozen: cannot assign to field 'timeout'"):
            opts.timeout = 1  # type: ignore[misc]
        assert pickle.loads(pickle.dumps(opts)) == opts
        with pytest.raises(TypeError, match="unknown task option"):
            opts.merged(tiemout=1)

    def test_result_and_stats_values_pickle_and_compare(self) -> None:
        cr = anypool.CommandResult("true", ("true",), 0, b"", b"", 1.0, 0.5, 42)
        assert pickle.loads(pickle.dumps(cr)) == cr
        assert cr._replace(returncode=1) != cr
        assert cr._replace(returncode=1).returncode == 1
        with pytest.raises(TypeError, match="has no field"):
            cr._replace(code=1)
        with anypool.Pool(backend="thread", workers=1) as pool:
            pool.submit(abs, -1).result()
        stats = pool.stats
        back = pickle.loads(pickle.dumps(stats))
        assert back == stats
        assert back.run_time.count == 1
        assert repr(stats).startswith("PoolStats(backend='thread', choices={}, workers=1, submitted=1,")

    def test_backoff_is_jittered_under_an_exponential_cap(self) -> None:
        opts = TaskOptions(retries=5, backoff=0.1, backoff_max=1.0)
        for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (6, 1.0)]:
            delays = [opts.delay(attempt) for _ in range(200)]
            assert min(delays) >= 0
            assert max(delays) <= cap
            assert max(delays) > cap / 2
        assert TaskOptions(backoff=0).delay(3) == 0


class TestPoolArguments:
    def test_workers_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="workers must be an int >= 1"):
            anypool.Pool("thread", 0)

    def test_unknown_backend_lists_the_known_ones(self) -> None:
        with pytest.raises(anypool.BackendUnavailable, match=r"unknown backend 'threads'.*thread"):
            anypool.Pool("threads")

    @pytest.mark.parametrize(("kwargs", "error", "message"), [
        ({"chunksize": 0}, ValueError, "chunksize must be >= 1, not 0"),
        ({"chunksize": -1}, ValueError, "chunksize must be >= 1, not -1"),
        ({"buffersize": 0}, ValueError, "buffersize must be >= 1, not 0"),
        ({"buffersize": -1}, ValueError, "buffersize must be >= 1, not -1"),
        ({"chunksize": 2.5}, TypeError, "chunksize must be an int or None, not 2.5"),
        ({"chunksize": "3"}, TypeError, "chunksize must be an int or None, not '3'"),
        ({"buffersize": True}, TypeError, "buffersize must be an int or None, not True"),
    ])
    def test_map_sizes_are_checked_at_the_call(self, kwargs: dict, error: type, message: str) -> None:
        with anypool.Pool("thread", 1) as pool:
            for method in (pool.map, pool.imap, pool.imap_unordered):
                with pytest.raises(error, match=message):
                    method(abs, range(3), **kwargs)
            assert pool.stats.submitted == 0

    @pytest.mark.parametrize(("kwargs", "error", "message"), [
        ({"backend": "bogus"}, anypool.BackendUnavailable, "unknown backend 'bogus'"),
        ({"chunksize": 0}, ValueError, "chunksize must be >= 1, not 0"),
        ({"workers": 0}, ValueError, "workers must be an int >= 1"),
        ({"own_lop": True}, TypeError, "unknown option"),
    ])
    def test_module_imap_checks_its_arguments_at_the_call(self, kwargs: dict, error: type,
                                                           message: str) -> None:
        """As Pool.imap does (it was a generator function: nothing ran before the first next())."""
        with pytest.raises(error, match=message):
            anypool.imap(abs, range(3), **kwargs)
        results = anypool.imap(abs, [-1, -2], backend="thread", workers=1)
        assert list(results) == [1, 2]

    def test_a_start_method_is_checked_when_the_pool_is_made(self) -> None:
        with pytest.raises(ValueError, match="start_method must be one of 'fork', 'forkserver', 'spawn'"):
            anypool.Pool("process", start_method="bogus")

    @pytest.mark.parametrize("backend", ["thread", "async", "subprocess", "inline"])
    @pytest.mark.parametrize("kwargs", [{"start_method": "fork"}, {"max_tasks_per_worker": 2},
                                        {"max_memory_per_worker": 1 << 30}])
    def test_worker_process_options_are_refused_where_there_are_no_worker_processes(
            self, backend: str, kwargs: dict) -> None:
        with pytest.raises(ValueError, match=f"{next(iter(kwargs))}= does not apply to the '{backend}'"):
            anypool.Pool(backend, **kwargs)

    def test_max_workers_is_a_synonym_and_cannot_contradict(self) -> None:
        assert anypool.Pool("thread", max_workers=3).workers == 3
        with pytest.raises(TypeError, match="not both"):
            anypool.Pool("thread", 2, max_workers=3)

    def test_an_option_the_backend_does_not_take_is_refused(self) -> None:
        with pytest.raises(TypeError, match=r"unknown option\(s\) for backend 'thread': own_lop"):
            anypool.Pool("thread", own_lop=True)
        assert anypool.Pool("async", own_loop=True).workers == 10_000

    def test_submit_passes_fn_and_self_keywords_through(self) -> None:
        """CPython's test_submit_keyword: submit's own parameters are positional-only."""
        with anypool.Pool("thread", 1) as pool:
            assert pool.submit(lambda **kw: kw, fn=1, self=2).result(5) == {"fn": 1, "self": 2}


class TestErrors:
    @pytest.mark.parametrize(
        "err",
        [
            anypool.TaskError("ValueError", "boom", "Traceback ..."),
            anypool.TaskTimeout(2.5, "#3 f"),
            anypool.TaskTimeout(2.5, "#3 f", stopped=False),
            anypool.WorkerCrashed("worker died", -11, 42),
            anypool.SerializationError("argument 0 cannot be sent"),
            anypool.PoolClosed("closed"),
            anypool.InitializerFailed("init raised"),
            anypool.BackendUnavailable("no such backend"),
        ],
        ids=lambda e: type(e).__name__,
    )
    def test_every_error_survives_pickling(self, err: BaseException) -> None:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err)
        assert str(back) == str(err)
        assert vars(back) == vars(err)

    def test_errors_extend_what_stdlib_users_already_catch(self) -> None:
        from concurrent.futures.process import BrokenProcessPool

        assert issubclass(anypool.TaskTimeout, TimeoutError)
        assert issubclass(anypool.WorkerCrashed, BrokenProcessPool)
        assert issubclass(anypool.SerializationError, TypeError)
        assert issubclass(anypool.PoolClosed, RuntimeError)
        assert issubclass(anypool.BrokenPool, cf.BrokenExecutor)
        assert issubclass(anypool.BackendUnavailable, LookupError)

    @pytest.mark.parametrize(("code", "text"), [
        (0, "exited with code 0"), (3, "exited with code 3"),
        (-9, "was killed by signal SIGKILL (9)"), (-11, "was killed by signal SIGSEGV (11)"),
        (None, "is still running"),
    ])
    def test_exit_statuses_read_as_words(self, code: int | None, text: str) -> None:
        assert describe_exit(code) == text


class TestBatchSizer:
    def test_starts_at_one_and_grows_toward_the_target_time(self) -> None:
        s = BatchSizer(target=0.02, cap=4096, workers=2, length=None)
        assert s.next_size() == 1
        s.observe(1, 1e-5)
        assert s.next_size() == 16  # at most 16 times a step
        for _ in range(5):
            s.observe(s.next_size(), s.next_size() * 1e-5)
        assert s.next_size() == 2000  # 20 ms of 10 µs items

    def test_a_slow_batch_shrinks_batches_at_once(self) -> None:
        s = BatchSizer(target=0.02, cap=4096, workers=2, length=None)
        for _ in range(4):
            s.observe(s.next_size(), s.next_size() * 1e-6)
        s.observe(10, 10 * 0.01)
        assert s.next_size() == 2

    def test_a_known_length_caps_batches_at_a_fair_share(self) -> None:
        s = BatchSizer(target=1.0, cap=4096, workers=4, length=1000)
        for _ in range(4):
            s.observe(s.next_size(), 1e-9)
        assert s.next_size() == 63  # ceil(1000 / 16)

    def test_a_given_chunksize_is_kept(self) -> None:
        s = BatchSizer(target=0.02, cap=4096, workers=2, length=None, fixed=7)
        s.observe(7, 1.0)
        assert s.next_size() == 7


class TestHistogram:
    def test_quantiles_are_within_a_bucket(self) -> None:
        h = Histogram()
        values = [0.001 * (i + 1) for i in range(1000)]
        for v in values:
            h.add(v)
        assert h.quantile(0.5) == pytest.approx(0.5, rel=0.03)
        assert h.quantile(0.95) == pytest.approx(0.95, rel=0.03)
        assert h.max == 1.0
        assert h.total == pytest.approx(sum(values))

    def test_a_workers_record_fills_its_histograms_as_add_would(self) -> None:
        """WorkerStats.record inlines Histogram.add (a per-task path): the two must agree."""
        rng = random.Random(7)
        ws, run, wait = WorkerStats("w"), Histogram(), Histogram()
        for _ in range(2000):
            submitted = rng.uniform(0, 10)
            started = submitted + rng.choice([0.0, -1e-6, 1e-12, rng.expovariate(1e3)])  # clocks may disagree
            ended = started + rng.choice([0.0, -1e-9, 1e-12, rng.expovariate(1e4), rng.expovariate(1)])
            n = rng.choice([1, 1, 3, 4096])
            ws.record(started, ended, submitted, n)
            took = max(ended - started, 0.0)
            run.add(took / n, n)
            wait.add(max(started - submitted, 0.0), n)
        for mine, theirs in ((ws.run, run), (ws.wait, wait)):
            assert (mine.counts, mine.n, mine.max) == (theirs.counts, theirs.n, theirs.max)
            assert mine.total == pytest.approx(theirs.total)


class TestMapSemantics:
    def test_the_stdlib_timeout_bounds_the_whole_iteration(self) -> None:
        with anypool.Pool("thread", 2) as pool:
            it = iter(pool.map(tasks.sleep, [0.0, 5.0, 5.0], timeout=0.5))
            assert next(it) is None
            t = time.monotonic()
            with pytest.raises(TimeoutError):
                next(it)
            assert time.monotonic() - t < 2

    def test_an_input_that_fails_delivers_what_ran_first(self) -> None:
        def source() -> Iterator[int]:
            yield from range(5)
            raise OSError("the input broke")

        with anypool.Pool("thread", 2) as pool:
            it = iter(pool.imap(tasks.square, source()))
            got = [next(it) for _ in range(5)]
            with pytest.raises(OSError, match="the input broke"):
                next(it)
        assert got == [0, 1, 4, 9, 16]

    def test_leaving_the_loop_early_cancels_what_has_not_started(self) -> None:
        ran = itertools.count()

        def count(x: int) -> int:
            next(ran)
            time.sleep(0.01)
            return x

        with anypool.Pool("thread", 2) as pool:
            it = pool.imap(count, range(10_000), chunksize=1)
            assert next(it) == 0
            it.close()
        assert next(ran) < 100

    @pytest.mark.parametrize("how", ["iter", "aiter", "none"])
    def test_a_result_iterator_dropped_before_it_started_cancels_what_has_not_started(
            self, how: str) -> None:
        """A generator's ``finally`` runs only once it has started: dropped before, it closes too."""
        gc.disable()  # no collection to close what a reference cycle would hold
        try:
            with anypool.Pool("thread", 1) as pool:
                results = pool.imap(tasks.sleep, itertools.repeat(0.05), chunksize=1)
                if how == "iter":
                    results = iter(results)  # type: ignore[assignment]
                elif how == "aiter":
                    results = aiter(results)  # type: ignore[assignment]
                del results
        finally:
            gc.enable()
        assert pool.stats.cancelled > 0

    def test_buffersize_bounds_the_items_in_flight(self) -> None:
        pulled = 0

        def source() -> Iterator[int]:
            nonlocal pulled
            for i in range(1000):
                pulled = i + 1
                yield i

        with anypool.Pool("thread", 2) as pool:
            lead = 0
            for n, _ in enumerate(pool.map(tasks.square, source(), buffersize=10)):
                lead = max(lead, pulled - n)
        assert lead <= 11

    @pytest.mark.timeout(20)
    def test_a_batch_reported_with_the_wrong_number_of_results_fails_instead_of_hanging(
            self, caplog: pytest.LogCaptureFixture) -> None:
        """Which result is whose is then unknown: every item fails, loudly, and the batch ends.

        (A short batch was never complete: its map and the pool's shutdown waited for ever,
        or the timing division by its length raised in the backend's thread.)  Reported here
        the way a backend reports, on a map run whose source is empty so nothing else runs.
        """
        from anypool.mapping import Batch, MapIterator, MapRun
        from anypool.tasks import ONE, Task

        with anypool.Pool("thread", 1) as pool:
            dispatch = pool._dispatch
            run = MapRun(dispatch=dispatch, backend=pool._backend, fn=tasks.square, source=iter(()),
                         style=ONE, options=TaskOptions(), ordered=True, length=None, chunksize=None,
                         buffersize=None, timeout=None, return_exceptions=True)
            batch = Batch(run, 0, 3)
            run._inflight.append(batch)
            run._inflight_items += 3
            task = Task(dispatch.begin(3), tasks.square, [1, 2, 3], ONE, TaskOptions(), None, batch)
            now = time.time()
            dispatch.finish(task, [1, 4], now, now, dispatch.stats.worker("thread-1"))
            got = list(MapIterator(run))
            assert dispatch.outstanding == 0
        assert [type(r) for r in got] == [RuntimeError] * 3
        assert "reported 2 results for the 3 items" in str(got[0])
        assert "reported 2 results for the 3 items" in caplog.text

    def test_imap_unordered_yields_in_completion_order(self) -> None:
        with anypool.Pool("thread", 4) as pool:
            got = list(pool.imap_unordered(tasks.sleep, [0.4, 0.0, 0.2, 0.1], "abcd", chunksize=1))
        assert got == ["b", "d", "c", "a"]


class TestFutures:
    def test_as_completed_times_out(self) -> None:
        with anypool.Pool("thread", 1) as pool:
            fut = pool.submit(tasks.sleep, 1)
            with pytest.raises(TimeoutError):
                list(anypool.as_completed([fut], timeout=0.1))

    def test_as_completed_times_out_in_a_coroutine(self) -> None:
        async def main(fut: anypool.Future[object]) -> None:
            async for _ in anypool.as_completed([fut], timeout=0.1):
                pass

        with anypool.Pool("thread", 1) as pool:
            fut = pool.submit(tasks.sleep, 1)
            with pytest.raises(TimeoutError, match="1 \\(of 1\\) futures unfinished"):
                asyncio.run(main(fut))

    def test_as_completed_yields_what_finished_before_a_zero_timeout_runs_out(self) -> None:
        """As ``concurrent.futures.as_completed``: done futures first, then the timeout."""
        futs: list[anypool.Future[int]] = [anypool.Future() for _ in range(4)]
        for i, f in enumerate(futs[:3]):
            f.set_result(i)
        it = iter(anypool.as_completed(futs, timeout=0))
        assert [next(it).result() for _ in range(3)] == [0, 1, 2]
        with pytest.raises(TimeoutError, match="1 \\(of 4\\) futures unfinished"):
            next(it)

    def test_a_future_used_by_stdlib_wait(self) -> None:
        with anypool.Pool("thread", 2) as pool:
            futs = [pool.submit(tasks.square, i) for i in range(4)]
            done, not_done = cf.wait(futs, timeout=10)
        assert len(done) == 4
        assert not not_done


    @pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt(), ValueError("callback bug")],
                             ids=["SystemExit", "KeyboardInterrupt", "ValueError"])
    def test_a_callback_that_raises_is_logged_and_the_others_still_run(
            self, exc: BaseException, caplog: pytest.LogCaptureFixture) -> None:
        """The stdlib logs an Exception but lets SystemExit and KeyboardInterrupt out of
        set_result(), skipping the other callbacks and, in a pool, the rest of the task's
        settlement (its worker thread ended and shutdown() waited for ever)."""
        import threading

        def settle() -> None:
            fut: anypool.Future[int] = anypool.Future()
            fut.add_done_callback(lambda f: calls.append("first"))
            fut.add_done_callback(_raiser(exc))
            fut.add_done_callback(lambda f: calls.append("last"))
            fut.set_result(1)

        calls: list[str] = []
        worker = threading.Thread(target=settle)
        worker.start()
        worker.join(10)
        assert calls == ["first", "last"]
        assert caplog.text.count("exception calling callback for") == 1
        calls.clear()
        if isinstance(exc, KeyboardInterrupt):
            # on the main thread it is Ctrl-C's: raised, but after the other callbacks
            with pytest.raises(KeyboardInterrupt):
                settle()
        else:
            settle()
        assert calls == ["first", "last"]


def _raiser(exc: BaseException) -> Any:
    def callback(_: object) -> None:
        raise exc
    return callback


class TestFutureInternals:
    def test_a_blocked_waiter_is_woken_and_a_timed_out_wait_recovers(self) -> None:
        """The lazy condition: threads that really block are woken; timeouts leave no trace."""
        import threading

        fut: anypool.Future[int] = anypool.Future()
        with pytest.raises(TimeoutError):
            fut.result(timeout=0.05)
        got: list[int] = []
        waiters = [threading.Thread(target=lambda: got.append(fut.result(10))) for _ in range(3)]
        for t in waiters:
            t.start()
        time.sleep(0.1)
        fut.set_result(7)
        for t in waiters:
            t.join(5)
        assert got == [7, 7, 7]

    def test_an_anypool_future_is_much_lighter_than_the_stdlibs(self) -> None:
        import tracemalloc

        def per(make: object) -> float:
            tracemalloc.start()
            keep = [make() for _ in range(2000)]  # type: ignore[operator]
            size = tracemalloc.take_snapshot().statistics("filename")
            tracemalloc.stop()
            del keep
            return sum(s.size for s in size) / 2000

        assert per(anypool.Future) < per(cf.Future) / 2


    def test_stdlib_wait_and_as_completed_see_outcomes_that_come_while_they_wait(self) -> None:
        """The waiter list stdlib ``wait`` installs exists only once it does (none per future)."""
        import threading

        futs: list[anypool.Future[int]] = [anypool.Future() for _ in range(3)]
        assert all(f._waiter_list is None for f in futs)

        def finish() -> None:
            time.sleep(0.05)
            futs[2].set_result(2)
            time.sleep(0.05)
            futs[0].set_exception(ValueError("no"))

        t = threading.Thread(target=finish)
        t.start()
        done, not_done = cf.wait(futs, timeout=10, return_when=cf.FIRST_EXCEPTION)
        assert done == {futs[0], futs[2]}
        assert not_done == {futs[1]}
        t.join()
        t = threading.Thread(target=lambda: (time.sleep(0.05), futs[1].set_result(1)))
        t.start()
        order = list(cf.as_completed(futs, timeout=10))
        t.join()
        assert order[-1] is futs[1]
        assert set(order) == set(futs)
        assert all(not f._waiters for f in futs)  # every waiter was removed again
        with pytest.raises(cf.InvalidStateError):
            futs[1].set_exception(ValueError("twice"))

    def test_a_pending_submit_holds_few_objects_for_the_garbage_collector(self) -> None:
        """Its full collections walk every one of them, for each pending task, each time.

        A submit without keyword arguments is its task record, its future and
        the future's lock: the arguments' tuples hold no dict, so the collector
        untracks them, and the future has no waiter list until one is needed.
        """
        import gc
        import threading

        gate = threading.Event()
        with anypool.Pool("thread", 1) as pool:
            pool.submit(gate.wait, 30)  # the worker is busy: the rest stay pending
            gc.collect()
            before = len(gc.get_objects())
            futs = [pool.submit(tasks.square, i) for i in range(2000)]
            gc.collect()
            gc.collect()  # an outer tuple seen before its inner one is untracked the next time
            per = (len(gc.get_objects()) - before) / 2000
            gate.set()
            assert [f.result(30) for f in futs] == [i * i for i in range(2000)]
        # task, future, lock (was 6: + two tuples and a list); 3.13's collector
        # leaves some argument tuples tracked (a sixth of them here), its business
        assert per <= (3.1 if sys.version_info < (3, 13) else 3.25), per


class TestAsyncFutures:
    def test_asyncio_takes_an_async_backend_future_as_it_is(self) -> None:
        async def main() -> None:
            async with anypool.Pool("async") as pool:
                fut = pool.submit(tasks.asquare, 3)
                assert asyncio.ensure_future(fut) is fut  # no wrapping task
                assert await asyncio.gather(fut, pool.submit(tasks.asquare, 4)) == [9, 16]
                done, _ = await asyncio.wait([pool.submit(tasks.asquare, 5)])
                assert [f.result() for f in done] == [25]
                assert await asyncio.shield(pool.submit(tasks.asquare, 6)) == 36

        asyncio.run(main())

    def test_wait_for_cancels_the_coroutine_on_time(self) -> None:
        cancelled: list[bool] = []

        async def slow() -> None:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        async def main() -> None:
            async with anypool.Pool("async") as pool:
                fut = pool.submit(slow)
                t = time.monotonic()
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(fut, 0.2)
                assert time.monotonic() - t < 2
                assert fut.cancelled()
                await asyncio.sleep(0.05)

        asyncio.run(main())
        assert cancelled == [True]

    def test_sync_code_still_gets_the_stdlibs_cancelled_error(self) -> None:
        with anypool.Pool("async", 1) as pool:
            fut = pool.submit(tasks.asleep, 30)
            time.sleep(0.1)
            assert fut.cancel()
            with pytest.raises(cf.CancelledError):
                fut.result(5)

    def test_a_thread_backend_future_awaited_stays_waitable_after_wait_for(self) -> None:
        """A running thread task cannot be cancelled: wait_for gives up on time, the task runs on."""
        async def main(pool: anypool.Pool) -> anypool.Future[object]:
            fut = pool.submit(tasks.sleep, 0.5, "done")
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(fut, 0.1)
            return fut

        with anypool.Pool("thread", 1) as pool:
            fut = asyncio.run(main(pool))
            assert fut.result(5) == "done"


def test_code_that_runs_no_coroutine_does_not_load_asyncio() -> None:
    """The CLI and thread/process pools start faster without it (~30 ms of imports)."""
    import subprocess
    import sys

    code = ("import sys, anypool, anypool.cli\n"
            "with anypool.Pool('thread', 2) as pool:\n"
            "    assert list(pool.map(abs, [-1, -2])) == [1, 2]\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'asyncio'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


class TestWorkerStateBinding:
    """An inline pool runs tasks in the caller's thread and must leave it as it found it."""

    @staticmethod
    def _unbound() -> bool:
        try:
            anypool.worker_state()
        except RuntimeError:
            return True
        return False

    def test_a_failing_initializer_leaves_the_callers_thread_unbound(self) -> None:
        pool = anypool.Pool("inline", initializer=tasks.init_fails)
        with pytest.raises(anypool.InitializerFailed):
            pool.submit(tasks.square, 2)
        pool.shutdown()
        assert self._unbound()

    def test_an_inline_pool_inside_a_coroutine_binds_nothing_to_the_thread(self) -> None:
        async def outer() -> int:
            with anypool.Pool("inline") as inner:
                return inner.submit(tasks.square, 3).result()

        async def main() -> int:
            async with anypool.Pool("async") as pool:
                return await pool.submit(outer)

        assert asyncio.run(main()) == 9
        assert self._unbound()  # the coroutine's state was bound to this thread for good

    def test_an_inline_pool_sees_its_own_state_inside_another_pools_worker(self) -> None:
        """The innermost pool's state wins, and the outer one's is back after the call."""
        def inner_call() -> tuple[Any, Any]:
            with anypool.Pool("inline", initializer=tasks.set_state, initargs=("who", "inline")) as inner:
                seen = inner.submit(tasks.get_state, "who").result()
            return seen, anypool.worker_state().get("who")

        async def in_coroutine() -> tuple[Any, Any]:
            return inner_call()

        async def main() -> tuple[Any, Any]:
            async with anypool.Pool("async", initializer=tasks.set_state,
                                    initargs=("who", "async")) as pool:
                return await pool.submit(in_coroutine)

        assert asyncio.run(main()) == ("inline", "async")
        with anypool.Pool("thread", 1, initializer=tasks.set_state, initargs=("who", "thread")) as pool:
            assert pool.submit(inner_call).result(30) == ("inline", "thread")
        assert self._unbound()


def test_the_clock_lets_go_of_a_call_once_it_has_run() -> None:
    """Regression: the clock thread kept its last call's arguments (a retried task and
    the shared memory of its arguments: 190 MB seen) until the next call was due."""
    import gc
    import threading
    import weakref

    from anypool import clock

    class Payload:
        pass

    payload = Payload()
    ref = weakref.ref(payload)
    ran = threading.Event()
    clock.call_later(0, lambda _p: ran.set(), payload)
    assert ran.wait(10)
    del payload
    deadline = time.monotonic() + 5
    while ref() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    assert ref() is None


def test_a_clock_callback_raising_system_exit_does_not_stop_the_clock() -> None:
    """The clock caught only Exception: a SystemExit ended its thread, and the calls
    behind it (every pool's deadlines and retry back-offs) waited for the next
    call_later to start a new one, maybe for ever."""
    import threading

    from anypool import clock

    ran = threading.Event()
    clock.call_later(0.05, _raiser(SystemExit(2)), None)
    clock.call_later(0.1, lambda: ran.set())
    assert ran.wait(10)
