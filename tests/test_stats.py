"""``pool.stats``: each statistic against a workload whose durations and outcomes are known.

Durations come from ``time.sleep``, which never returns early and, on a
loaded machine, returns late; so each bound is tight below and looser above.
Timings are bucketed (2.5 % wide), hence the small allowance below too.
"""

from __future__ import annotations

import time

import pytest

import anypool
import tasks
from anypool.stats import Histogram, Summary

LATE = 0.06  # seconds a sleep may overrun on a busy 2-core machine


def near(value: float, expected: float, late: float = LATE) -> bool:
    return expected * 0.97 <= value <= expected + late


class TestRunTime:
    def test_median_p95_and_max_of_known_durations(self) -> None:
        """100 tasks: 89 of 10 ms, 10 of 50 ms, 1 of 200 ms."""
        durations = [0.01] * 89 + [0.05] * 10 + [0.2]
        with anypool.Pool("thread", 4) as pool:
            for f in [pool.submit(tasks.sleep, d) for d in durations]:
                f.result(30)
        s = pool.stats.run_time
        assert s.count == 100
        assert near(s.median, 0.01, 0.01)
        assert near(s.p95, 0.05, 0.03)
        assert near(s.max, 0.2)
        assert near(s.mean, sum(durations) / 100, 0.02)

    def test_map_items_share_their_batch_time(self) -> None:
        with anypool.Pool("thread", 2) as pool:
            list(pool.map(tasks.sleep, [0.01] * 40, chunksize=10))
        s = pool.stats.run_time
        assert s.count == 40
        assert near(s.median, 0.01, 0.01)


class TestQueueWait:
    def test_tasks_queued_behind_one_worker_wait_their_turn(self) -> None:
        """One worker, five 100 ms tasks at once: they wait 0, 0.1, 0.2, 0.3 and 0.4 s."""
        with anypool.Pool("thread", 1) as pool:
            for f in [pool.submit(tasks.sleep, 0.1) for _ in range(5)]:
                f.result(10)
        w = pool.stats.queue_wait
        assert w.count == 5
        assert near(w.median, 0.2, 2 * LATE)
        assert near(w.p95, 0.4, 4 * LATE), "nearest rank: the 5th of 5"
        assert near(w.max, 0.4, 4 * LATE)

    def test_a_retry_waits_from_its_requeue_not_from_the_first_submit(self) -> None:
        """The failed attempt's run time and back-off are not queue wait."""
        with anypool.Pool("thread", 1, retries=1, backoff=0) as pool:
            assert isinstance(pool.submit(tasks.sleep_then_fail, 0.3).exception(10), ValueError)
        s = pool.stats
        assert s.retried == 1
        assert s.queue_wait.count == 2
        assert s.queue_wait.max < 0.1


