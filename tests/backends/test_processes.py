"""Fault injection on the process backend: real crashes, real kills, real hangs.

Every test here really kills a worker (SIGKILL, ``os._exit``, a segfault), really
hangs one, or really fails to (un)pickle something, then checks that only the
task concerned failed, with a message that says what happened, and that the
pool goes on.  The autouse fixture in conftest.py fails any test that leaves a
process behind.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

import anypool
import tasks
from anypool.serialize import RemoteTraceback
from helpers import python


@pytest.fixture
def pool() -> Any:
    p = anypool.Pool("process", 2)
    yield p
    p.shutdown(wait=False, kill=True)


def _crash_random(x: int, seed: int) -> int:
    """Kill this worker with probability 0.1 (a fresh draw on every attempt)."""
    if random.Random(f"{seed}-{x}-{os.getpid()}-{time.perf_counter_ns()}").random() < 0.1:
        os._exit(9)
    return x


class TestCrashes:
    @pytest.mark.parametrize(
        ("fn", "args", "expected"),
        [
            (tasks.kill_self, (signal.SIGKILL,), r"killed by signal SIGKILL \(9\)"),
            (tasks.exit_hard, (3,), r"exited with code 3"),
            (tasks.segfault, (), r"killed by signal SIGSEGV \(11\)"),
        ],
        ids=["sigkill", "os._exit", "segfault"],
    )
    def test_a_dying_worker_fails_only_its_task(self, pool: anypool.Pool, fn: Any, args: Any,
                                                expected: str) -> None:
        others = [pool.submit(tasks.sleep, 0.2, i) for i in range(6)]
        doomed = pool.submit(fn, *args)
        with pytest.raises(anypool.WorkerCrashed, match=expected) as info:
            doomed.result(30)
        assert info.value.pid is not None
        assert [f.result(30) for f in others] == list(range(6))
        assert pool.submit(tasks.square, 5).result(30) == 25  # the pool goes on
        assert pool.stats.crashed == 1

    def test_an_exit_with_code_zero_is_a_crash_that_says_how(self, pool: anypool.Pool) -> None:
        with pytest.raises(anypool.WorkerCrashed, match=r"exited with code 0 \(os._exit\(\) or a C library"):
            pool.submit(tasks.exit_hard, 0).result(30)

    def test_a_segfault_message_carries_the_workers_last_words(self, pool: anypool.Pool) -> None:
        """faulthandler's traceback of the dying worker is part of the error."""
        with pytest.raises(anypool.WorkerCrashed) as info:
            pool.submit(tasks.segfault).result(30)
        assert "segfault" in str(info.value)  # the frame of the task that crashed
        assert "Fatal Python error" in str(info.value)

    def test_last_words_keep_the_crash_when_the_pool_starts_deep_in_a_stack(self) -> None:
        """A worker forked from deep inside the caller inherits that stack; the dump
        must still lead with the error and the crashing frames, not the outermost ones."""
        def deep(n: int) -> str:
            if n:
                return deep(n - 1)
            # fork by name: with other threads alive (as in a full test run) the
            # default would use the fork server, whose stack is short
            with anypool.Pool("process", 1, start_method="fork") as p, \
                    pytest.raises(anypool.WorkerCrashed) as info:
                p.submit(tasks.segfault).result(30)
            return str(info.value)

        msg = deep(60)
        assert "Fatal Python error: Segmentation fault" in msg
        assert "in segfault" in msg
        assert "outer frames left out" in msg
        assert "in watch" not in msg  # the watchdog thread's stack is noise

    def test_a_worker_killed_from_outside_mid_task(self, pool: anypool.Pool) -> None:
        """Like the OOM killer: SIGKILL from another process while a task runs."""
        victim = pool.submit(tasks.sleep, 30)
        idle_worker = pool.submit(tasks.pid).result(30)
        busy = [p for p in _workers() if p.pid != idle_worker]
        assert busy, "no busy worker found"
        for p in busy:
            p.send_signal(signal.SIGKILL)
        with pytest.raises(anypool.WorkerCrashed, match=r"SIGKILL.*OOM killer"):
            victim.result(30)
        assert pool.submit(tasks.square, 4).result(30) == 16

    def test_a_crash_inside_a_map_batch_fails_only_the_crashing_item(self, pool: anypool.Pool) -> None:
        """Items batched with the crashing one are re-run one by one; only it fails."""
        got = list(pool.imap(tasks.crash_if, range(2000), [777] * 2000, return_exceptions=True))
        crashed = [i for i, r in enumerate(got) if isinstance(r, anypool.WorkerCrashed)]
        assert crashed == [777]
        assert all(got[i] == i for i in range(2000) if i != 777)

    @pytest.mark.timeout(120)
    def test_a_thousand_tasks_with_ten_percent_crashes_are_all_accounted_for(self) -> None:
        seed = random.randrange(1 << 30)
        with anypool.Pool("process", 2, retries=2, backoff=0) as pool:
            futs = [pool.submit(_crash_random, i, seed) for i in range(1000)]
            ok = crashed = 0
            for i, f in enumerate(futs):
                try:
                    assert f.result(60) == i
                    ok += 1
                except anypool.WorkerCrashed:
                    crashed += 1
                    assert len(f.attempts) == 2
                    assert all(a.outcome == "crash" for a in f.attempts)
        assert ok + crashed == 1000
        assert ok >= 980  # 0.1 ** 3 of them may fail all three attempts
        s = pool.stats
        assert s.done == ok
        assert s.failed == crashed
        assert s.crashed >= 50  # about 110 expected

    def test_large_arguments_in_flight_while_a_worker_segfaults(self, pool: anypool.Pool) -> None:
        """No queue shared by workers, so a dying worker cannot wedge the others' big messages."""
        blob = b"y" * (8 << 20)
        futs = [pool.submit(len, blob) for _ in range(10)]
        bad = pool.submit(tasks.segfault)
        futs += [pool.submit(len, blob) for _ in range(10)]
        assert [f.result(60) for f in futs] == [len(blob)] * 20
        with pytest.raises(anypool.WorkerCrashed):
            bad.result(30)

    def test_workers_that_die_during_start_up_break_the_pool_instead_of_spinning(self) -> None:
        pool = anypool.Pool("process", 1, initializer=tasks.exit_hard, initargs=(5,))
        try:
            with pytest.raises(anypool.BrokenPool, match="start-up"):
                pool.submit(tasks.square, 2).result(30)
            with pytest.raises(anypool.BrokenPool):
                pool.submit(tasks.square, 2)
        finally:
            pool.shutdown(wait=False, kill=True)


