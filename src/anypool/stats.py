"""Pool statistics: counters and timing distributions, read as a frozen snapshot.

The dispatcher feeds these directly rather than through the event stream,
because they are always on and sit on every task's path.  Each worker (a
thread, a process's manager slot, the event loop) updates only its own
``WorkerStats``, so no lock is taken per task; ``PoolStats`` sums them when
read.  Timings go into log-spaced histograms (2.5 % wide buckets), so memory
stays flat however many tasks run and medians are within a bucket of exact.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from .records import Frozen

__all__ = ["UNASSIGNED", "PoolStats", "StatsCollector", "Summary", "WorkerStats"]

UNASSIGNED = "-"
"""The pseudo-worker that counts tasks which never reached a worker (cancelled, unsendable)."""

_SCALE = 40.0  # buckets per e-fold: exp(1/40) - 1 = 2.5 % bucket width
_OFFSET = 25.0  # log(1e-11): the smallest duration kept apart from zero
_log = math.log


def _bucket(seconds: float) -> int:
    if seconds <= 1e-11:
        return 0
    return int((_log(seconds) + _OFFSET) * _SCALE) + 1  # also inline in WorkerStats.record


def _bucket_value(b: int) -> float:
    if b == 0:
        return 0.0
    # the geometric middle of the bucket
    return math.exp((b - 0.5) / _SCALE - _OFFSET)


class Histogram:
    """Counts of durations in log-spaced buckets; add, merge, read quantiles."""

    __slots__ = ("counts", "max", "n", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, seconds: float, n: int = 1) -> None:
        b = _bucket(seconds)  # also inline in WorkerStats.record
        counts = self.counts
        counts[b] = counts.get(b, 0) + n
        self.n += n
        self.total += seconds * n
        if seconds > self.max:
            self.max = seconds

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts; ``other`` may be recorded into meanwhile (a running worker's)."""
        # dict.copy() takes the counts in one C call.  list(counts.items()) did
        # not: each (bucket, count) tuple it made could start a garbage
        # collection, whose finalizers run Python code, so the worker thread
        # could add a bucket mid-copy ("dictionary changed size during
        # iteration" out of pool.stats).
        for b, c in other.counts.copy().items():
            self.counts[b] = self.counts.get(b, 0) + c
        self.n += other.n
        self.total += other.total
        self.max = max(self.max, other.max)

    def quantile(self, q: float) -> float:
        """The nearest-rank ``q`` quantile: the ``ceil(q * n)``-th smallest duration.

        So p95 of 5 durations is the largest, as people read "p95" (a lower
        interpolation would report the 4th).  Within a bucket (2.5 %) of exact.
        """
        if not self.n:
            return 0.0
        rank = max(1, math.ceil(q * self.n - 1e-9))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return min(_bucket_value(b), self.max)
        return self.max


class Summary(Frozen):
    """A distribution of durations in seconds."""

    __slots__ = (  # noqa: RUF023 - field order: repr and positional arguments follow it
        "count", "mean", "median", "p95", "max",
    )

    count: int
    mean: float
    median: float
    p95: float
    max: float

    def __init__(self, count: int = 0, mean: float = 0.0, median: float = 0.0, p95: float = 0.0,
                 max: float = 0.0) -> None:  # noqa: A002 - the field's name
        self._set(count, mean, median, p95, max)

    @classmethod
    def of(cls, h: Histogram) -> Summary:
        if not h.n:
            return cls()
        return cls(h.n, h.total / h.n, h.quantile(0.5), h.quantile(0.95), h.max)


