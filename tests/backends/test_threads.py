"""The thread backend: what it can and cannot do about a stuck thread."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import anypool
import tasks
from helpers import python


def test_a_timed_out_thread_is_abandoned_and_its_capacity_replaced() -> None:
    """The future fails on time; a new thread takes the stuck one's place."""
    with anypool.Pool("thread", 2) as pool:
        stuck = pool.with_options(timeout=0.3).submit(tasks.sleep, 3)
        with pytest.raises(anypool.TaskTimeout):
            stuck.result(10)
        t = time.monotonic()
        both = [pool.submit(tasks.sleep, 0.5, i) for i in range(2)]
        assert [f.result(10) for f in both] == [0, 1]
        assert time.monotonic() - t < 0.9, "the two tasks did not run side by side"
        assert pool.stats.timed_out == 1


def test_a_timeout_inside_a_thread_batch_fails_that_item_only() -> None:
    with anypool.Pool("thread", 2) as pool:
        got = list(pool.with_options(timeout=0.3).imap(
            tasks.sleep, [0.0] * 30 + [2.0] + [0.0] * 30, range(61), return_exceptions=True))
    assert isinstance(got[30], anypool.TaskTimeout)
    assert [g for i, g in enumerate(got) if i != 30] == [i for i in range(61) if i != 30]


def test_an_abandoned_thread_does_not_hold_up_interpreter_exit() -> None:
    code = (
        "import sys, time; sys.path.insert(0, 'tests'); import anypool, tasks\n"
        "pool = anypool.Pool('thread', 1)\n"
        "f = pool.with_options(timeout=0.2).submit(tasks.sleep, 60)\n"
        "try:\n    f.result()\nexcept anypool.TaskTimeout:\n    print('timed out', flush=True)\n"
    )
    t = time.monotonic()
    out = subprocess.run(python(code), capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "timed out", out.stderr
    assert time.monotonic() - t < 10


def test_shutdown_inside_a_task_closes_the_pool_without_waiting_for_that_task() -> None:
    """ThreadPoolExecutor raises "cannot join current thread"; waiting would wait for itself."""
    pool = anypool.Pool("thread", 2)
    go = threading.Event()

    def stop_then_return(x: int) -> int:
        go.wait(10)
        pool.shutdown()
        return x

    fut = pool.submit(stop_then_return, 7)
    queued = [pool.submit(tasks.sleep, 0.05, i) for i in range(4)]
    go.set()
    assert fut.result(10) == 7
    assert [f.result(10) for f in queued] == [0, 1, 2, 3]  # queued before it: still run
    with pytest.raises(anypool.PoolClosed):
        pool.submit(tasks.square, 1)
    pool.shutdown()


def test_each_thread_has_its_own_worker_state() -> None:
    barrier = threading.Barrier(2)

    def who(_: int) -> int:
        barrier.wait(5)  # both threads are busy at once: two different workers
        state = anypool.worker_state()
        state.setdefault("me", threading.get_ident())
        return int(state["me"])

    with anypool.Pool("thread", 2) as pool:
        got = list(pool.map(who, range(2), chunksize=1))
    assert len(set(got)) == 2


def test_kill_cannot_stop_a_thread_but_returns_at_once() -> None:
    pool = anypool.Pool("thread", 1)
    running = pool.submit(tasks.sleep, 0.5, "finished anyway")
    queued = pool.submit(tasks.sleep, 0, "never")
    time.sleep(0.1)
    t = time.monotonic()
    pool.shutdown(kill=True)
    assert time.monotonic() - t < 0.2
    assert queued.cancelled()
    assert running.result(5) == "finished anyway"


def test_stdlib_executor_code_runs_unchanged() -> None:
    """Code written for ThreadPoolExecutor: max_workers=, submit, map, wait, as_completed."""
    import concurrent.futures as cf

    with anypool.Pool("thread", max_workers=3) as ex:
        futs = [ex.submit(pow, 2, i) for i in range(5)]
        done, _ = cf.wait(futs, timeout=10)
        assert len(done) == 5
        assert sorted(f.result() for f in cf.as_completed(futs)) == [1, 2, 4, 8, 16]
        assert list(ex.map(pow, [2, 3], [3, 2])) == [8, 9]
        assert ex.submit(tasks.add, 1, b=2).result() == 3
    with pytest.raises(RuntimeError):
        ex.submit(pow, 2, 2)


def test_finished_tasks_free_their_arguments() -> None:
    """The pool keeps no reference to a finished task's arguments (CPython's test_free_reference)."""
    import gc
    import weakref

    class Arg:
        pass

    with anypool.Pool("thread", 1) as pool:
        arg = Arg()
        ref = weakref.ref(arg)
        assert pool.submit(id, arg).result(5) == id(arg)
        del arg
        for _ in range(20):
            gc.collect()
            if ref() is None:
                break
            time.sleep(0.05)
        assert ref() is None


def test_a_map_retry_that_finishes_first_is_neither_lost_nor_counted_twice(tmp_path: Path) -> None:
    """A batch's retried item may finish on another thread before the batch delivers the rest.

    Before the fix, the job log's row write (done first) left room for that:
    the unit ended twice, so shutdown waited forever for a count of -1 (seen
    in CI), and the batch's placeholder could overwrite the retry's result.
    """
    for run in range(20):
        pool = anypool.Pool("thread", 2, retries=1, backoff=0, joblog=tmp_path / f"jobs-{run}.db")
        try:
            out = list(pool.imap(tasks.fail_on, range(20), return_exceptions=True))
        finally:
            closer = threading.Thread(target=pool.shutdown, daemon=True)
            closer.start()
            closer.join(10)
        assert not closer.is_alive(), f"run {run}: shutdown hung, {pool._dispatch.outstanding} outstanding"
        assert [o if isinstance(o, int) else type(o).__name__ for o in out] == \
            [0, 1, 2, "ValueError", *range(4, 20)]
        assert pool.stats.retried == 1


def test_kill_during_a_timed_batch_settles_the_items_behind_the_timed_out_one() -> None:
    """The item that times out after shutdown(kill=True) hands the rest of its batch back.

    Before the fix that hand-back raised PoolClosed inside the clock's
    callback: items 2-4 were never settled and the map waited for ever.
    """
    pool = anypool.Pool("thread", workers=1)
    it = pool.with_options(timeout=0.2).imap(tasks.sleep, [0.5] * 4, range(4), chunksize=4,
                                              return_exceptions=True)
    time.sleep(0.05)
    pool.shutdown(kill=True)
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.extend(it), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), f"the map hung with {pool._dispatch.outstanding} unit(s) outstanding"
    assert isinstance(got[0], anypool.TaskTimeout)
    assert [type(g).__name__ for g in got[1:]] == ["PoolClosed"] * 3
    assert pool._dispatch.outstanding == 0