class TestCounts:
    def test_done_failed_retried_timed_out_and_cancelled(self) -> None:
        with anypool.Pool("thread", 2) as pool:
            ok = [pool.submit(tasks.square, i) for i in range(10)]
            bad = [pool.with_options(retries=2, backoff=0).submit(tasks.fail_on, 3) for _ in range(3)]
            late = [pool.with_options(timeout=0.05).submit(tasks.sleep, 0.3) for _ in range(2)]
            for f in ok:
                f.result(10)
            for f in bad + late:
                f.exception(10)
            s = pool.stats
        assert (s.submitted, s.done, s.failed, s.running) == (15, 10, 5, 0)
        assert s.retried == 6, "3 tasks x 2 retries"
        assert s.timed_out == 2
        assert (s.crashed, s.cancelled) == (0, 0)

    def test_tasks_cancelled_before_they_ran_are_final_but_not_failed(self) -> None:
        pool = anypool.Pool("thread", 1)
        busy = pool.submit(tasks.sleep, 0.3)
        waiting = [pool.submit(tasks.square, i) for i in range(5)]
        time.sleep(0.05)
        pool.shutdown(cancel_futures=True)
        assert busy.result() is None
        assert all(f.cancelled() for f in waiting)
        s = pool.stats
        assert (s.submitted, s.done, s.failed, s.cancelled, s.running) == (6, 1, 0, 5, 0)
        assert s.throughput > 0

    def test_a_map_left_early_counts_its_cancelled_items_once(self) -> None:
        """Before, each cancelled item was counted as failed too (done + failed +
        cancelled > submitted) and gave run time and queue wait a zero-length sample."""
        pool = anypool.Pool("thread", 1)
        it = pool.map(tasks.sleep, [0.05] * 40, chunksize=1)
        next(it)
        pool.shutdown(cancel_futures=True)
        s = pool.stats
        assert s.failed == 0
        assert s.cancelled >= 1
        assert s.done + s.failed + s.cancelled == s.submitted
        assert s.running == 0
        assert s.run_time.count == s.queue_wait.count == s.done, "only the items that ran are timed"
        assert s.throughput == pytest.approx(s.done / s.elapsed)

    def test_a_coroutine_cancelled_while_it_runs_is_cancelled_not_failed(self) -> None:
        with anypool.Pool("async", 2) as pool:
            slow = pool.submit(tasks.asleep, 5)
            quick = pool.submit(tasks.asleep, 0.01)
            time.sleep(0.1)
            assert slow.cancel()
            quick.result(10)
        s = pool.stats
        assert (s.submitted, s.done, s.failed, s.cancelled, s.running) == (2, 1, 0, 1, 0)

    def test_tasks_stopped_by_a_kill_are_cancelled_not_failed(self) -> None:
        pool = anypool.Pool("process", 1)
        futs = [pool.submit(tasks.sleep, 5) for _ in range(3)]
        deadline = time.monotonic() + 30
        while not futs[0].running() and time.monotonic() < deadline:
            time.sleep(0.02)
        pool.shutdown(kill=True)
        s = pool.stats
        assert (s.submitted, s.done, s.failed, s.cancelled, s.running) == (3, 0, 0, 3, 0)
        assert "0 done, 0 failed, 3 cancelled, 0 running (of 3 submitted)" in str(s)

    def test_a_submit_refused_at_submit_time_is_not_counted(self) -> None:
        """Before, the refused task stayed "1 running" for ever, even after shutdown."""
        import threading

        with anypool.Pool("process", 1) as pool:
            with pytest.raises(anypool.SerializationError):
                pool.submit(tasks.square, threading.Lock())
            assert pool.submit(tasks.square, 3).result(30) == 9
        s = pool.stats
        assert (s.submitted, s.done, s.failed, s.cancelled, s.running) == (1, 1, 0, 0, 0)

    def test_crashed_workers_are_counted(self) -> None:
        with anypool.Pool("process", 2, retries=1, backoff=0) as pool:
            futs = [pool.submit(tasks.crash_if, i, 3) for i in range(6)]
            assert isinstance(futs[3].exception(30), anypool.WorkerCrashed)
            assert [f.result(30) for f in futs if f is not futs[3]] == [0, 1, 2, 4, 5]
        s = pool.stats
        assert (s.done, s.failed, s.crashed, s.retried) == (5, 1, 2, 1)

    def test_running_counts_tasks_not_batches(self) -> None:
        with anypool.Pool("thread", 1) as pool:
            it = pool.imap(tasks.sleep, [0.02] * 40, chunksize=10)
            next(it)
            s = pool.stats
            assert s.running == s.submitted - s.done - s.failed
            assert s.running >= 10, "a whole batch of 10 is still to finish"
            assert len(list(it)) == 39
        assert pool.stats.running == 0

    def test_map_failures_count_per_item(self) -> None:
        with anypool.Pool("thread", 2) as pool:
            out = list(pool.imap(tasks.fail_on, range(1000), return_exceptions=True))
        assert sum(isinstance(r, ValueError) for r in out) == 1
        s = pool.stats
        assert (s.submitted, s.done, s.failed, s.running) == (1000, 999, 1, 0)


    def test_a_snapshot_taken_while_tasks_run_never_shows_more_final_than_submitted(self) -> None:
        """Before, ``submitted`` was read before the workers' counters, so a reader
        preempted between the two saw done > submitted.  Thread switches are made
        very frequent here so that window is hit within a second or two."""
        import sys
        import threading

        bad: list[tuple[int, int]] = []
        reads = 0
        stop = threading.Event()
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            with anypool.Pool("thread", 2) as pool:
                def reader() -> None:
                    nonlocal reads
                    while not stop.is_set():
                        s = pool.stats
                        reads += 1
                        if s.done + s.failed + s.cancelled > s.submitted:
                            bad.append((s.submitted, s.done))

                t = threading.Thread(target=reader)
                t.start()
                try:
                    deadline = time.monotonic() + 3
                    while time.monotonic() < deadline and not bad:
                        for _ in range(100):
                            pool.submit(tasks.square, 1)
                finally:
                    stop.set()
                    t.join(10)
        finally:
            sys.setswitchinterval(interval)
        assert not t.is_alive()
        assert reads > 10
        assert bad == [], "(submitted, done) of snapshots showing more done than submitted"


