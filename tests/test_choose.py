"""backend="auto" on real workloads: it must pick what a person would, and say why."""

from __future__ import annotations

import asyncio
import functools
import gc
import hashlib
import logging
import operator
import os
import threading
import time
import types
import weakref
from collections.abc import Generator
from typing import Any

import pytest

import anypool
import tasks
from anypool.choose import ASYNC_PROBE_ITEMS, _key, decide, decide_async


def _choice(pool: anypool.Pool, fn: Any) -> str:
    return pool.stats.choices[fn.__qualname__]


def sha(buf: bytes) -> str:
    return hashlib.sha256(buf).hexdigest()


def test_pure_python_cpu_work_goes_to_processes() -> None:
    with anypool.Pool() as pool:
        assert list(pool.map(tasks.cpu, [3_000_000] * 4)) == [tasks.cpu(3_000_000)] * 4
        assert _choice(pool, tasks.cpu).startswith("process: CPU-bound Python holding the GIL")


def test_sleeping_goes_to_threads() -> None:
    with anypool.Pool() as pool:
        assert list(pool.map(tasks.sleep, [0.05] * 6, range(6))) == list(range(6))
        assert _choice(pool, tasks.sleep).startswith("thread: it mostly waits")


def test_hashing_big_buffers_releases_the_gil_and_goes_to_threads() -> None:
    bufs = [bytes([i]) * (8 << 20) for i in range(4)]
    with anypool.Pool() as pool:
        assert list(pool.map(sha, bufs)) == [sha(b) for b in bufs]
        assert _choice(pool, sha).startswith("thread: CPU-bound but releases the GIL")


def test_coroutine_functions_go_to_async() -> None:
    with anypool.Pool() as pool:
        assert pool.submit(tasks.asquare, 3).result(10) == 9
        assert pool._backend.plan(tasks.asquare).name == "async"  # type: ignore[attr-defined]


def test_cpu_heavy_coroutines_go_to_process_async_after_a_few_timed_on_the_loop() -> None:
    """Only the first ASYNC_PROBE_ITEMS run on the pool's own loop; the rest on worker processes."""
    with anypool.Pool() as pool:
        out = list(pool.map(tasks.fetch_then_parse, range(40)))
        choice = _choice(pool, tasks.fetch_then_parse)
    assert [x for x, _ in out] == list(range(40))
    assert choice.startswith("process+async: coroutines doing CPU work"), choice
    here = [x for x, pid in out if pid == os.getpid()]
    assert here == list(range(ASYNC_PROBE_ITEMS))  # the probe cut the first batch to its head


def test_cpu_heavy_coroutines_that_cannot_be_pickled_stay_on_the_loop_and_say_why() -> None:
    lock = threading.Lock()

    async def parse(x: int) -> int:
        with lock:
            tasks.cpu(200_000)
        await asyncio.sleep(0)
        return x

    with anypool.Pool() as pool:
        assert list(pool.map(parse, range(12))) == list(range(12))
        (reason,) = pool.stats.choices.values()
    assert reason.startswith("async: coroutines doing CPU work, but they cannot go to processes"), reason


def test_coroutines_on_the_callers_loop_are_not_probed() -> None:
    """Attached to a running loop, whose CPU time is also the caller's: async, no probe."""

    async def main() -> list[Any]:
        async with anypool.Pool() as pool:
            out = [await pool.submit(tasks.fetch_then_parse, i, 10_000) for i in range(3)]
            assert pool.stats.choices == {}
            return out

    assert [pid for _, pid in asyncio.run(main())] == [os.getpid()] * 3


