"""A pool's end: at interpreter exit, when dropped, when shut down without waiting.

Exit behaviour is tested in fresh interpreters: each script must end on its
own, well inside its hard limit, with nothing on stderr.
"""

from __future__ import annotations

import gc
import os
import subprocess
import threading
import time

import pytest

import anypool
import tasks
from helpers import python

TESTS = os.path.dirname(tasks.__file__)


def _run(code: str, limit: float = 40) -> subprocess.CompletedProcess[str]:
    t = time.monotonic()
    out = subprocess.run(python(code), capture_output=True, text=True, timeout=limit + 10, cwd=TESTS)
    assert time.monotonic() - t < limit, f"exit took {time.monotonic() - t:.1f} s: {out.stderr}"
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start", [
    "pool = anypool.Pool('process', 2)\n    print(pool.submit(tasks.square, 3).result())",
    "it = anypool.imap(tasks.square, range(100), backend='process', workers=2)\n    print(next(it))",
    "pool = anypool.Pool('process', 2, start_method='forkserver')\n"
    "    print(pool.submit(tasks.square, 3).result())",
], ids=["submit", "imap-helper", "forkserver"])
def test_a_process_pool_never_shut_down_does_not_hold_up_exit(start: str) -> None:
    """multiprocessing's exit hook joins every child: the pool's workers are gone before it runs,
    though multiprocessing.util was imported after anypool (its hook then runs first)."""
    code = ("import anypool, tasks\n"
            "if __name__ == '__main__':\n"
            f"    {start}\n")
    out = _run(code, limit=20)
    assert (out.returncode, out.stderr) == (0, ""), out.stderr
    assert out.stdout.strip() in ("9", "0")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["thread", "process", "auto"])
def test_shutdown_without_wait_finishes_the_work_even_past_the_end_of_the_program(backend: str) -> None:
    code = ("import anypool, tasks, sys\n"
            "if __name__ == '__main__':\n"
            f"    pool = anypool.Pool({backend!r}, 2)\n"
            "    futs = [pool.submit(tasks.sleep, 0.2, i) for i in range(6)]\n"
            "    futs[-1].add_done_callback(lambda f: print('last', f.result(), flush=True))\n"
            "    pool.shutdown(wait=False)\n")
    out = _run(code)
    assert (out.returncode, out.stdout, out.stderr) == (0, "last 5\n", "")


@pytest.mark.timeout(60)
def test_a_pool_never_shut_down_is_still_stopped_at_exit() -> None:
    """Design decision 7: running work is not waited for at exit (a worker sleeps 60 s here)."""
    code = ("import anypool, tasks, time\n"
            "if __name__ == '__main__':\n"
            "    pool = anypool.Pool('process', 1)\n"
            "    fut = pool.submit(tasks.sleep, 60)\n"
            "    while not fut.running():\n"
            "        time.sleep(0.01)\n"
            "    print('running', flush=True)\n")
    out = _run(code, limit=20)
    assert (out.returncode, out.stdout, out.stderr) == (0, "running\n", "")


def _pool_threads(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


@pytest.mark.timeout(60)
def test_a_dropped_thread_pool_lets_its_threads_go_after_its_work() -> None:
    before = len(_pool_threads("anypool-thread-"))
    pool = anypool.Pool("thread", 2)
    fut = pool.submit(tasks.sleep, 0.3, "done")
    assert len(_pool_threads("anypool-thread-")) == before + 2
    del pool  # no collection needed: nothing in a pool refers back to it
    assert fut.result(10) == "done"  # the work still finishes, as with ThreadPoolExecutor
    deadline = time.monotonic() + 10
    while len(_pool_threads("anypool-thread-")) > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(_pool_threads("anypool-thread-")) == before


@pytest.mark.timeout(60)
def test_a_dropped_process_pool_stops_its_workers() -> None:
    """The fixtures fail the test if a worker process or the manager thread is left."""
    pool = anypool.Pool("process", 2)
    fut = pool.submit(tasks.sleep, 0.3, "done")
    del pool
    assert fut.result(20) == "done"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("backend", "options"), [
    ("thread", ""), ("process", ""), ("async", ""), ("thread", ", progress='always', record=True"),
], ids=["thread", "process", "async", "thread-progress"])
def test_a_pool_gone_out_of_scope_finishes_its_work_before_exit(backend: str, options: str) -> None:
    """As ThreadPoolExecutor's: the pool is dropped when its last reference goes, no collection
    needed (a pool referring to itself, or its bar's thread holding it, was killed at exit)."""
    fn = "tasks.asleep" if backend == "async" else "tasks.sleep"
    code = ("import anypool, tasks\n"
            "def start():\n"
            f"    pool = anypool.Pool({backend!r}, 2{options})\n"
            f"    futs = [pool.submit({fn}, 0.3, i) for i in range(3)]\n"
            "    futs[-1].add_done_callback(lambda f: print('last', f.result(), flush=True))\n"
            "if __name__ == '__main__':\n"
            "    start()\n"
            "    print('returned', flush=True)\n")
    out = _run(code)
    assert (out.returncode, out.stdout) == (0, "returned\nlast 2\n"), out.stderr


