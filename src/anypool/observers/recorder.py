"""The timeline recorder: one row per finished attempt, for reports.

Rows hold text and numbers only (never the task's arguments or results), so
a long run's timeline costs a few hundred bytes a batch and frees every
task's data as soon as it is done.  Past ``limit`` rows it keeps a uniform
random sample (reservoir sampling) and counts what it dropped, so memory
stays bounded on endless runs; a report says when it shows a sample.
"""

from __future__ import annotations

import functools
import itertools
import operator
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import exception_line
from ..events import TaskEvent

if TYPE_CHECKING:
    from ..tasks import Task

__all__ = ["Recorder", "Row", "describe_args", "describe_error", "item_text", "task_counts"]


class Row(NamedTuple):
    """One finished attempt (of one task, or of a batch of ``size`` map items).

    This is also the shape of a job log's rows, so a report can be drawn from
    a live pool or from a job log written by an earlier run.
    """

    task_id: int
    seq: int
    size: int
    attempt: int
    worker: str
    started: float
    ended: float
    outcome: str  # ok | error | timeout | crash | cancelled (the worst of a batch's items)
    fn: str
    args: str  # a short text of the arguments
    error: str  # "" when outcome is ok
    # Of the ``size`` tasks: how many returned a value in this attempt, and how
    # many failed for good (this was their last attempt).  The rest failed and
    # were tried again, or were cancelled.  None: not known (a row made
    # elsewhere); read as every task ok for an "ok" row, every task failed for
    # an "error", "timeout" or "crash" one (see :func:`task_counts`).
    done: int | None = None
    failed: int | None = None


def task_counts(row: Row) -> tuple[int, int]:
    """``(done, failed)``: the row's tasks that returned a value, and that failed for good."""
    done, failed = row.done, row.failed
    if done is None or failed is None:
        if row.outcome == "ok":
            return row.size, 0
        return 0, (row.size if row.outcome in ("error", "timeout", "crash") else 0)
    return done, failed


_STARTED = operator.itemgetter(5)
# Rows are kept as plain tuples: the collector stops tracking a tuple of
# numbers and strings, never a Row (a subclass), which made each a cost in
# every later collection (recording 100k submits went from ~0.6 to ~3.5 us a
# task).  They become Rows when read, with Row._make's Python frame skipped.
_as_row: Any = functools.partial(tuple.__new__, Row)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


ARGS_LIMIT = 120  # characters of a task's arguments kept in its row
_ARGS = 9  # the args field's index in a row
# A submit's lone argument of these types is kept as it is, and made text when
# the rows are read: a number is immutable and holds no other object, and its
# repr was a third of what recording cost a task (~5.9k -> ~4.1k instructions
# a row, counted with callgrind over 20k thread submits).
_AS_IS = frozenset({int, float})
_SCALARS = frozenset({int, float, bool, complex, type(None)})  # a repr of these is short
_MANY = 8  # arguments of one call shown at most


def _brief(x: Any) -> str:
    """``repr(x)``, without ever making the whole text of a big string, buffer or container.

    The row keeps ``ARGS_LIMIT`` characters; a plain ``repr`` of an 8 MiB
    ``bytes`` argument took ~60 ms a task (and 32 MiB) only to be cut.
    """
    t = type(x)
    try:
        if t in _SCALARS:
            return repr(x)
        if t is str or t is bytes or t is bytearray:
            return repr(x) if len(x) <= ARGS_LIMIT else repr(x[:ARGS_LIMIT])  # cut later, with "…"
        text: str = _bounded_repr().repr(x)
        return text
    except Exception:  # a repr that raises (an int past str()'s digit limit, a broken __repr__)
        return f"<{t.__name__}>"


@functools.cache
def _bounded_repr() -> Any:
    """A ``reprlib.Repr`` that shows a few items of a container and slices long strings first."""
    import reprlib

    class Bounded(reprlib.Repr):
        def repr_str(self, x: Any, level: int) -> str:
            return repr(x) if len(x) <= self.maxstring else repr(x[:self.maxstring])[:-1] + "…"

        repr_bytes = repr_bytearray = repr_str

    r = Bounded()
    r.maxlevel, r.maxstring, r.maxother = 3, 40, 80
    return r


def item_text(item: Any) -> str:
    """One item as text: a ``submit``'s ``(args, kwargs)`` as a call's arguments (``1, b=2``).

    Bounded whatever the arguments' size (see :func:`_brief`); an argument
    whose ``repr`` raises shows as ``<type>``.
    """
    try:
        if type(item) is tuple and len(item) == 2 and type(item[0]) is tuple and (
                item[1] is None or type(item[1]) is dict):
            args, kwargs = item
            if not kwargs:
                # submit(fn, x), the commonest call: one repr, no join
                if len(args) == 1:
                    return _brief(args[0])
                shown = ", ".join(map(_brief, args[:_MANY]))
                return shown if len(args) <= _MANY else f"{shown}, … ({len(args)} arguments)"
            return ", ".join([*map(_brief, args[:_MANY]),
                              *(f"{k}={_brief(v)}" for k, v in list(kwargs.items())[:_MANY])])
        return _brief(item)
    except Exception:
        return f"<{type(item).__name__}>"