def test_a_probed_coroutine_is_cancelled_like_any_other() -> None:
    """The step timer passes a cancellation through to the coroutine it drives."""
    with anypool.Pool() as pool:
        timed_out = pool.with_options(timeout=0.3).submit(tasks.asleep, 30)
        cancelled = pool.submit(tasks.asleep, 30)  # both are timed: fewer than ASYNC_PROBE_ITEMS
        time.sleep(0.1)
        assert not cancelled.done(), (cancelled.exception(), pool.stats.choices, pool.stats)
        assert cancelled.cancel()
        with pytest.raises(anypool.TaskTimeout):
            timed_out.result(10)
        assert cancelled.cancelled()
        assert pool.submit(tasks.asquare, 4).result(10) == 16


def test_workers_sizes_threads_and_processes_not_coroutines() -> None:
    """Pool(workers=2) must not serialise an auto pool's IO coroutines two at a time."""
    with anypool.Pool(workers=2) as pool:
        t = time.monotonic()
        assert list(pool.map(tasks.asleep, [0.3] * 40, range(40))) == list(range(40))
        assert time.monotonic() - t < 2.0
        assert pool._backend.plan(tasks.sleep).workers == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize("options", [
    {},
    # the probe's checks fall due while the initializer runs, with no task yet to
    # judge: they must look again once the first task starts
    {"initializer": time.sleep, "initargs": (0.15,)},
], ids=["plain", "behind a slow initializer"])
def test_a_long_first_task_is_judged_while_it_runs(options: dict[str, Any]) -> None:
    """Tasks held by the probe do not wait for its first task to end."""
    with anypool.Pool(workers=2, **options) as pool:
        first = pool.submit(tasks.sleep, 3.0, "first")
        second = pool.submit(tasks.sleep, 0.01, "second")
        assert second.result(timeout=2.0) == "second"
        assert not first.done()
        assert _choice(pool, tasks.sleep).startswith("thread: it mostly waits")
        assert first.result(timeout=10) == "first"


def test_hashing_judged_mid_task_goes_to_threads_while_the_first_task_runs() -> None:
    """The early verdict (the GIL plainly free) judges a long first task without waiting for it."""
    big = bytes(512 << 20)  # ~0.4 s of hashing here, more under load
    with anypool.Pool(workers=2) as pool:
        first = pool.submit(sha, big)
        assert pool.submit(sha, b"x" * 4096).result(timeout=30) == sha(b"x" * 4096)
        assert not first.done()
        assert _choice(pool, sha).startswith("thread: CPU-bound but releases the GIL")
        assert first.result(timeout=30) == sha(big)


_FIRST_ENDED = threading.Event()


def cpu_then_note(n: int) -> int:
    """tasks.cpu, then note (in this process) that it ended."""
    total = tasks.cpu(n)
    _FIRST_ENDED.set()
    return total


def test_a_short_cpu_bound_first_task_waits_for_the_next_before_judging_the_gil() -> None:
    """A ~20 ms task is too short to judge the GIL: the probe waits a moment for more tasks.

    (A map's next batches come just after its first; the caller competes with
    that very task for the GIL to send them.  Judged on the first task alone,
    this was "thread: ... ran too briefly" 1 run in 3 under load.)
    """
    from anypool.backends.base import default_workers

    if default_workers() < 2:
        pytest.skip("auto picks processes only with more than one CPU")
    _FIRST_ENDED.clear()
    # ~18 ms tasks here: six give the sampler ~20 looks at the GIL (one a 5 ms
    # switch interval); at ~9 ms the first pool of a fresh process sometimes had too few
    with anypool.Pool(workers=2) as pool:
        first = pool.submit(cpu_then_note, 600_000)
        assert _FIRST_ENDED.wait(10)
        rest = [pool.submit(cpu_then_note, 600_000) for _ in range(5)]
        assert first.result(timeout=30) == tasks.cpu(600_000)
        assert [f.result(timeout=30) for f in rest] == [tasks.cpu(600_000)] * 5
    assert _choice(pool, cpu_then_note).startswith("process: CPU-bound Python holding the GIL")