@pytest.mark.timeout(60)
def test_a_dropped_pool_is_kept_while_one_of_its_maps_is_read() -> None:
    it = anypool.Pool("thread", 2).imap(tasks.square, iter(range(500)))
    gc.collect()
    assert sum(it) == sum(x * x for x in range(500))


@pytest.mark.timeout(120)
def test_a_dropped_process_pool_does_not_hold_up_exit() -> None:
    code = ("import multiprocessing.util, gc, anypool, tasks\n"
            "if __name__ == '__main__':\n"
            "    pool = anypool.Pool('process', 2)\n"
            "    print(pool.submit(tasks.square, 3).result())\n"
            "    del pool\n"
            "    gc.collect()\n")
    out = _run(code, limit=20)
    assert (out.returncode, out.stdout, out.stderr) == (0, "9\n", "")


@pytest.mark.timeout(60)
def test_shutdown_inside_an_inline_task_does_not_wait_for_that_task() -> None:
    """The task runs in the caller, inside submit(): waiting would wait for itself."""
    pool = anypool.Pool("inline")
    fut = pool.submit(lambda: (pool.shutdown(), "returned")[1])
    assert fut.result(10) == "returned"
    with pytest.raises(anypool.PoolClosed):
        pool.submit(tasks.square, 1)


@pytest.mark.timeout(60)
def test_shutdown_inside_a_task_on_autos_probe_does_not_wait_for_that_task() -> None:
    """The first task of a callable runs on the probe thread: it deadlocked there."""
    pool = anypool.Pool("auto")
    fut = pool.submit(lambda: (pool.shutdown(), "returned")[1])
    assert fut.result(10) == "returned"
    with pytest.raises(anypool.PoolClosed):
        pool.submit(tasks.square, 1)
    pool.shutdown()


def _fail_when_set(gate: threading.Event) -> None:
    gate.wait(10)
    raise RuntimeError("initializer refuses")


@pytest.mark.timeout(60)
def test_a_broken_pool_raises_from_the_map_not_from_the_shutdown_that_feeds_it() -> None:
    gate = threading.Event()
    with anypool.Pool("thread", 1, initializer=_fail_when_set, initargs=(gate,)) as pool:
        results = pool.map(tasks.square, range(100))
        gate.set()
        with pytest.raises(anypool.InitializerFailed):
            pool.submit(tasks.square, 1).result(10)  # broken from here on
    with pytest.raises(anypool.InitializerFailed):
        list(results)


def test_a_unit_reported_final_twice_is_logged_and_shutdown_still_returns(
        caplog: pytest.LogCaptureFixture) -> None:
    """An anypool bug of this kind (a timed thread task reported by its worker and by
    its deadline check) left the count of unfinished units at -1: shutdown waited,
    silently, for ever.  Now it says so, with the stack that reported it, and returns."""
    pool = anypool.Pool("thread", 1)
    assert pool.submit(tasks.square, 3).result(10) == 9
    pool._dispatch._end()  # the second report of that task's unit, as the bug made
    closer = threading.Thread(target=pool.shutdown, daemon=True)
    closer.start()
    closer.join(10)
    assert not closer.is_alive(), "shutdown hung"
    assert "a unit of work was reported final twice" in caplog.text
