"""Observers of a pool's events: whatever they do, the pool's own bookkeeping goes on."""

from __future__ import annotations

import pytest

import anypool
import tasks
from anypool.events import TaskEvent


class _Raises:
    """An observer that raises ``exc`` at the first finished event it sees."""

    finished_only = True

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.calls = 0

    def __call__(self, event: TaskEvent) -> None:
        self.calls += 1
        raise self.exc


@pytest.mark.parametrize("backend", ["thread", "inline", "async"])
@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt(), ValueError("observer bug")])
def test_an_observer_raising_anything_is_removed_and_the_pool_goes_on(
        backend: str, exc: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    """Before, SystemExit or KeyboardInterrupt escaped the settlement: the unit never
    ended (``with`` hung in shutdown) and the thread reporting tasks died."""
    if backend == "inline" and isinstance(exc, KeyboardInterrupt):
        pytest.skip("on the main thread it is Ctrl-C's: see the next test")
    obs = _Raises(exc)
    fn = tasks.asquare if backend == "async" else tasks.square
    pool = anypool.Pool(backend, 1, observers=[obs])
    try:
        assert pool.submit(fn, 3).result(10) == 9
        assert pool.submit(fn, 4).result(10) == 16, "the worker still takes tasks"
        assert list(pool.map(fn, range(3), timeout=10)) == [0, 1, 4]
    finally:
        pool.shutdown(wait=False)
    assert pool._dispatch.wait_idle(10), "every unit ended"
    assert obs.calls == 1, "removed after it raised"
    s = pool.stats
    assert (s.submitted, s.done, s.failed, s.running) == (5, 5, 0, 0)
    assert "failed and was removed" in caplog.text


def test_ctrl_c_in_an_observer_on_the_main_thread_reaches_the_caller() -> None:
    """Swallowed, a Ctrl-C landing while an observer ran on the main thread would be
    lost; it interrupts the submit, and the pool's counts stay whole."""
    seen: list[str] = []

    def once(event: TaskEvent) -> None:
        seen.append(event.kind)
        if len(seen) == 1:
            raise KeyboardInterrupt

    with anypool.Pool("inline", observers=[once]) as pool:
        with pytest.raises(KeyboardInterrupt):
            pool.submit(tasks.square, 3)
        assert pool.submit(tasks.square, 4).result(10) == 16
    assert seen[1:] == ["queued", "started", "finished"], "the observer was kept"
    s = pool.stats
    assert (s.submitted, s.done, s.running) == (1, 1, 0)


def test_a_command_given_as_an_argv_is_named_by_the_command() -> None:
    """Before, events, the timeline and the report named it by its type: "list"."""
    events: list[TaskEvent] = []
    long_argv = ["echo", *(f"word{i}" for i in range(100))]
    with anypool.Pool("subprocess", 1, observers=[events.append], record=True) as pool:
        pool.submit(["echo", "hi there"]).result(30)
        pool.submit(long_argv).result(30)
    names = [e.fn for e in events if e.kind == "finished"]
    assert names[0] == "echo 'hi there'"
    assert names[1].startswith("echo word0 word1 ")
    assert names[1].endswith("…")
    assert len(names[1]) == 200
    assert sorted(r.fn for r in pool.timeline()) == sorted(names)
    assert all(e.fn == names[0] for e in events if e.task_id == events[0].task_id)


@pytest.mark.parametrize(("backend", "n"), [("inline", 20), ("thread", 2000), ("auto", 20), ("async", 200)])
def test_every_task_is_queued_then_started_then_finished(backend: str, n: int) -> None:
    """Before, inline reported finished then queued and never started; a thread task
    now and then started (even finished) before its queued event, which came after
    the backend had it; and auto's tasks run on its probe thread had no started."""
    events: list[TaskEvent] = []
    fn = tasks.asquare if backend == "async" else tasks.square
    with anypool.Pool(backend, 2, observers=[events.append]) as pool:
        futs = [pool.submit(fn, i) for i in range(n)]
        assert [f.result(30) for f in futs] == [i * i for i in range(n)]
        assert list(pool.map(fn, range(5), chunksize=1)) == [0, 1, 4, 9, 16]
    by_task: dict[int, list[str]] = {}
    for e in events:
        by_task.setdefault(e.task_id, []).append(e.kind)
    assert len(by_task) == n + 5
    wrong = {t: kinds for t, kinds in by_task.items() if kinds != ["queued", "started", "finished"]}
    assert wrong == {}
    if backend == "auto":
        assert any(e.worker == "probe" for e in events if e.kind == "started")