def test_a_lone_gil_bound_task_is_not_called_gil_free_after_the_probe_waited() -> None:
    """While the probe waits for more tasks the GIL is free; those samples must not count."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("auto picks processes only with more than one CPU")
    with anypool.Pool(workers=2) as pool:
        assert pool.submit(tasks.cpu, 300_000).result(timeout=30) == tasks.cpu(300_000)
    choice = _choice(pool, tasks.cpu)
    assert not choice.startswith("thread: CPU-bound but releases the GIL"), choice
    assert choice.startswith(("thread: CPU-bound, but it ran too briefly", "process: CPU-bound")), choice


def test_tiny_tasks_stay_on_threads() -> None:
    with anypool.Pool() as pool:
        assert list(pool.map(tasks.square, range(10_000))) == [x * x for x in range(10_000)]
        assert _choice(pool, tasks.square).startswith("thread: ")


def test_the_choice_is_logged_at_debug_level(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="anypool"), anypool.Pool() as pool:
        pool.submit(tasks.sleep, 0.05).result(10)
    assert any("auto chose thread for sleep" in r.getMessage() for r in caplog.records)


def test_each_callable_gets_its_own_choice_in_one_pool() -> None:
    with anypool.Pool() as pool:
        pool.submit(tasks.sleep, 0.05).result(10)
        pool.submit(tasks.cpu, 3_000_000).result(30)
        choices = pool.stats.choices
    assert choices["sleep"].startswith("thread")
    assert choices["cpu"].startswith("process")
    assert "sleep" in str(pool.stats)


class Scale:
    """A callable class: each instance an object of its own, with its own state."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, x: int) -> int:
        return x * self.k


class Items(list[int]):
    """A list that can be weakly referenced: ``items.count`` is a built-in method bound to it."""


def _scale(k: int) -> tuple[object, Any, int, int]:
    s = Scale(k)
    return s, s, 2, 2 * k


def _count(k: int) -> tuple[object, Any, int, int]:
    items = Items([1] * k)
    return items, items.count, 1, k


def _alive(refs: list[weakref.ref[object]], seconds: float = 5.0) -> int:
    """How many of ``refs`` still have their object once the pool's threads let go of it."""
    deadline = time.monotonic() + seconds
    while sum(r() is not None for r in refs) and time.monotonic() < deadline:
        time.sleep(0.01)
    return sum(r() is not None for r in refs)


@pytest.mark.parametrize(("make", "label"), [(_scale, "Scale"), (_count, "Items.count")])
def test_objects_called_once_each_share_one_probe_and_are_not_kept(make: Any, label: str) -> None:
    """Keyed by the object itself (a callable instance, a built-in method bound to an
    object), each of them was probed anew and kept, with all it held, for the pool's life."""
    refs: list[weakref.ref[object]] = []
    gc.disable()  # freed as soon as unused: not left to a garbage collection that may come
    try:
        with anypool.Pool(record=True) as pool:
            for k in range(100):
                obj, fn, arg, expected = make(k)
                refs.append(weakref.ref(obj))
                assert pool.submit(fn, arg).result(30) == expected
                del obj, fn
            # the timeline names a task's callable from a one-entry cache: moved on
            assert pool.submit(len, "ab").result(30) == 2
            assert _alive(refs) == 0
            probed = [row for row in pool.timeline() if row.worker == "probe" and row.fn == label]
    finally:
        gc.enable()
    assert len(probed) == 1
    assert list(pool.stats.choices) == [label, "len"]


class WrapsACoroutineFunction:
    """A sync callable keeping the coroutine function it runs as ``.func``: not a partial."""

    def __init__(self, func: Any) -> None:
        self.func = func

    def __call__(self, x: int) -> tuple[str, Any]:
        return "sync", asyncio.run(self.func(x))


def test_an_object_with_a_func_attribute_is_not_taken_for_a_partial() -> None:
    """It shared the choice (and the name) of the coroutine function in its ``.func``: sent to
    the event loop, where its asyncio.run() failed."""
    with anypool.Pool() as pool:
        assert list(pool.map(tasks.asquare, range(3))) == [0, 1, 4]
        assert pool.submit(WrapsACoroutineFunction(tasks.asquare), 3).result(30) == ("sync", 9)
        choices = pool.stats.choices
    assert choices["asquare"].startswith("async: ")
    assert not choices["WrapsACoroutineFunction"].startswith("async"), choices