class TestUtilisation:
    def test_busy_fraction_of_a_busy_and_an_idle_worker(self) -> None:
        with anypool.Pool("thread", 2) as pool:
            pool.submit(tasks.sleep, 0.4).result(10)
        busy = pool.stats.worker_busy
        assert set(busy) == {"thread-1", "thread-2"}, "only real workers, not the never-ran bucket"
        assert max(busy.values()) > 0.9
        assert min(busy.values()) < 0.05

    def test_throughput_and_elapsed_stop_when_the_work_does(self) -> None:
        """One worker, five 100 ms tasks: 5 tasks over about 0.5 s."""
        with anypool.Pool("thread", 1) as pool:
            for f in [pool.submit(tasks.sleep, 0.1) for _ in range(5)]:
                f.result(10)
            first = pool.stats
            time.sleep(0.2)
            idle = pool.stats
        assert near(first.elapsed, 0.5, 0.15)
        assert idle.elapsed == first.elapsed, "an idle pool's clock stops at its last task"
        assert near(first.throughput, 5 / first.elapsed, 0.01)
        assert 8 <= first.throughput <= 10.1
        time.sleep(0.1)
        assert pool.stats.elapsed == first.elapsed, "after shutdown it stays put"


class TestAuto:
    def test_the_choice_and_its_reason_are_recorded(self) -> None:
        """Also: map items arriving while the probe publishes its choice are not lost (they were)."""
        with anypool.Pool("auto", 2) as pool:
            for f in [pool.submit(tasks.sleep, 0.05) for _ in range(4)]:
                f.result(10)
            assert len(list(pool.map(tasks.square, range(5000)))) == 5000
        s = pool.stats
        assert s.backend == "auto"
        assert s.choices["sleep"].startswith("thread: it mostly waits (CPU ")
        # tiny, or CPU-bound without holding the GIL, as the probe measured on this machine
        assert s.choices["square"].startswith("thread: ")
        table = str(s)
        assert "backend" in table
        assert "auto" in table
        assert "  sleep" in table
        assert "it mostly waits" in table

    def test_cpu_bound_python_goes_to_processes_and_says_why(self) -> None:
        from anypool.backends.base import default_workers

        if default_workers() < 2:
            pytest.skip("auto picks processes only with more than one CPU")
        with anypool.Pool("auto", 2) as pool:
            # ~50 ms a task: 16 ms ones gave the GIL sampler barely its 8 wake-ups on a
            # loaded machine (one per 5 ms switch interval at best), and the choice
            # then honestly said it ran too briefly to tell
            assert len(list(pool.map(tasks.cpu, [1_000_000] * 6))) == 6
        assert pool.stats.choices["cpu"].startswith("process: CPU-bound Python holding the GIL")


class TestPieces:
    def test_quantiles_are_nearest_rank_within_a_bucket(self) -> None:
        h = Histogram()
        for v in (0.1, 0.2, 0.3, 0.4, 0.5):
            h.add(v)
        s = Summary.of(h)
        assert s.count == 5
        assert s.median == pytest.approx(0.3, rel=0.025)
        assert s.p95 == pytest.approx(0.5, rel=0.025)
        assert s.max == 0.5
        assert s.mean == pytest.approx(0.3)

    def test_merging_a_histogram_that_grows_meanwhile_does_not_raise(self) -> None:
        """A snapshot merges each worker's histogram while the worker records into it.
        Before, the copy made a tuple per bucket; a garbage collection started by one
        ran a finalizer (Python code, so another thread could run), a new bucket
        appeared, and pool.stats raised RuntimeError.  Here each collection's
        finalizer records a new bucket itself, and the collector runs at every
        allocation."""
        import gc

        other = Histogram()
        for i in range(5000):  # more buckets than CPython keeps spare 2-tuples: some are new objects
            other.add(1e-10 * 1.03 ** i)
        collected = 0
        merging = True

        class RecordsWhenCollected:
            def __init__(self) -> None:
                self.me = self  # a cycle: only the collector frees it

            def __del__(self) -> None:
                nonlocal collected
                collected += 1
                other.add(1e200 * 1.03 ** collected)  # a bucket not there before
                if merging:
                    RecordsWhenCollected()  # garbage for the next collection

        merged = Histogram()
        threshold = gc.get_threshold()
        gc.collect()
        RecordsWhenCollected()
        gc.set_threshold(1)
        try:
            merged.merge(other)
        finally:
            merging = False
            gc.set_threshold(*threshold)
            gc.collect()
        assert collected >= 2, "collections ran during the merge"
        assert 5000 <= merged.n < other.n

    def test_an_empty_pool_reads_as_zeros(self) -> None:
        with anypool.Pool("thread", 2) as pool:
            s = pool.stats
        assert (s.submitted, s.done, s.running, s.throughput) == (0, 0, 0, 0.0)
        assert s.run_time == Summary()
        assert "0 done, 0 failed, 0 cancelled, 0 running (of 0 submitted)" in str(s)

    def test_the_table_uses_readable_units(self) -> None:
        with anypool.Pool("thread", 1) as pool:
            pool.submit(tasks.sleep, 0.02).result(10)
        table = str(pool.stats)
        assert "run time" in table
        assert " ms" in table.split("run time", 1)[1].splitlines()[0]
        assert "worker busy  1 workers" in table