class TestTimeouts:
    def test_a_hung_task_is_killed_within_half_a_second_of_its_limit(self, pool: anypool.Pool) -> None:
        worker = pool.submit(tasks.pid).result(30)
        assert pool.submit(tasks.pid).result(30)
        fut = pool.with_options(timeout=1.0).submit(tasks.sleep, 3600)
        while not fut.running():
            time.sleep(0.01)
        t0 = time.monotonic()
        with pytest.raises(anypool.TaskTimeout, match="timeout of 1 s"):
            fut.result(30)
        late = time.monotonic() - t0 - 1.0
        assert late < 0.5, f"timed out {late:.2f} s after the limit"
        assert worker not in {p.pid for p in _workers()} or pool.stats.timed_out == 1
        assert pool.stats.timed_out == 1
        assert pool.submit(tasks.square, 3).result(30) == 9  # a replacement took its place

    def test_a_timeout_kills_the_processes_the_task_started(self, pool: anypool.Pool,
                                                             tmp_path: Any) -> None:
        pidfile = tmp_path / "grandchild"
        fut = pool.with_options(timeout=1).submit(_spawn_and_wait, str(pidfile))
        with pytest.raises(anypool.TaskTimeout):
            fut.result(30)
        grandchild = int(pidfile.read_text())
        deadline = time.monotonic() + 5
        while psutil.pid_exists(grandchild) and time.monotonic() < deadline:
            try:
                if psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        alive = psutil.pid_exists(grandchild) and psutil.Process(grandchild).status() != psutil.STATUS_ZOMBIE
        assert not alive, "the task's child survived its timeout"

    def test_a_timeout_also_kills_a_child_that_left_the_workers_group(self, pool: anypool.Pool,
                                                                      tmp_path: Any) -> None:
        """A child in a session of its own escapes the group kill; the process tree does not."""
        pidfile = tmp_path / "escapee"
        fut = pool.with_options(timeout=1).submit(_spawn_and_wait, str(pidfile), True)
        with pytest.raises(anypool.TaskTimeout):
            fut.result(30)
        escapee = int(pidfile.read_text())
        assert _wait_gone([psutil.Process(escapee)] if psutil.pid_exists(escapee) else [], 5) == []

    def test_a_timeout_in_a_batch_fails_that_item_and_runs_the_rest(self, pool: anypool.Pool) -> None:
        view = pool.with_options(timeout=0.5)
        got = list(view.imap(tasks.sleep, [0.0] * 50 + [30] + [0.0] * 50, range(101),
                             return_exceptions=True))
        assert isinstance(got[50], anypool.TaskTimeout)
        assert [g for i, g in enumerate(got) if i != 50] == [i for i in range(101) if i != 50]

    def test_a_task_that_ignores_sigterm_still_times_out(self, pool: anypool.Pool) -> None:
        fut = pool.with_options(timeout=0.5).submit(_ignore_sigterm_and_sleep)
        with pytest.raises(anypool.TaskTimeout):
            fut.result(30)