def describe_args(items: Sequence[Any], limit: int = ARGS_LIMIT) -> str:
    """A bounded text of a task's arguments (see :func:`item_text`)."""
    if not items:
        return ""
    first = item_text(items[0])
    text = first if len(items) == 1 else f"{_short(first, limit // 2)} … ({len(items)} items)"
    return _short(text, limit)


def _args_text(items: Sequence[Any]) -> str:
    if len(items) == 1:  # the common case, inline: describe_args costs a call more
        text = item_text(items[0])
        return text if len(text) <= ARGS_LIMIT else _short(text, ARGS_LIMIT)
    return describe_args(items)


def describe_error(exc: BaseException | None, limit: int = 300) -> str:
    """``Type: message``, bounded; never raises (an exception's own ``__str__`` may)."""
    if exc is None:
        return ""
    return _short(exception_line(exc), limit)


class Recorder:
    """An observer keeping a bounded timeline of finished attempts.

    It asks for ``finished`` events only (``finished_only``), so a pool that
    records builds no queued/started events for it, and it keeps plain
    tuples, turned into :class:`Row` objects when read.  A pool's own
    recorder is fed by its dispatcher (``ok`` for a submitted task that
    succeeded, no event built); as an observer it takes ``TaskEvent``s.
    """

    finished_only = True

    def __init__(self, limit: int = 200_000) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit!r}")
        self.limit = limit
        self._rows: list[tuple[Any, ...]] = []
        # Below the limit a row costs one next() and one append, both atomic
        # under the GIL: no lock on the path every finished attempt takes.
        self._arrivals = itertools.count()
        self._over = 0  # rows that came after the limit (sampled in or dropped)
        self._lock = threading.Lock()  # for the reservoir, past the limit

    def __call__(self, event: TaskEvent) -> None:
        (kind, task_id, seq, size, attempt, ended, fn, worker, started, outcome, error, final,
         items, results, retrying) = event  # one unpacking: cheaper than a dozen attribute reads
        if kind != "finished":
            return
        if outcome is None or outcome == "ok":
            done, failed = size, 0
        elif outcome == "cancelled":
            done, failed = 0, 0  # cancelled, neither done nor failed (as pool.stats counts them)
        elif size == 1 or not results:
            done, failed = 0, (size if final else 0)
        else:
            # a batch: its items' own outcomes; those in ``retrying`` get another attempt
            done = failed = 0
            for i, r in enumerate(results):
                if isinstance(r, BaseException):
                    if i not in retrying:
                        failed += 1
                else:
                    done += 1
        self._add((task_id, seq, size, attempt, worker or "", started or ended, ended,
                   outcome or "ok", fn, _args_text(items), "" if error is None else describe_error(error),
                   done, failed))

    def ok(self, task: Task, worker: str, started: float, ended: float, fn: str) -> None:
        """Record a single-item ``task`` that succeeded: the pool's hot path, with no event built."""
        args, kwargs = task.items[0]  # a submit's one item: (args, kwargs or None)
        if kwargs is None and len(args) == 1 and type(args[0]) in _AS_IS:
            text: Any = args[0]  # made text by rows()
        else:
            text = item_text(task.items[0])
            if len(text) > ARGS_LIMIT:
                text = _short(text, ARGS_LIMIT)
        row = (task.id, task.seq, 1, task.attempt, worker, started, ended, "ok", fn, text, "", 1, 0)
        n = next(self._arrivals)
        if n < self.limit:  # _add, inline: this runs once a task
            self._rows.append(row)
            return
        self._sample(n, row)

    def _add(self, row: tuple[Any, ...]) -> None:
        n = next(self._arrivals)
        if n < self.limit:
            self._rows.append(row)
            return
        self._sample(n, row)

    def _sample(self, n: int, row: tuple[Any, ...]) -> None:
        with self._lock:
            self._over += 1
            import random  # only once past the limit: ~2 ms of every start otherwise

            k = random.randrange(n + 1)
            if k < len(self._rows):  # < limit; an append racing this one may not have landed yet
                self._rows[k] = row

    @property
    def seen(self) -> int:
        """How many finished attempts were recorded (kept or not)."""
        return len(self._rows) + self._over

    @property
    def sampled(self) -> bool:
        """True when more attempts finished than the timeline keeps."""
        return self._over > 0

    def rows(self) -> list[Row]:
        """The kept rows, ordered by start time."""
        with self._lock:
            rows = self._rows[:]  # appends need no lock: the copy is atomic under the GIL
        for i, row in enumerate(rows):
            arg = row[_ARGS]
            if type(arg) is not str:  # a number ok() kept as it is
                text = item_text(((arg,), None))  # a huge int's repr raises: "<int>"
                if len(text) > ARGS_LIMIT:
                    text = _short(text, ARGS_LIMIT)
                rows[i] = (*row[:_ARGS], text, *row[_ARGS + 1:])
        rows.sort(key=_STARTED)
        return list(map(_as_row, rows))
