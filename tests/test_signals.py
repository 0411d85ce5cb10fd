"""Ctrl-C reaches a main thread blocked on the pool, whichever thread the kernel gave the signal to.

The kernel may deliver a process-directed SIGINT to any thread; Python runs
the handler only in the main thread, between bytecodes.  These tests aim the
signal at another thread on purpose (``pthread_kill``), the case that used
to leave the main thread asleep until the task ended.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import anypool
import tasks

pytestmark = pytest.mark.timeout(60)

TASK_SECONDS = 20.0  # far longer than a prompt interrupt may take


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    ev = threading.Event()
    yield ev
    ev.set()


def _sigint_from_another_thread(after: float) -> threading.Thread:
    """A thread that sends SIGINT to itself: its C handler runs there, not in the main thread."""
    def run() -> None:
        time.sleep(after)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _wait_result(pool: anypool.Pool, gate: threading.Event) -> Any:
    return pool.submit(gate.wait, TASK_SECONDS).result()


def _iterate_map(pool: anypool.Pool, gate: threading.Event) -> Any:
    return list(pool.map(gate.wait, [TASK_SECONDS]))


def _wait_shutdown(pool: anypool.Pool, gate: threading.Event) -> Any:
    pool.submit(gate.wait, TASK_SECONDS)
    pool.shutdown(wait=True)


def _iterate_as_completed(pool: anypool.Pool, gate: threading.Event) -> Any:
    return list(anypool.as_completed([pool.submit(gate.wait, TASK_SECONDS)]))


@pytest.mark.parametrize("wait", [_wait_result, _iterate_map, _wait_shutdown, _iterate_as_completed],
                         ids=["result", "map", "shutdown", "as_completed"])
def test_ctrl_c_on_another_thread_interrupts_a_blocked_main_thread(
        gate: threading.Event, wait: Callable[[anypool.Pool, threading.Event], Any]) -> None:
    assert threading.current_thread() is threading.main_thread()
    pool = anypool.Pool("thread", 2)
    try:
        sender = _sigint_from_another_thread(0.3)
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            wait(pool, gate)
        took = time.monotonic() - t0
        sender.join()
        assert took < 5, f"KeyboardInterrupt came {took:.1f} s late"
        assert not gate.is_set()  # it did not come from the task ending
    finally:
        gate.set()
        pool.shutdown(wait=True)


def test_ctrl_c_while_a_process_task_runs() -> None:
    # the autouse fixture then checks that the killed pool left no worker behind
    pool = anypool.Pool("process", 1)
    try:
        pool.submit(tasks.pid).result(30)
        sender = _sigint_from_another_thread(0.3)
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            pool.submit(tasks.sleep, TASK_SECONDS).result()
        assert time.monotonic() - t0 < 5
        sender.join()
    finally:
        pool.shutdown(wait=False, kill=True)


def test_ctrl_c_while_an_async_pools_initializer_runs_is_the_callers_not_a_failed_initializer(
        gate: threading.Event) -> None:
    """The first submit waits for the initializer; Ctrl-C there was reported as InitializerFailed."""
    pool = anypool.Pool("async", 2, initializer=gate.wait, initargs=(TASK_SECONDS,))
    try:
        sender = _sigint_from_another_thread(0.3)
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            pool.submit(tasks.asquare, 2)
        sender.join()
        assert time.monotonic() - t0 < 5
        fut = pool.submit(tasks.asquare, 3)  # waits for the initializer, which goes on
        assert not fut.done()
        gate.set()
        assert fut.result(10) == 9
    finally:
        gate.set()
        pool.shutdown(wait=True)
