"""Lifecycle events: the one stream that progress, stats, reports and job logs observe.

Every backend reports the same transitions through the dispatcher::

    queued ──> started(worker) ──> finished(ok | error | timeout | crash | cancelled)
                                        │
                                        └─> retried ──> started ... (a new attempt)

An *observer* is any callable taking a :class:`TaskEvent`.  Observers run on
whichever thread the backend reports from, so they must be quick and
thread-safe, and must not keep ``items`` or ``results`` (that would pin every
task's data in memory).  An observer that raises (anything, ``SystemExit``
included) is logged and dropped; the task is settled all the same.
An observer with a true ``finished_only`` attribute gets ``finished``
events only, and a pool whose observers all say so builds no others (the
recorder and the job log do: it keeps recording cheap).

Small ``map`` items travel in batches; a batch is one event with ``size`` > 1
(its items share the batch's worker and times; ``results`` holds each item's
value, or the exception it failed with; ``retrying`` lists the items that
failed and will be tried again, so a batch's good items are final even when
another of its items is retried).  ``size`` says how many tasks an event covers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

__all__ = ["Observer", "TaskEvent"]


class TaskEvent(NamedTuple):
    """One lifecycle transition of a task (or of a batch of ``count`` map items).

    Attributes:
        kind: ``"queued"``, ``"started"``, ``"finished"`` or ``"retried"``.
        task_id: the pool-wide id of the (first) task.
        seq: the input position of the first item for ``map``; the task id for ``submit``.
        size: how many tasks this event covers (1 unless batched).
        attempt: 1 for the first attempt, 2 for the first retry, ...
        time: when the transition happened (``time.time()``).
        fn: the callable's qualified name (or the command, for shell jobs).
        worker: the worker that ran it (``finished``/``started``), else None.
        started: for ``finished``, when the attempt started.
        outcome: for ``finished``: ``"ok"``, ``"error"``, ``"timeout"``, ``"crash"``
            or ``"cancelled"`` (the worst outcome among a batch's items).
        error: for ``finished`` with a failure: the (first) exception.
        final: for ``finished``: no further attempt will follow (for a batch:
            of none of its items; ``retrying`` says which ones will be tried again).
        items: the task's arguments (``(args, kwargs)`` for ``submit``), for the
            duration of the call only.
        results: for ``finished``: each item's value or exception (for an
            item in ``retrying``, the exception of this failed attempt).
        retrying: for ``finished``: the indices (into ``items`` and
            ``results``) of the items whose attempt failed here and that will
            be tried again; every other item's attempt is its final one.
    """

    kind: str
    task_id: int
    seq: int
    size: int
    attempt: int
    time: float
    fn: str
    worker: str | None = None
    started: float | None = None
    outcome: str | None = None
    error: BaseException | None = None
    final: bool = False
    items: Sequence[Any] = ()
    results: Sequence[Any] | None = None
    retrying: tuple[int, ...] = ()


class Observer(Protocol):
    """Anything called with each :class:`TaskEvent`: a function, a bound method, an object.

    Called on the thread that reports the event; keep it quick, thread-safe,
    and do not keep ``items`` or ``results``.  Set ``finished_only = True`` on
    it to receive ``finished`` events only.
    """

    def __call__(self, event: TaskEvent, /) -> None: ...