def logged(fn: Any) -> Any:
    """A decorator: each function it wraps gets a wrapper with the same code."""

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        return fn(*args)

    return wrapper


@logged
def logged_square(x: int) -> int:
    return x * x


@logged
def logged_sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_functions_wrapped_by_one_decorator_each_get_their_own_choice() -> None:
    """Keyed by the wrapper's code, the second shared the first one's choice (a sleeping
    function's, for CPU-bound work) and had no line in pool.stats.choices."""
    with anypool.Pool() as pool:
        assert list(pool.map(logged_sleep, [0.02] * 4)) == [0.02] * 4
        assert list(pool.map(logged_square, range(300))) == [x * x for x in range(300)]
        choices = pool.stats.choices
    assert choices["logged_sleep"].startswith("thread: it mostly waits")
    assert "mostly waits" not in choices["logged_square"], choices  # its own, measured


def test_what_counts_as_the_same_callable() -> None:
    """One choice per key: a key must hold no object made per call, nor join unlike callables."""
    assert _key(Scale(1)) == _key(Scale(2)) != _key(WrapsACoroutineFunction(tasks.asquare))
    assert _key(WrapsACoroutineFunction(tasks.asquare)) != _key(tasks.asquare)
    assert _key(functools.partial(tasks.add, 1)) == _key(functools.partial(tasks.add, 2)) == _key(tasks.add)
    assert _key(Items().count) == _key(Items([1]).count) != _key([].count)
    assert _key(Scale) != _key(Items)
    assert _key(len) is len
    assert _key(operator.itemgetter(0)) == _key(operator.itemgetter(1)) != _key(operator.attrgetter("x"))


class Multiplier:
    def __init__(self, k: int) -> None:
        self.k = k

    async def times(self, x: int) -> int:
        await asyncio.sleep(0)
        return self.k * x

    async def __call__(self, x: int) -> int:
        return await self.times(x)


def test_each_coroutine_the_probe_times_runs_its_own_callable() -> None:
    """The async probe ran every task it timed with the first one's callable: partials of
    one coroutine function, or its methods bound to different objects, all returned the
    first one's results."""
    with anypool.Pool() as pool:
        partials = [pool.submit(functools.partial(tasks.aadd, k), 1) for k in range(5)]
        methods = [pool.submit(Multiplier(k).times, 2) for k in range(5)]
        instances = [pool.submit(Multiplier(k), 3) for k in range(5)]
        assert [f.result(30) for f in partials] == [1, 2, 3, 4, 5]
        assert [f.result(30) for f in methods] == [0, 2, 4, 6, 8]
        assert [f.result(30) for f in instances] == [0, 3, 6, 9, 12]


def test_an_async_choice_is_in_the_stats_when_the_last_probed_result_comes_back() -> None:
    """It was made a moment later, on the clock thread: missing in 4 runs out of 10."""
    for _ in range(10):
        with anypool.Pool() as pool:
            assert list(pool.map(tasks.asleep, [0.01], ["x"])) == ["x"]
            assert "asleep" in pool.stats.choices
            assert pool.submit(tasks.asquare, 3).result(30) == 9
            assert "asquare" in pool.stats.choices


async def parse_failing_once(path: str, x: int) -> int:
    tasks.cpu(200_000)
    await asyncio.sleep(0)
    if x == 0 and not os.path.exists(path):
        open(path, "w").close()  # a mark the worker processes see too
        raise ValueError("the first attempt fails")
    return x