def test_a_submit_that_races_shutdown_still_runs() -> None:
    """A shutdown landing between submit's check and its put queued the task behind
    the stop markers: no thread took it and its future never ended.  The race is a
    few microseconds wide, so the test makes it happen: the backend's queue runs the
    shutdown just before it takes the task."""
    pool = anypool.Pool("thread", 2)
    backend: Any = pool._backend
    raced: list[int] = []

    class RacingQueue(type(backend._queue)):  # type: ignore[misc]
        def put(self, item: Any, *args: Any, **kwargs: Any) -> None:
            if item is not None and not raced:
                raced.append(1)
                backend.shutdown(wait=False)  # stopping set, markers queued: then this task
            super().put(item, *args, **kwargs)

    backend._queue = RacingQueue()  # before the first submit starts the threads on it
    fut = pool.submit(tasks.square, 7)
    assert raced
    assert fut.result(10) == 49
    pool.shutdown()


# -- tasks that end right at their deadline ------------------------------------
#
# The worker stored an item's result, then let go of the backend lock before it
# moved on to the next item (or marked the task over); a deadline check landing
# in that gap failed the finished item on time, and the worker reported it too.
# Sixteen threads ending tasks at their deadlines together make the gap's few
# microseconds come up again and again: ten or more double reports per run on
# the old code, every run.

def _settled_and_shut_down(pool: anypool.Pool) -> None:
    """Assert that every unit ended exactly once and that shutdown returns."""
    outstanding = pool._dispatch.outstanding
    closer = threading.Thread(target=pool.shutdown, daemon=True)
    closer.start()
    closer.join(10)
    assert outstanding == 0, f"{outstanding} unit(s) outstanding (below 0: ended twice)"
    assert not closer.is_alive(), "shutdown hung"
    s = pool.stats
    assert (s.done + s.failed, s.running) == (s.submitted, 0), (s.done, s.failed, s.submitted, s.running)