class TestSerialization:
    def test_an_unpicklable_argument_fails_at_submit_naming_it(self, pool: anypool.Pool) -> None:
        with pytest.raises(anypool.SerializationError, match=r"argument 1 \(Unpicklable"):
            pool.submit(tasks.add, 1, tasks.Unpicklable())
        with pytest.raises(anypool.SerializationError, match=r"keyword argument 'c'"):
            pool.submit(tasks.add, 1, c=tasks.Unpicklable())
        assert pool.submit(tasks.square, 3).result(30) == 9

    def test_an_initializer_argument_that_cannot_travel_is_refused_with_a_clear_error(self) -> None:
        """Refused when the pool is made, before any worker starts."""
        with pytest.raises(anypool.SerializationError,
                           match=r"worker initializer add \(function\) or its initargs cannot be sent "
                                 r"to worker processes: Unpicklable objects cannot be pickled"):
            anypool.Pool("process", 1, initializer=tasks.add, initargs=(1, tasks.Unpicklable()))

    def test_an_unpicklable_callable_fails_at_submit_naming_it(self, pool: anypool.Pool) -> None:
        import threading

        lock = threading.Lock()

        def uses_lock() -> bool:
            return lock.locked()

        with pytest.raises(anypool.SerializationError, match="uses_lock"):
            pool.submit(uses_lock)
        assert pool.submit(tasks.square, 3).result(30) == 9

    def test_lambdas_and_closures_travel_by_value(self, pool: anypool.Pool) -> None:
        k = 10
        assert pool.submit(lambda x: x + k, 5).result(30) == 15
        assert list(pool.map(lambda x: x * k, range(3))) == [0, 10, 20]

    def test_an_unpicklable_map_item_fails_only_its_position(self, pool: anypool.Pool) -> None:
        items: list[Any] = [1, 2, tasks.Unpicklable(), 4]
        got = list(pool.imap(str, items, return_exceptions=True))
        assert got[:2] == ["1", "2"]
        assert got[3] == "4"
        assert isinstance(got[2], anypool.SerializationError)
        assert "map item 2" in str(got[2])

    def test_an_argument_that_raises_when_unpickled_in_the_worker(self, pool: anypool.Pool) -> None:
        with pytest.raises(anypool.SerializationError, match="could not be loaded in the worker"):
            pool.submit(tasks.add, tasks.RaiseAtUnpickle()).result(30)
        assert pool.submit(tasks.square, 3).result(30) == 9

    def test_an_argument_that_kills_the_worker_when_unpickled(self, pool: anypool.Pool) -> None:
        with pytest.raises(anypool.WorkerCrashed, match="exited with code 11"):
            pool.submit(tasks.add, tasks.ExitAtUnpickle()).result(30)
        assert pool.submit(tasks.square, 3).result(30) == 9

    def test_an_unpicklable_result_fails_that_task_only(self, pool: anypool.Pool) -> None:
        futs = [pool.submit(tasks.return_lock if i == 2 else tasks.square, i) for i in range(5)]
        with pytest.raises(anypool.SerializationError, match=r"result .*cannot be sent back"):
            futs[2].result(30)
        assert [f.result(30) for i, f in enumerate(futs) if i != 2] == [0, 1, 9, 16]

    def test_a_result_that_cannot_be_loaded_in_the_pool(self, pool: anypool.Pool) -> None:
        with pytest.raises(anypool.TaskError, match="could not be loaded in the pool"):
            pool.submit(tasks.return_raise_at_unpickle).result(30)
        assert pool.submit(tasks.square, 3).result(30) == 9

    @pytest.mark.parametrize("backend", ["process", "process+async"])
    def test_a_result_that_cannot_be_loaded_fails_its_own_task_alone(self, backend: str) -> None:
        """Regression: the pool blamed the oldest message in flight on that worker (other
        tasks failed, the real one finished twice) and on process+async the real one
        never finished at all."""
        fn = tasks.unloadable_if if backend == "process" else tasks.aunloadable_if
        with anypool.Pool(backend, 1) as pool:
            futs = [pool.submit(fn, i, 2) for i in range(6)]
            done, _ = cf.wait(futs, timeout=30)
            assert len(done) == 6
            assert [type(f.exception()).__name__ if f.exception() else f.result() for f in futs] == \
                [0, 1, "TaskError", 3, 4, 5]
            assert "could not be loaded in the pool" in str(futs[2].exception())
            assert pool.stats.failed == 1
            assert pool.stats.done == 5

    def test_a_callable_with_state_is_sent_as_it_is_at_each_submit(self, pool: anypool.Pool) -> None:
        """Regression: its first pickle was reused, so later changes never reached a worker
        (``ProcessPoolExecutor`` pickles it with every call)."""
        scale = tasks.Scaler(1)
        assert [pool.submit(scale, 3).result(30), pool.submit(scale.times, 3).result(30)] == [3, 3]
        scale.k = 5
        assert [pool.submit(scale, 3).result(30), pool.submit(scale.times, 3).result(30)] == [15, 15]
        assert list(pool.map(scale, [1, 2])) == [5, 10]

    def test_an_unpicklable_exception_becomes_a_task_error_with_its_text(self, pool: anypool.Pool) -> None:
        with pytest.raises(anypool.TaskError) as info:
            pool.submit(tasks.raise_unpicklable).result(30)
        err = info.value
        assert err.type_name.endswith("UnpicklableError")
        assert err.message == "holding a lock"
        assert "raise_unpicklable" in err.traceback

    def test_the_workers_traceback_is_chained_as_the_cause(self, pool: anypool.Pool) -> None:
        with pytest.raises(ValueError, match="bad item 3") as info:
            pool.submit(tasks.fail_on, 3).result(30)
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "fail_on" in cause.text
        assert "raise ValueError" in cause.text

    @pytest.mark.parametrize("fn", [tasks.raise_system_exit, tasks.raise_keyboard_interrupt])
    def test_base_exceptions_in_a_task_stay_in_the_task(self, pool: anypool.Pool, fn: Any) -> None:
        with pytest.raises(BaseException) as info:
            pool.submit(fn).result(30)
        assert isinstance(info.value, (SystemExit, KeyboardInterrupt))
        assert pool.submit(tasks.square, 3).result(30) == 9

    def test_a_result_bigger_than_any_pipe_buffer(self, pool: anypool.Pool) -> None:
        assert len(pool.submit(tasks.big_result, 200 << 20).result(60)) == 200 << 20