def test_a_retry_of_a_probed_coroutine_goes_where_the_choice_sends_it(tmp_path: Any) -> None:
    """The retry kept the probe's timing wrapper, which cannot be pickled: it ran on the loop,
    and the choice said its calls could not be pickled."""
    fn = functools.partial(parse_failing_once, str(tmp_path / "failed"))
    with anypool.Pool(retries=1, backoff=0) as pool:
        assert list(pool.map(fn, range(16))) == list(range(16))
        choice = pool.stats.choices["partial(parse_failing_once)"]
    assert choice.startswith("process+async: "), choice
    assert "cannot be pickled" not in choice, choice


def returns_a_coroutine(x: int) -> Any:
    return tasks.asquare(x)


def test_a_sync_callable_returning_awaitables_is_said_to_get_them_back_unawaited(
        caplog: pytest.LogCaptureFixture) -> None:
    """Auto's docstring sent "a callable returning awaitables" to async; it was probed as a
    sync callable (once sent to processes, which could not send its coroutines back), and
    its coroutines came back unawaited without a word."""
    with caplog.at_level(logging.WARNING, logger="anypool"), anypool.Pool() as pool:
        got = [pool.submit(returns_a_coroutine, 2).result(30), *pool.map(returns_a_coroutine, range(40))]
        reason = pool.stats.choices["returns_a_coroutine"]
    assert all(asyncio.iscoroutine(c) for c in got)
    assert [asyncio.run(c) for c in got] == [4] + [x * x for x in range(40)]
    assert reason.startswith("thread: it returns awaitables, but is no coroutine function"), reason
    assert "name backend='async'" in reason
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    said = [r.getMessage().split(",")[0] for r in warned]
    assert said == ["anypool: returns_a_coroutine returned a coroutine"]


class TestDecide:
    """The rule itself, on measurements given directly."""

    def ok(self) -> None:
        return None

    def test_io_bound(self) -> None:
        assert decide(0.01, 1.0, 1, 0.0, 8, self.ok).backend == "thread"

    def test_cpu_bound_holding_the_gil(self) -> None:
        d = decide(0.99, 1.0, 10, 0.9, 8, self.ok)
        assert d.backend == "process"

    def test_cpu_bound_releasing_the_gil(self) -> None:
        assert decide(0.99, 1.0, 10, 0.05, 8, self.ok).backend == "thread"

    def test_one_cpu_means_threads(self) -> None:
        assert "only one CPU" in decide(0.99, 1.0, 10, 0.9, 1, self.ok).reason

    def test_coroutines_that_wait_stay_on_the_loop(self) -> None:
        assert decide_async(0.00005, 0.1, 8, False, 8, self.ok).backend == "async"

    def test_cpu_heavy_coroutines_go_to_process_async(self) -> None:
        assert decide_async(0.001, 0.05, 8, True, 8, self.ok).backend == "process+async"

    def test_cpu_heavy_coroutines_on_one_cpu_stay_on_the_loop(self) -> None:
        assert "only one CPU" in decide_async(0.001, 0.05, 8, True, 1, self.ok).reason

    def test_an_unpicklable_callable_stays_on_threads_and_says_why(self) -> None:
        d = decide(0.99, 1.0, 10, 0.9, 8, lambda: "the lock cannot be pickled")
        assert d.backend == "thread"
        assert "cannot go to processes: the lock cannot be pickled" in d.reason


def test_an_unpicklable_cpu_bound_closure_still_runs() -> None:
    lock = threading.Lock()

    def busy(n: int) -> int:
        with lock:
            return tasks.cpu(n)

    # ~0.3 s: long enough for the GIL verdict on a loaded machine (an 85 ms
    # task once came back "ran too briefly to tell" while apt ran beside it)
    with anypool.Pool() as pool:
        assert pool.submit(busy, 10_000_000).result(60) == tasks.cpu(10_000_000)
        (reason,) = pool.stats.choices.values()
        assert "cannot go to processes" in reason


def _init_with(lock: Any) -> None:
    pass


