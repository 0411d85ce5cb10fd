"""The inline backend: tasks in the caller's thread, except a retry, which the clock's thread runs."""

from __future__ import annotations

import sys
import threading

import pytest

import anypool
import tasks


class _FailsFirst:
    """A callable whose first call raises ValueError and whose second does ``then``."""

    def __init__(self, then: BaseException | None = None) -> None:
        self.calls = 0
        self.then = then

    def __call__(self) -> str:
        self.calls += 1
        if self.calls == 1:
            raise ValueError("first attempt")
        if self.then is not None:
            raise self.then
        return "second attempt"


def _shut_down(pool: anypool.Pool) -> None:
    closer = threading.Thread(target=pool.shutdown, daemon=True)
    closer.start()
    closer.join(10)
    assert not closer.is_alive(), f"shutdown hung: {pool._dispatch.outstanding} unit(s) outstanding"


def test_a_done_callback_raising_system_exit_on_a_retried_task_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    """After a back-off the retry runs on the shared clock's thread, and the callback
    with it: its SystemExit escaped the settlement there (the unit never ended:
    shutdown hung) and ended the clock's thread."""
    pool = anypool.Pool("inline", retries=1, backoff=0.2)
    try:
        fut = pool.submit(_FailsFirst())
        fut.add_done_callback(lambda f: sys.exit("bye"))  # pending: during the back-off
        assert fut.result(10) == "second attempt"
    finally:
        _shut_down(pool)
    s = pool.stats
    assert (s.submitted, s.done, s.retried, s.running) == (1, 1, 1, 0)
    assert "exception calling callback for" in caplog.text


def test_a_keyboard_interrupt_off_the_main_thread_fails_the_task() -> None:
    """Raised from a retry on the clock's thread (where it is no Ctrl-C), it ended that
    thread, and the task was never settled: its result() and shutdown() hung."""
    pool = anypool.Pool("inline", retries=1, backoff=0.05)
    try:
        fut = pool.submit(_FailsFirst(then=KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            fut.result(10)
    finally:
        _shut_down(pool)
    s = pool.stats
    assert (s.submitted, s.failed, s.running) == (1, 1, 0)


def test_ctrl_c_in_a_task_on_the_main_thread_reaches_the_caller() -> None:
    """As without a pool: the submit is interrupted, and the pool un-counts the task."""
    with anypool.Pool("inline") as pool:
        with pytest.raises(KeyboardInterrupt):
            pool.submit(tasks.raise_keyboard_interrupt)
        assert pool.submit(tasks.square, 4).result(10) == 16
    s = pool.stats
    assert (s.submitted, s.done, s.running) == (1, 1, 0)