def _sleep_then_raise(seconds: float, x: int) -> None:
    time.sleep(seconds)
    raise ValueError(x)


def test_a_task_ending_at_its_deadline_is_reported_once() -> None:
    """Before, ``done`` and ``timed_out`` both counted it and shutdown waited for ever."""
    pool = anypool.Pool("thread", 16, timeout=0.02)
    try:
        futs = [pool.submit(tasks.sleep, 0.02, i) for i in range(400)]
        for i, f in enumerate(futs):
            exc = f.exception(10)
            assert (exc is None and f.result() == i) or isinstance(exc, anypool.TaskTimeout), (i, exc)
        time.sleep(0.05)  # a second report would come from the clock, in the background
    finally:
        _settled_and_shut_down(pool)
    ok = sum(f.exception() is None for f in futs)
    s = pool.stats
    assert (s.done, s.failed, s.timed_out) == (ok, 400 - ok, 400 - ok)


@pytest.mark.parametrize("raises", [False, True], ids=["returns", "raises"])
def test_batch_items_ending_at_their_deadline_are_reported_once(raises: bool) -> None:
    """Before, a check landing in the gap took the finished item for the running one: a
    batch of values failed in the clock thread (AttributeError) and was never settled,
    the map hanging; a batch of failures got one result too many, shifted by one."""
    pool = anypool.Pool("thread", 16, timeout=0.02)
    fn = _sleep_then_raise if raises else tasks.sleep
    got: list[object] = []
    try:
        reader = threading.Thread(daemon=True, target=lambda: got.extend(pool.imap(
            fn, [0.02] * 400, range(400), chunksize=4, return_exceptions=True)))
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), f"the map hung after {len(got)} results"
        time.sleep(0.05)
    finally:
        _settled_and_shut_down(pool)
    assert len(got) == 400
    for i, g in enumerate(got):
        if not isinstance(g, anypool.TaskTimeout):
            assert (g.args[0] if isinstance(g, ValueError) else g) == i, (i, g)
            assert isinstance(g, ValueError) == raises, (i, g)
    s = pool.stats
    timeouts = sum(isinstance(g, anypool.TaskTimeout) for g in got)
    assert (s.timed_out, s.failed) == (timeouts, 400 if raises else timeouts)


def test_a_timed_out_tasks_callback_raising_system_exit_leaves_its_settlement_whole(
        caplog: pytest.LogCaptureFixture) -> None:
    """The deadline check settles a timed-out task on the shared clock's thread: a
    callback's SystemExit escaped there, the unit never ended (shutdown hung) and the
    clock thread ended, every pool's later deadlines and back-offs with it."""
    pool = anypool.Pool("thread", 1, timeout=0.2)
    try:
        stuck = pool.submit(tasks.sleep, 2)
        stuck.add_done_callback(lambda f: sys.exit("bye"))
        with pytest.raises(anypool.TaskTimeout):
            stuck.result(10)
        with pytest.raises(anypool.TaskTimeout):
            pool.submit(tasks.sleep, 2).result(10)  # the next deadline still fires
    finally:
        _settled_and_shut_down(pool)
    assert "exception calling callback for" in caplog.text


def test_a_worker_thread_outlives_a_failure_to_settle_its_task(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Whatever escapes the settlement (an anypool bug: a task's, its callbacks' and
    its observers' exceptions are caught before) is logged, and the thread goes on
    taking tasks; before, it ended, and the pool ran one thread short without a word."""
    pool = anypool.Pool("thread", 1)
    settle = pool._dispatch.finish_one
    faults: list[int] = []

    def settle_then_fail(*args: Any) -> None:
        settle(*args)
        if not faults:
            faults.append(1)
            raise RuntimeError("a bug after the settlement")

    monkeypatch.setattr(pool._dispatch, "finish_one", settle_then_fail)
    try:
        assert pool.submit(tasks.square, 3).result(10) == 9
        assert pool.submit(tasks.square, 4).result(10) == 16, "the only thread is gone"
    finally:
        _settled_and_shut_down(pool)
    assert faults
    assert "failed to settle task #1 square" in caplog.text