def test_cpu_bound_work_whose_initializer_cannot_be_pickled_stays_on_threads_and_says_why() -> None:
    """The process pool auto would choose could not take the initializer: threads, not a hang."""
    with anypool.Pool(initializer=_init_with, initargs=(threading.Lock(),)) as pool:
        assert list(pool.map(tasks.cpu, [3_000_000] * 4)) == [tasks.cpu(3_000_000)] * 4
        reason = _choice(pool, tasks.cpu)
        assert reason.startswith("thread: CPU-bound and holds the GIL, but cannot go to processes")
        assert "the worker initializer _init_with (function) or its initargs cannot be sent" in reason


@types.coroutine
def generator_coroutine(x: int) -> Generator[Any, None, int]:
    yield from asyncio.sleep(0.2)
    return x


def test_generator_based_coroutines_go_to_async() -> None:
    """A ``types.coroutine`` generator function is a coroutine function to ``auto``.

    Regression: it was probed on a thread as a sync callable, so ``map``
    returned generator objects that never ran.
    """
    with anypool.Pool() as pool:
        t0 = time.perf_counter()
        assert list(pool.map(generator_coroutine, range(5))) == list(range(5))
        assert time.perf_counter() - t0 < 1.0  # concurrent, not 5 x 0.2 s
        assert pool.submit(functools.partial(generator_coroutine, 7)).result(10) == 7
    # timed on the event loop (never probed on a thread, which would return generator objects)
    assert pool.stats.choices["generator_coroutine"].startswith("async: coroutines that mostly wait")


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])  # an end before a start
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("how", ["map", "submit"])
def test_the_probes_running_task_counts_as_one_of_the_workers(workers: int, how: str) -> None:
    """workers=N is N calls at once, also while the probe's first task (judged mid-run) runs on.

    Before the fix the held tasks went to N fresh threads beside it: N + 1 at once.
    """
    with anypool.Pool(workers=workers) as pool:
        if how == "map":
            spans = list(pool.map(tasks.timed_sleep, [0.1] * 12, chunksize=1))
        else:
            spans = [f.result(30) for f in [pool.submit(tasks.timed_sleep, 0.1) for _ in range(12)]]
    assert _choice(pool, tasks.timed_sleep).startswith("thread: it mostly waits")
    assert _most_at_once(spans) == workers


def test_the_probes_running_task_counts_as_one_of_the_process_workers() -> None:
    """Chosen mid-run, a process pool of N runs N - 1 tasks until the probe's task ends."""
    from anypool.backends.base import default_workers

    if default_workers() < 2:
        pytest.skip("auto picks processes only with more than one CPU")
    # The first task: ~0.2-0.4 s of CPU work (the GIL is judged meanwhile), then a
    # sleep that lets the process workers start while it still runs.
    n = 3_000_000
    with anypool.Pool(workers=2) as pool:
        first = pool.submit(tasks.timed_cpu, n, 1.0)
        rest = [pool.submit(tasks.timed_cpu, n) for _ in range(6)]
        spans = [f.result(60) for f in [first, *rest]]
    choice = _choice(pool, tasks.timed_cpu)
    if not choice.startswith("process: "):  # (the thread case is the test above)
        pytest.skip(f"auto misjudged this GIL-bound work here (a loaded machine): {choice}")
    assert _most_at_once(spans) == 2, spans