class TestRecycling:
    def test_max_tasks_per_worker_recycles_without_losing_tasks(self) -> None:
        with anypool.Pool("process", 2, max_tasks_per_worker=3) as pool:
            futs = [pool.submit(tasks.sleep, 0.01, i) for i in range(40)]  # a backlog queued
            pids = [pool.submit(tasks.pid).result(30) for _ in range(12)]
            assert [f.result(30) for f in futs] == list(range(40))
        assert len(set(pids)) >= 4

    @pytest.mark.parametrize("chunksize", [None, 25])
    def test_max_tasks_per_worker_holds_for_map_items(self, chunksize: int | None) -> None:
        """A map batch is capped at the limit: no worker runs more items than it allows."""
        import collections

        with anypool.Pool("process", 2, max_tasks_per_worker=2) as pool:
            pids = list(pool.map(tasks.pid, range(50), chunksize=chunksize))
        assert max(collections.Counter(pids).values()) <= 2

    @pytest.mark.parametrize("chunksize", [None, 3])
    def test_no_worker_runs_more_tasks_than_max_tasks_per_worker(self, chunksize: int | None) -> None:
        """Regression: a map batch was capped at the limit, not at what its worker had left,
        and a second batch was queued by the count of tasks the worker held, not of those
        it would then hold: with a limit of 5, a worker ran up to 9 (the README: "map items
        each count: a batch is cut to fit")."""
        with anypool.Pool("process", 2, max_tasks_per_worker=5) as pool:
            pids = list(pool.map(tasks.pid, range(120), chunksize=chunksize))
            pids += pool.imap_unordered(tasks.pid, range(120), chunksize=chunksize)
            pids += [f.result(30) for f in [pool.submit(tasks.pid) for _ in range(40)]]
            pids += [pool.submit(tasks.pid).result(30) for _ in range(8)]
        counts = Counter(pids)
        assert len(pids) == 288
        assert max(counts.values()) <= 5, counts.most_common(3)

    @pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
    def test_workers_retiring_faster_than_they_exit_do_not_break_the_pool(self, method: str) -> None:
        """Regression: a replacement took a slot of its own at once, a retired worker gave
        its slot back only once its exit was seen; with workers retiring after every task
        and slow to exit, the slots ran out: "BrokenPool: ... IndexError: pop from empty
        list".  Replacements now wait for a slot; no task is lost or left waiting."""
        slow_exit = 0.6 if method == "spawn" else 0.3  # longer than a worker takes to start
        with anypool.Pool("process", 1, max_tasks_per_worker=1, start_method=method) as pool:
            futs = [pool.submit(tasks.linger, slow_exit, i) for i in range(6)]
            assert [f.result(60) for f in futs] == list(range(6))
            quick = [pool.submit(tasks.pid) for _ in range(8)]
            assert len({f.result(60) for f in quick}) == 8  # one task per worker, as asked
            assert list(pool.map(tasks.square, range(6))) == [x * x for x in range(6)]

    def test_a_retired_worker_that_never_exits_is_killed_when_its_slot_is_wanted(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A task left a thread that keeps its worker from exiting: once every slot is
        held so, the oldest is killed after STOP_GRACE, and the pending tasks run."""
        from anypool.backends.processes import manager

        monkeypatch.setattr(manager, "STOP_GRACE", 0.5)
        with anypool.Pool("process", 1, max_tasks_per_worker=1) as pool:
            futs = [pool.submit(tasks.linger, 3600, i) for i in range(5)]
            assert [f.result(30) for f in futs] == list(range(5))
            assert pool.stats.crashed == 0

    def test_max_memory_per_worker_runs_nothing_more_on_a_worker_past_it(self) -> None:
        """Regression: RSS was checked between batches only, so a worker ran the rest of its
        batch, and of the one queued behind it, far past the limit (57-64 leaks of 3 MB
        under a 120 MB limit, ~35 expected).  Now it reads its RSS after each item: once
        past the limit it runs no more, and what it held runs on another worker."""
        limit = 150 << 20
        with anypool.Pool("process", 2, max_memory_per_worker=limit) as pool:
            runs = list(pool.map(tasks.leak_rss, [3] * 300))  # one batch: no per-item reports
            runs += pool.with_options(timeout=30).map(tasks.leak_rss, [3] * 100)  # per-item reports
            runs += [f.result(30) for f in [pool.submit(tasks.leak_rss, 3) for _ in range(150)]]
            assert list(pool.map(tasks.square, range(50))) == [x * x for x in range(50)]
        assert len(runs) == 550
        # the item that takes a worker past the limit is its last
        past = Counter(pid for pid, rss in runs if rss > limit)
        assert max(past.values()) == 1, past.most_common(3)
        assert len(Counter(pid for pid, _ in runs)) >= 550 * 3 // 150

    def test_max_memory_per_worker_recycles_a_leaking_worker(self) -> None:
        ceiling = 120 << 20
        with anypool.Pool("process", 1, max_memory_per_worker=ceiling) as pool:
            pids = [pool.submit(tasks.leak, 40).result(30) for _ in range(12)]
        # each worker holds at most ceiling + one task's leak before it is replaced
        assert len(set(pids)) >= 3, pids
        runs = [len(list(g)) for _, g in __import__("itertools").groupby(pids)]
        assert max(runs) <= 4, runs

    def test_max_memory_per_worker_recycles_a_worker_leaking_in_fast_tasks(self) -> None:
        """Regression: a worker was sent its next batch before the last one's RSS came back,
        so with fast tasks it was never idle between them and never replaced (21 tasks of
        20 MiB on one worker)."""
        with anypool.Pool("process", 2, max_memory_per_worker=120 << 20) as pool:
            by_map = Counter(pool.map(tasks.leak, [20] * 40))
            by_submit = Counter(f.result(30) for f in [pool.submit(tasks.leak, 20) for _ in range(40)])
        # ~5 leaks reach the ceiling; a batch or a coalesced message sent before may add a few
        assert max(by_map.values()) <= 12, by_map
        assert max(by_submit.values()) <= 12, by_submit


class TestStartMethods:
    @pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
    def test_each_start_method_runs_tasks_and_survives_a_crash(self, method: str) -> None:
        with anypool.Pool("process", 2, start_method=method) as pool:
            assert list(pool.map(tasks.square, range(10))) == [x * x for x in range(10)]
            with pytest.raises(anypool.WorkerCrashed):
                pool.submit(tasks.exit_hard, 4).result(30)
            assert pool.submit(tasks.square, 9).result(30) == 81

    def test_an_unknown_start_method_is_refused(self) -> None:
        with pytest.raises(ValueError, match="start_method must be one of"):
            anypool.Pool("process", 1, start_method="teleport").submit(tasks.square, 1)


class TestMainGuard:
    """A script that makes its pool outside ``if __name__ == "__main__":``, run for real."""

    SCRIPT = (
        "import anypool\n"
        "def burn(n):\n"
        "    return sum(i * i for i in range(n))\n"
        "with anypool.Pool({backend!r}, 2{options}) as pool:\n"
        "    print(sum(pool.map(burn, [2_000_000] * 8)))\n"
    )

    @pytest.mark.timeout(60)
    @pytest.mark.parametrize(("backend", "options"), [
        ("process", ", start_method='forkserver'"),
        ("process", ", start_method='spawn'"),
        ("auto", ""),  # burn holds the GIL: processes, from the fork server (the probe is a thread)
    ])
    def test_the_pool_breaks_at_once_saying_where_the_guard_is_missing(
            self, tmp_path: Any, backend: str, options: str) -> None:
        script = tmp_path / "no_guard.py"
        script.write_text(self.SCRIPT.format(backend=backend, options=options))
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=50)
        took = time.monotonic() - t0
        assert out.returncode == 1, out.stderr
        (raised,) = [line for line in out.stderr.splitlines() if line.startswith("anypool.BrokenPool:")]
        assert raised.startswith(f"anypool.BrokenPool: worker processes import the main module ({script})")
        assert 'the code that creates the pool must be under `if __name__ == "__main__":`' in raised
        # each worker says which line, once, and the one traceback is the caller's
        assert "stops: this process is a worker process importing the main module" in out.stderr
        if backend == "process":  # auto starts its process pool from the probe's thread: no line
            assert f"as it is imported (at {script}, line 5)" in out.stderr  # the map that starts workers
        assert out.stderr.count("Traceback") == 1, out.stderr
        assert out.stdout == ""  # the work did not run again in the workers
        assert took < 30, f"{took:.1f} s: the pool retried workers that could not start"

    @pytest.mark.timeout(60)
    def test_another_multiprocessing_child_running_such_a_script_gets_the_error(self, tmp_path: Any) -> None:
        script = tmp_path / "no_guard_child.py"
        script.write_text(
            "import multiprocessing, anypool\n"
            "pool = anypool.Pool('process', 1)\n"
            "print('square', pool.submit(abs, -3).result())\n"
            "def child():\n"
            "    pass\n"
            "if __name__ == '__main__':\n"
            "    p = multiprocessing.get_context('spawn').Process(target=child)\n"
            "    p.start(); p.join()\n"
            "    print('child exit', p.exitcode)\n"
            "    pool.shutdown()\n")
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=50)
        assert out.returncode == 0, out.stderr
        assert out.stdout == "square 3\nchild exit 1\n"
        said = ("anypool.MainNotGuarded: this process is a worker process importing the main module, and "
                f"the main module starts a process pool as it is imported (at {script}, line 3)")
        assert said in out.stderr

    @pytest.mark.timeout(60)
    @pytest.mark.parametrize("method", ["forkserver", "spawn"])
    def test_a_pool_made_at_import_but_used_under_the_guard_works(self, tmp_path: Any, method: str) -> None:
        """Workers import the module and make the pool object, but start nothing: no error."""
        script = tmp_path / "guarded_use.py"
        script.write_text(
            "import anypool\n"
            f"pool = anypool.Pool('process', 2, start_method={method!r})\n"
            "def square(x):\n"
            "    return x * x\n"
            "if __name__ == '__main__':\n"
            "    with pool:\n"
            "        print(sum(pool.map(square, range(100))))\n")
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=50)
        assert (out.returncode, out.stdout, out.stderr) == (0, "328350\n", "")

    @pytest.mark.timeout(60)
    def test_auto_fails_the_tasks_it_held_when_the_backend_it_chose_cannot_start(self) -> None:
        # multiprocessing's own mark of a child importing its main module, set after the
        # auto pool exists: the process pool auto then chooses refuses to start
        code = (
            "import multiprocessing, anypool, tasks\n"
            "with anypool.Pool('auto', 2) as pool:\n"
            "    multiprocessing.current_process()._inheriting = True\n"
            "    try:\n"
            "        list(pool.map(tasks.cpu, [3_000_000] * 8))\n"
            "    except anypool.MainNotGuarded as exc:\n"
            "        print('raised:', exc)\n")
        out = subprocess.run(python(code), capture_output=True, text=True, timeout=50,
                             cwd=os.path.dirname(tasks.__file__))
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("raised: this process is a worker process importing the main module")


class TestShutdown:
    def test_kill_stops_running_tasks_at_once(self) -> None:
        pool = anypool.Pool("process", 2)
        futs = [pool.submit(tasks.sleep, 60) for _ in range(2)]
        while not all(f.running() for f in futs):
            time.sleep(0.01)
        time.sleep(0.2)
        t = time.monotonic()
        pool.shutdown(kill=True)
        assert time.monotonic() - t < 2
        for f in futs:
            with pytest.raises(anypool.PoolClosed):
                f.result(5)


# -- signals to a whole program running a pool -------------------------------------

SCRIPT = """
import os, sys, time
sys.path.insert(0, {tests!r})
import anypool, tasks
pool = anypool.Pool("process", 2)
with pool:
    futs = [pool.submit(tasks.sleep, 60) for _ in range(2)]
    while not all(f.running() for f in futs):
        time.sleep(0.01)
    time.sleep(0.3)
    print("ready", flush=True)
    for f in futs:
        f.result()
"""


def _start_script() -> tuple[subprocess.Popen[str], list[psutil.Process]]:
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT.format(tests=tests_dir)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    tree = psutil.Process(proc.pid).children(recursive=True)
    helpers = ("forkserver", "resource_tracker")
    workers = [p for p in tree if not any(h in " ".join(p.cmdline()) for h in helpers)]
    assert len(workers) == 2, [" ".join(p.cmdline()) for p in tree]
    return proc, tree


def _wait_gone(procs: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    deadline = time.monotonic() + seconds
    alive = procs
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.05)
    return alive


@pytest.mark.parametrize(("sig", "code"),
                         [(signal.SIGINT, -signal.SIGINT), (signal.SIGTERM, -signal.SIGTERM)])
def test_a_signal_stops_the_program_and_every_worker_promptly(sig: int, code: int) -> None:
    proc, tree = _start_script()
    try:
        t = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=5) == code
        assert time.monotonic() - t < 2.0
        assert _wait_gone(tree, 5) == []
    finally:
        _kill_session(proc)


LEAVING_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
import anypool, tasks
with anypool.Pool("process", 2) as pool:
    futs = [pool.submit(tasks.sleep, 60) for _ in range(2)]
    while not all(f.running() for f in futs):
        time.sleep(0.01)
    time.sleep(0.3)
    print("ready", flush=True)
"""


@pytest.mark.parametrize("presses", [2, 3])
def test_ctrl_c_pressed_again_while_the_with_block_kills_its_workers(presses: int) -> None:
    """Ctrl-C two or three times, ms apart, as the ``with`` waits for running tasks.

    The second used to land inside the kill (while it imported psutil) and
    stop it before any worker was killed: the program exited 1 with a chain
    of tracebacks, and with a third press the exit hook's own kill was cut
    short too, and multiprocessing's hook then waited for the workers for ever.
    """
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for _ in range(4):  # each press lands somewhere else in the kill
        proc = subprocess.Popen([sys.executable, "-c", LEAVING_SCRIPT.format(tests=tests_dir)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        tree: list[psutil.Process] = []
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            tree = psutil.Process(proc.pid).children(recursive=True)
            for i in range(presses):  # a terminal's Ctrl-C: to the whole foreground group
                if i:
                    time.sleep(0.002)
                os.killpg(proc.pid, signal.SIGINT)
            _, err = proc.communicate(timeout=10)
            assert proc.returncode == -signal.SIGINT, err
            # Not which tracebacks it printed: a later press may land just as the
            # kill gives SIGINT back (and chain a second traceback to the first),
            # or in Python's own exit.  What matters is above and below: it died
            # by the signal, at once, and left nothing running.
            left = _wait_gone(tree, 5)
            assert left == [], [p.pid for p in left]
        finally:
            _kill_session(proc)
            for p in tree:
                try:
                    p.kill()
                except psutil.Error:
                    pass


def test_workers_exit_by_themselves_when_their_program_is_sigkilled() -> None:
    proc, tree = _start_script()
    try:
        proc.kill()
        proc.wait(timeout=5)
        left = _wait_gone(tree, 5)
        assert left == [], [p.pid for p in left]
    finally:
        _kill_session(proc)


# -- helpers -------------------------------------------------------------------------


def _spawn_and_wait(pidfile: str, own_session: bool = False) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"],
                             start_new_session=own_session)
    with open(pidfile, "w") as f:
        f.write(str(child.pid))
    child.wait()


def _ignore_sigterm_and_sleep() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(3600)


def _workers() -> list[psutil.Process]:
    """This test process's pool workers: forked from it directly (a pool's first
    workers, while it has one thread) or by its fork server."""
    out = []
    for p in psutil.Process().children():
        try:
            cmd = " ".join(p.cmdline())
            if "forkserver" in cmd:
                out.extend(p.children())
            elif "resource_tracker" not in cmd:
                out.append(p)
        except psutil.Error:
            pass
    return out


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_session(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def test_a_forked_worker_can_run_a_process_pool_of_its_own_beside_the_parents_fork_server() -> None:
    """A worker forked directly inherits the parent's fork-server state; its own pool must not use it.

    Before the fix the nested pool's manager thread died in the fork server's
    ensure_running (os.waitpid on a process that is not the worker's child:
    ChildProcessError), and the task failed with a BrokenPool saying only
    "the process pool's manager thread failed (see the log)".
    """
    with anypool.Pool("process", 1, start_method="forkserver") as p:
        assert p.submit(tasks.square, 3).result(30) == 9  # this process now runs a fork server
    # fork by name: with other threads alive (as in a full test run) the default would use the fork server
    with anypool.Pool("process", 2, start_method="fork") as pool:
        assert pool.submit(tasks.nested_pool_sum, 10).result(60) == sum(i * i for i in range(10))


def test_a_broken_manager_thread_says_what_failed() -> None:
    """The BrokenPool names the error that ended the manager thread, not only "see the log".

    A child the script forked itself (not an anypool worker, so nothing
    resets it) inherits the handle of its parent's fork server, and
    multiprocessing then fails to start a fork server of its own there.
    """
    code = (
        "import os, sys; sys.path.insert(0, 'tests'); import anypool, tasks\n"
        "if __name__ == '__main__':\n"
        "    with anypool.Pool('process', 1, start_method='forkserver') as p:\n"
        "        p.submit(tasks.square, 1).result(30)\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        try:\n"
        "            with anypool.Pool('process', 1, start_method='forkserver') as p:\n"
        "                print(p.submit(tasks.square, 2).result(30), flush=True)\n"
        "        except anypool.BrokenPool as e:\n"
        "            print(e, flush=True)\n"
        "        os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"
    )
    out = subprocess.run(python(code), capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("the process pool's manager thread failed, starting a worker process: "
                                 "ChildProcessError: "), (out.stdout, out.stderr)


@pytest.mark.timeout(60)
def test_a_second_shutdown_writes_nothing_into_a_file_that_took_the_wake_pipes_number(tmp_path: Path) -> None:
    """After the manager closed its wake-up pipe, its descriptor numbers go to the next files opened."""
    pool = anypool.Pool("process", 1)
    assert pool.submit(tasks.square, 3).result(30) == 9
    pool.shutdown()
    files = [open(tmp_path / f"f{i}", "wb") for i in range(8)]  # noqa: SIM115 - the numbers, held
    try:
        pool.shutdown(kill=True)  # it woke the ended manager through the old number
        pool.shutdown(wait=False)
    finally:
        for f in files:
            f.close()
    assert [(tmp_path / f"f{i}").read_bytes() for i in range(8)] == [b""] * 8
