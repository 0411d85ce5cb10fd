"""The recorder behind ``record=True``: bounded rows, and only the events it needs."""

from __future__ import annotations

import pytest

import anypool
import tasks
from anypool.observers.recorder import ARGS_LIMIT, Recorder, Row


def test_rows_describe_each_attempt() -> None:
    with anypool.Pool("thread", 2, record=True, retries=1, backoff=0) as pool:
        assert pool.submit(tasks.add, 1, b=2).result(10) == 3
        assert isinstance(pool.submit(tasks.fail_on, 3).exception(10), ValueError)
    rows = pool.timeline()
    assert all(isinstance(r, Row) for r in rows)
    ok = next(r for r in rows if r.outcome == "ok")
    assert ok.args == "1, b=2"  # a submit's arguments read as the call's
    assert ok.fn == "add"
    assert ok.worker.startswith("thread-")
    assert ok.ended >= ok.started
    failed = sorted((r for r in rows if r.fn == "fail_on"), key=lambda r: r.attempt)
    assert [(r.attempt, r.outcome) for r in failed] == [(1, "error"), (2, "error")]
    assert failed[0].error == "ValueError: bad item 3"
    assert rows == sorted(rows, key=lambda r: r.started)


def test_long_arguments_are_cut() -> None:
    with anypool.Pool("inline", record=True) as pool:
        pool.submit(len, "x" * 10_000).result()
    (row,) = pool.timeline()
    assert len(row.args) == ARGS_LIMIT
    assert row.args.endswith("…")


def test_a_number_argument_reads_as_its_repr_and_a_huge_one_is_cut() -> None:
    """A lone int or float is kept as it is and made text when read: the same text as any argument."""
    with anypool.Pool("thread", 1, record=True) as pool:
        for arg in (5, 2.5, -0.0, 7 ** 200, True, "5"):
            pool.submit(abs if not isinstance(arg, str) else len, arg).result(10)
    args = [r.args for r in sorted(pool.timeline(), key=lambda r: r.seq)]
    assert args[:3] == ["5", "2.5", "-0.0"]
    assert len(args[3]) == ARGS_LIMIT
    assert args[3] == str(7 ** 200)[:ARGS_LIMIT - 1] + "…"
    assert args[4:] == ["True", "'5'"]
    assert all(type(a) is str for a in args)


class _Counted:
    calls = 0

    def __repr__(self) -> str:
        _Counted.calls += 1
        return "c"


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_a_big_argument_is_described_without_making_its_whole_text() -> None:
    """A row keeps 120 characters: an 8 MiB buffer or a long list is never repr'd whole."""
    _Counted.calls = 0
    big = [_Counted() for _ in range(100_000)]
    with anypool.Pool("thread", 1, record=True) as pool:
        pool.submit(len, b"x" * (8 << 20)).result(10)
        pool.submit(len, big).result(10)
        pool.submit(max, *range(20)).result(10)
        pool.submit(id, _BadRepr()).result(10)
    assert _Counted.calls <= 10
    args = [r.args for r in sorted(pool.timeline(), key=lambda r: r.seq)]
    assert args[0] == "b'" + "x" * (ARGS_LIMIT - 3) + "…"
    assert args[1] == "[c, c, c, c, c, c, ...]"
    assert args[2] == "0, 1, 2, 3, 4, 5, 6, 7, … (20 arguments)"
    assert args[3].startswith("<_BadRepr instance at 0x")  # reprlib's stand-in


def test_past_its_limit_it_keeps_a_uniform_sample_and_says_so() -> None:
    rec = Recorder(limit=100)
    with anypool.Pool("thread", 2, observers=[rec]) as pool:
        for f in [pool.submit(tasks.square, i) for i in range(1000)]:
            f.result(10)
    rows = rec.rows()
    assert len(rows) == 100
    assert rec.seen == 1000
    assert rec.sampled
    seqs = sorted(r.seq for r in rows)
    assert seqs[-1] > 500, "later attempts got their chance too"


def test_a_recording_pool_builds_no_queued_or_started_events() -> None:
    """The recorder asks for finished events only; an observer that wants all gets all."""
    seen: list[str] = []
    with anypool.Pool("thread", 2, record=True) as pool:
        assert pool._dispatch.observing is False
        assert pool._dispatch.finishing is True
        pool.submit(abs, -1).result(10)
        pool.add_observer(lambda e: seen.append(e.kind))
        assert pool._dispatch.observing is True
        pool.submit(abs, -2).result(10)
    assert sorted(seen) == ["finished", "queued", "started"]
    assert len(pool.timeline()) == 2


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"limit must be >= 1, not 0"):
        Recorder(limit=0)