def test_cpu_bound_calls_with_unpicklable_arguments_stay_on_threads_and_say_why() -> None:
    """The held calls' arguments are checked when choosing: none fails for auto's choice.

    Before the fix some of these calls failed with SerializationError (those
    held when processes were chosen), and every later one too.
    """
    from anypool.backends.base import default_workers

    if default_workers() < 2:
        pytest.skip("auto picks processes only with more than one CPU")
    n = 300_000
    with anypool.Pool(workers=2) as pool:
        futs = [pool.submit(tasks.cpu_beside, n, threading.Lock()) for _ in range(12)]
        assert [f.result(60) for f in futs] == [(tasks.cpu(n), os.getpid())] * 12
        later = pool.submit(tasks.cpu_beside, n, threading.Lock())
        assert later.result(60) == (tasks.cpu(n), os.getpid())
    reason = _choice(pool, tasks.cpu_beside)
    # thread, unless the choice came before a held call showed its lock (a loaded
    # machine): then processes, with these calls on threads; none failed either way
    assert reason.startswith("thread: ") or reason.endswith("calls that cannot be pickled run on thread"), \
        reason
    if reason.startswith("thread: ") and "holds the GIL" in reason:  # (load can make it look GIL-free)
        assert reason.startswith("thread: CPU-bound and holds the GIL, but cannot go to processes: "
                                 "argument 1 (lock"), reason


def test_a_call_that_cannot_be_pickled_runs_on_threads_where_auto_chose_processes() -> None:
    """Arguments that cannot go to the processes chosen for their callable: threads, said once."""
    from anypool.backends.base import default_workers

    if default_workers() < 2:
        pytest.skip("auto picks processes only with more than one CPU")
    n = 3_000_000
    with anypool.Pool(workers=2) as pool:
        first = list(pool.map(tasks.cpu_beside, [n] * 4))
        if not _choice(pool, tasks.cpu_beside).startswith("process: "):
            pytest.skip("auto kept this CPU-bound work on threads here (a loaded machine)")
        assert any(pid != os.getpid() for _, pid in first)  # the first ran on the probe
        one = pool.submit(tasks.cpu_beside, 1000, threading.Lock())
        assert one.result(60) == (tasks.cpu(1000), os.getpid())
        items = [None] * 5 + [threading.Lock()] + [None] * 5
        batch = list(pool.map(tasks.cpu_beside, [1000] * 11, items))
        assert [total for total, _ in batch] == [tasks.cpu(1000)] * 11
        assert batch[5][1] == os.getpid()
    assert _choice(pool, tasks.cpu_beside).endswith("; calls that cannot be pickled run on thread")


def test_a_coroutine_that_cannot_be_pickled_runs_on_the_loop_where_auto_chose_processes() -> None:
    with anypool.Pool(workers=2) as pool:
        assert len(list(pool.map(tasks.fetch_then_parse, range(40)))) == 40
        if not _choice(pool, tasks.fetch_then_parse).startswith("process+async"):
            pytest.skip("auto kept these coroutines on the loop here (one CPU, or a loaded machine)")
        lock = threading.Lock()
        assert pool.submit(tasks.fetch_then_parse, lock, 1000).result(60) == (lock, os.getpid())
    assert _choice(pool, tasks.fetch_then_parse).endswith("; calls that cannot be pickled run on async")


def test_a_timeout_holds_for_the_calls_the_probe_runs() -> None:
    """timeout= fails a probed call on time, as on threads; before, it ran to its end and succeeded."""
    with anypool.Pool(workers=2) as pool:
        t = time.monotonic()
        late = pool.with_options(timeout=0.3).submit(tasks.sleep, 3, "late")
        with pytest.raises(anypool.TaskTimeout):
            late.result(10)
        assert time.monotonic() - t < 2.0
        assert pool.submit(tasks.sleep, 0, "next").result(10) == "next"
        assert _choice(pool, tasks.sleep).startswith("thread: it mostly waits")
        assert pool.stats.timed_out == 1


def test_a_timeout_in_a_batch_the_probe_runs_fails_that_item_only() -> None:
    with anypool.Pool(workers=2) as pool:
        t = time.monotonic()
        got = list(pool.with_options(timeout=0.3).imap(
            tasks.sleep, [0.0] * 3 + [3.0] + [0.0] * 3, range(7), chunksize=7, return_exceptions=True))
        assert time.monotonic() - t < 2.0
    assert isinstance(got[3], anypool.TaskTimeout)
    assert [g for i, g in enumerate(got) if i != 3] == [0, 1, 2, 4, 5, 6]