class WorkerStats:
    """The running totals of one worker; only that worker's reporting thread writes them."""

    __slots__ = (
        "busy",
        "cancelled",
        "crashed",
        "done",
        "failed",
        "last",
        "name",
        "retried",
        "run",
        "timed_out",
        "wait",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.busy = 0.0
        self.done = 0
        self.failed = 0
        self.retried = 0
        self.timed_out = 0
        self.crashed = 0
        self.cancelled = 0  # tasks cancelled (before or while they ran): final, neither done nor failed
        self.last = 0.0  # when the latest attempt recorded here ended
        self.run = Histogram()
        self.wait = Histogram()

    def record(self, started: float, ended: float, submitted: float, n: int) -> None:
        """Count ``n`` tasks that ran together from ``started`` to ``ended``."""
        # Histogram.add for both histograms, inline: this runs once a task, and
        # its four calls (add, _bucket, twice) were ~1.4k of the ~49k instructions
        # a thread submit costs (callgrind); keep the three in step.
        took = ended - started
        if took < 0:
            took = 0.0
        self.busy += took
        each = took / n
        h = self.run
        b = int((_log(each) + _OFFSET) * _SCALE) + 1 if each > 1e-11 else 0
        counts = h.counts
        counts[b] = counts.get(b, 0) + n
        h.n += n
        h.total += took
        if each > h.max:
            h.max = each
        wait = started - submitted
        if wait < 0:
            wait = 0.0
        h = self.wait
        b = int((_log(wait) + _OFFSET) * _SCALE) + 1 if wait > 1e-11 else 0
        counts = h.counts
        counts[b] = counts.get(b, 0) + n
        h.n += n
        h.total += wait * n
        if wait > h.max:
            h.max = wait
        if ended > self.last:
            self.last = ended


class PoolStats(Frozen):
    """A snapshot of what a pool has done.  ``str()`` gives a short table.

    Every count is of tasks (a ``map`` item is a task), not of batches.

    Attributes:
        backend: the backend name (for ``auto``: ``"auto"``).
        choices: for ``auto``, each callable's chosen backend and the reason
            (``{"fetch": "thread: it mostly waits (CPU 3% of wall time)"}``).
        workers: the configured number of workers (or concurrency).
        submitted: tasks handed to the pool (each map item counts).
        done: tasks that finished with a value.
        failed: tasks that failed for good (after their retries); a cancelled
            task is not failed.
        retried: attempts that failed and were tried again.
        timed_out / crashed: attempts stopped by their timeout / whose worker died.
        cancelled: tasks cancelled: before they ran (``shutdown(cancel_futures=True)``,
            a ``map`` closed early), while they ran (an async task's
            ``cancel()``), or stopped by ``shutdown(kill=True)``.  Every
            submitted task ends as exactly one of done, failed and cancelled:
            ``done + failed + cancelled + running == submitted``.
        running: tasks submitted and not yet final (queued, running, or
            waiting to be retried).
        run_time: the run time of every attempt, per task: batched ``map``
            items share their batch's average.  Tasks that never reached a
            worker (cancelled or unsendable) have none, nor a queue wait.
        queue_wait: from the moment an attempt was queued (submitted, or
            re-queued after a retry's back-off) to its start.
        elapsed: seconds from the pool's start to now or, while nothing
            runs, to the end of the last attempt (so an idle or shut-down
            pool's throughput does not decay).
        throughput: tasks that ran to an end (done + failed, not cancelled) per second of ``elapsed``.
        worker_busy: each worker's share of its lifetime (from its start to
            its exit, or to now) spent running tasks.  Workers replaced
            during the run appear under their own names.
    """

    __slots__ = (  # noqa: RUF023 - field order: repr and positional arguments follow it
        "backend", "choices", "workers", "submitted", "done", "failed", "retried", "timed_out",
        "crashed", "cancelled", "running", "run_time", "queue_wait", "elapsed", "throughput",
        "worker_busy",
    )

    backend: str
    choices: dict[str, str]
    workers: int
    submitted: int
    done: int
    failed: int
    retried: int
    timed_out: int
    crashed: int
    cancelled: int
    running: int
    run_time: Summary
    queue_wait: Summary
    elapsed: float
    throughput: float
    worker_busy: dict[str, float]

    def __init__(self, backend: str, choices: dict[str, str], workers: int, submitted: int, done: int,
                 failed: int, retried: int, timed_out: int, crashed: int, cancelled: int, running: int,
                 run_time: Summary, queue_wait: Summary, elapsed: float, throughput: float,
                 worker_busy: dict[str, float] | None = None) -> None:
        self._set(backend, choices, workers, submitted, done, failed, retried, timed_out, crashed,
                  cancelled, running, run_time, queue_wait, elapsed, throughput,
                  {} if worker_busy is None else worker_busy)

    def __str__(self) -> str:
        def ms(s: float) -> str:
            if s == 0:
                return "0 s"
            if s < 1e-3:
                return f"{s * 1e6:.3g} µs"
            return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"

        rows = [
            ("backend", self.backend),
            *((f"  {k}", v) for k, v in self.choices.items()),
            ("workers", str(self.workers)),
            ("tasks", f"{self.done} done, {self.failed} failed, {self.cancelled} cancelled, "
                      f"{self.running} running (of {self.submitted} submitted)"),
            ("attempts", f"{self.retried} retried, {self.timed_out} timed out, "
                         f"{self.crashed} crashed"),
            ("run time", f"median {ms(self.run_time.median)}, p95 {ms(self.run_time.p95)}, "
                         f"max {ms(self.run_time.max)}"),
            ("queue wait", f"median {ms(self.queue_wait.median)}, p95 {ms(self.queue_wait.p95)}, "
                           f"max {ms(self.queue_wait.max)}"),
            ("throughput", f"{self.throughput:,.1f} tasks/s over {self.elapsed:.3g} s"),
        ]
        if self.worker_busy:
            busy = sorted(self.worker_busy.values())
            rows.append(("worker busy", f"{len(busy)} workers, median {busy[len(busy) // 2]:.0%}, "
                                        f"min {busy[0]:.0%}, max {busy[-1]:.0%}"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


class StatsCollector:
    """Hands out ``WorkerStats`` and sums them into a ``PoolStats``."""

    def __init__(self, backend: str, workers: int) -> None:
        self.backend = backend
        self.workers = workers
        self.choices: dict[str, str] = {}
        self.started = time.time()
        self.closed_at: float | None = None
        self._lock = threading.Lock()
        self._workers: dict[str, WorkerStats] = {}
        self._spans: dict[str, tuple[float, float | None]] = {}

    def worker(self, name: str) -> WorkerStats:
        """The accumulator for ``name``, created on first use (a replaced worker gets a new name)."""
        ws = self._workers.get(name)
        if ws is None:
            with self._lock:
                ws = self._workers.get(name)
                if ws is None:
                    ws = self._workers[name] = WorkerStats(name)
                    self._spans[name] = (time.time(), None)
        return ws

    def worker_gone(self, name: str) -> None:
        """Note that worker ``name`` stopped, so its busy fraction counts only its lifetime."""
        with self._lock:
            start, _ = self._spans.get(name, (self.started, None))
            self._spans[name] = (start, time.time())

    def close(self) -> None:
        """Stop the clocks: the pool is shut down (``elapsed`` and lifetimes end here)."""
        with self._lock:
            if self.closed_at is None:
                self.closed_at = time.time()

    def snapshot(self, submitted: Callable[[], int]) -> PoolStats:
        """Sum every worker's totals into one frozen ``PoolStats``.

        ``submitted`` reads the pool's submitted count; it is called after
        the workers' counters are summed, never before: a task is counted
        submitted before it can run, so read in this order no snapshot
        shows more tasks final than submitted (read first, a snapshot taken
        while tasks ran could show done > submitted).
        """
        now = time.time()
        run, wait = Histogram(), Histogram()
        totals = dict.fromkeys(("done", "failed", "retried", "timed_out", "crashed", "cancelled"), 0)
        busy: dict[str, float] = {}
        last = 0.0
        with self._lock:
            workers = list(self._workers.values())
            spans = dict(self._spans)
            closed = self.closed_at
        stop = closed if closed is not None else now
        for ws in workers:
            run.merge(ws.run)
            wait.merge(ws.wait)
            for k in totals:
                totals[k] += getattr(ws, k)
            last = max(last, ws.last)
            if ws.name == UNASSIGNED:  # not a worker: tasks that never reached one
                continue
            start, end = spans.get(ws.name, (self.started, None))
            life = (end if end is not None else stop) - start
            busy[ws.name] = min(1.0, ws.busy / life) if life > 0 else 0.0
        submitted_now = submitted()  # after the counters: see above
        final = totals["done"] + totals["failed"]  # what throughput counts: cancelled tasks did no work
        running = max(0, submitted_now - final - totals["cancelled"])
        # while nothing runs the clock stops at the last attempt; else now (or the shutdown)
        end_of_run = min(now, max(last, self.started)) if running == 0 and last else stop
        elapsed = end_of_run - self.started
        return PoolStats(
            backend=self.backend,
            choices=dict(self.choices),
            workers=self.workers,
            submitted=submitted_now,
            running=running,
            run_time=Summary.of(run),
            queue_wait=Summary.of(wait),
            elapsed=elapsed,
            throughput=final / elapsed if elapsed > 0 else 0.0,
            worker_busy=busy,
            **totals,
        )
