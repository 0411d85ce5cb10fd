"""``backend="auto"``: pick the execution model per callable, and say why.

* a coroutine function (an ``async def``, a partial of one, an object with
  an ``async def __call__``) → ``async``, unless its coroutines keep the
  event loop busy: the first
  ``ASYNC_PROBE_ITEMS`` run on the loop with each step timed on the thread's
  CPU clock, and at ``ASYNC_HEAVY`` (0.2 ms) of CPU work a coroutine or more
  the rest go to ``process+async`` (a loop in each worker process), when the
  function (and the arguments of the coroutines held for the choice) can be
  pickled and there is more than one CPU.  A pool attached
  to the caller's running loop is not probed: that loop's CPU time is also
  the caller's;
* a command (a ``str``, an argv list or tuple, see :func:`~anypool.commands.is_command`)
  → ``subprocess``;
* a sync callable → measured on its first tasks, run on a probe thread (one
  that returns awaitables, such as ``lambda u: fetch(u, session)``, is a sync
  callable too, kept on ``thread``: what it returns is handed back
  unawaited, and auto says so in a warning logged once and in its choice):

  - CPU time well under wall time (it waits: IO, sleep, locks) → ``thread``;
  - tiny tasks (a few µs): pickling them to processes would cost more than
    running them → ``thread``;
  - CPU-bound but the GIL is free most of the time (hashlib, zlib, numpy:
    a sampler thread gets to run) → ``thread``;
  - CPU-bound Python holding the GIL → ``process`` (when the callable, the
    initializer and the arguments of the calls held for the choice can be
    pickled, and there is more than one CPU).

Auto never fails a call for its own choice: a later call whose arguments
(or a ``partial``'s) cannot be pickled, of a callable sent to ``process``
(``process+async``), runs on ``thread`` (``async``) instead, in this
process, with that backend's limits (a thread past its ``timeout=`` is
abandoned, not killed); ``pool.stats.choices`` says so once per callable.
Name the backend to get ``SerializationError`` at ``submit`` instead.

The probe runs tasks for at most ``PROBE_SECONDS``, or for ``PROBE_EARLY``
when the GIL sampler already found the GIL free nearly all the time (and the
probe thread was not kept waiting for a CPU); a task still running then is
judged mid-run from its thread's CPU clock, on the clock thread, which the
sampler calls in only once a verdict is possible.  Later tasks of that callable
wait, then go to the chosen backend, whose threads were started with the
probe (threads are the likely pick).  A task still running on the probe
thread when the choice is made counts as one of that backend's ``workers``
until it ends (``Backend.lend``): ``workers=N`` means N calls at once, the
probe's included.  A probed call past its ``timeout=`` fails on time, as on
``thread``: the probe thread is abandoned to finish it, and the choice is
made at once on what was measured.  Time the probe thread spent *ready to
run but waiting for a CPU* (Linux's schedstat) is taken out of its wall
time, so a busy machine does not make CPU-bound work look like waiting.  Each choice and its reason are in
``pool.stats.choices`` and logged at debug level.

The probe measures; it cannot be sure.  On a machine far past saturation
(several times more runnable threads than CPUs, or a throttled container)
CPU-bound work can look like waiting.  Where the choice matters, name the
backend.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import inspect
import logging
import os
import threading
import time
import types
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from . import clock, schedstat, waiting
from .backends import get_backend
from .backends.base import Backend, BackendConfig, default_workers
from .calls import call_items, call_one
from .commands import is_command
from .dispatch import fn_name, serve
from .errors import InitializerFailed, SerializationError, TaskTimeout
from .futures import Future
from .state import bind_thread
from .tasks import Failure, Task

if TYPE_CHECKING:
    from collections.abc import Generator

    from .backends.coroutines import AsyncBackend
    from .backends.processes import ProcessBackend
    from .dispatch import Dispatch

__all__ = ["AutoBackend", "Decision", "decide"]

log = logging.getLogger("anypool")

# Where a call goes whose callable was sent to processes but whose own
# arguments cannot be pickled: the same model in this process.
FALLBACK = {"process": "thread", "process+async": "async"}

PROBE_SECONDS = 0.05
PROBE_MAX = 1.0  # a busy machine may need longer to collect MIN_SAMPLES
PROBE_IDLE = 0.05  # how long the probe waits for more tasks before judging on what it has
MIN_SAMPLES = 8  # GIL sampler wake-ups needed to judge the GIL
# A sampler that woke EARLY_SAMPLES times by PROBE_EARLY found the GIL free
# nearly all the time (code holding it lets the sampler in about once a 5 ms switch
# interval; a free GIL, every ~0.3 ms): the evidence is in, and every task held
# meanwhile waits on one thread, so the probe stops there.  Judged at ~5 ms (was
# 24 wake-ups by 4 ms, ~10 ms); under two and three CPU hogs GIL-bound work was misjudged
# less often than before (0/8 and 3/25 runs, against 0/8 and 8/25).
PROBE_EARLY = 0.002
EARLY_SAMPLES = MIN_SAMPLES
MIN_RUN = 0.001  # how long a task must have run (on a CPU or blocked, not queued) to be judged mid-run
EARLY_STARVED = 0.1  # share of the probe time its thread waited for a CPU that rules out the early verdict
TINY_TASK = 20e-6  # seconds per task under which processes cannot pay for themselves
TINY_ITEMS = 256  # tiny tasks seen before judging them tiny without more probing
TINY_WAIT = 0.002  # how long fewer tiny tasks wait for more before being judged on their own
IO_BOUND = 0.25  # CPU / wall under this: it mostly waits (sleep/IO measure 0-5 %; CPU-bound work
                 # on a saturated, throttled machine was seen as low as 30 %)
# sampler wake-ups delayed by the GIL, per unit of probe CPU time, above which it holds
# the GIL (seen on a loaded machine: GIL-bound code 0.3-1.0, hashlib 0-0.1)
GIL_HELD = 0.25
# Coroutine functions: the first ones run on the event loop with each step timed.
ASYNC_PROBE_ITEMS = 8  # coroutines timed before judging
ASYNC_PROBE_SECONDS = 0.1  # judged by then on what ran, however few finished
ASYNC_HEAVY = 200e-6  # CPU seconds a coroutine keeps the loop busy above which processes pay
ASYNC_BUSY = 0.5  # share of the loop unfinished probe coroutines took that counts as heavy
# What auto says of a sync callable that returns awaitables (a lambda calling an async def).
AWAITABLES = ("auto runs it as a sync callable, and hands back what it returns unawaited, as "
              "backend='thread' does (make it an async def, or name backend='async', which awaits it)")
_TICK = 0.002  # how often a running first task is checked for the early verdict
_SAMPLE_SLEEP = 0.0002
_SAMPLE_LATE = 0.002  # a wake-up later than this waited for the GIL (switch interval is 5 ms)
_UNEXPLAINED = 0.0003


def is_async_callable(fn: Any) -> bool:
    """Whether ``fn`` belongs on an event loop: calling it gives a coroutine (async def,
    partials of one, async __call__, or a generator function made a coroutine with
    ``types.coroutine``), or an async generator, which the ``async`` backend refuses,
    saying why (on threads it would be returned, uniterated)."""
    if inspect.iscoroutinefunction(fn):
        return True
    inner = fn
    while isinstance(inner, functools.partial):
        inner = inner.func
    code = getattr(inner, "__code__", None)
    if code is not None and code.co_flags & (inspect.CO_ITERABLE_COROUTINE | inspect.CO_ASYNC_GENERATOR):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - looking for an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


class Decision:
    """What a probe measured and concluded."""

    __slots__ = ("backend", "cpu", "gil_held", "items", "reason", "wall")

    def __init__(self, backend: str, reason: str, cpu: float, wall: float, items: int,
                 gil_held: float) -> None:
        self.backend = backend
        self.reason = reason
        self.cpu = cpu
        self.wall = wall
        self.items = items
        self.gil_held = gil_held

    def __repr__(self) -> str:
        return f"Decision({self.backend!r}, {self.reason!r})"


def decide(cpu: float, wall: float, items: int, gil_held: float | None, cpus: int,
           picklable: Callable[[], str | None]) -> Decision:
    """Turn probe measurements into a backend choice with its reason.

    ``gil_held`` is None when too little was sampled to tell.
    """
    ratio = cpu / wall if wall > 0 else 0.0
    per = wall / max(items, 1)

    def d(backend: str, reason: str) -> Decision:
        return Decision(backend, reason, cpu, wall, items, gil_held or 0.0)

    if ratio < IO_BOUND:
        return d("thread", f"it mostly waits (CPU {ratio:.0%} of wall time)")
    if per < TINY_TASK:
        return d("thread", f"tasks are tiny ({per * 1e6:.1f} µs each): sending them to processes "
                           "would cost more than running them")
    if gil_held is None:
        return d("thread", f"CPU-bound, but it ran too briefly ({per * 1e6:.0f} µs a task) to tell "
                           "whether it holds the GIL")
    if gil_held < GIL_HELD:
        return d("thread", f"CPU-bound but releases the GIL (blocked other threads "
                           f"{gil_held:.0%} of the time)")
    if cpus < 2:
        return d("thread", "CPU-bound, but only one CPU is available: processes could not run in parallel")
    problem = picklable()
    if problem is not None:
        return d("thread", f"CPU-bound and holds the GIL, but cannot go to processes: {problem}")
    return d("process", f"CPU-bound Python holding the GIL (CPU {ratio:.0%} of wall time, "
                        f"{per * 1e3:.2f} ms a task)")


def decide_async(per: float, wall: float, items: int, heavy: bool, cpus: int,
                 picklable: Callable[[], str | None]) -> Decision:
    """Choose between the event loop and ``process+async`` for a coroutine function.

    ``per`` is the loop's CPU time a probed coroutine typically took (``items``
    of them were measured), ``heavy`` whether that keeps one loop from keeping up.
    """

    def d(backend: str, reason: str) -> Decision:
        return Decision(backend, reason, per * items, wall, items, 0.0)

    if not heavy:
        return d("async", f"coroutines that mostly wait ({per * 1e6:.0f} µs of CPU each on the event loop)")
    if cpus < 2:
        return d("async", "coroutines doing CPU work, but only one CPU is available")
    problem = picklable()
    if problem is not None:
        return d("async", f"coroutines doing CPU work, but they cannot go to processes: {problem}")
    return d("process+async", f"coroutines doing CPU work ({per * 1e3:.2f} ms each on the event loop): "
                              "one loop cannot keep up, so a loop in each of several processes")


class _GilSampler:
    """Measures how often a thread that wants the GIL is kept waiting for it.

    ``then``, if given, is called once from the sampler's thread, between two
    samples, as soon as ``after`` seconds have passed with ``enough`` samples
    counted, or ``by`` seconds have passed (unless stopped before).
    """

    def __init__(self, then: Callable[[], None] | None = None, after: float = 0.0, enough: int = 0,
                 by: float = 0.0) -> None:
        self.samples = 0
        self.late = 0
        self._stop = threading.Event()
        # False while the probe waits for tasks: a free GIL then says nothing about
        # them (sampling goes on, uncounted: pausing would cost GIL round trips)
        self.counting = True
        self._then = then
        self._after, self._enough, self._by = after, enough, by
        self._thread = threading.Thread(target=self._run, name="anypool-gil-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        perf, sleep = time.perf_counter, time.sleep
        # Each syscall gives up the GIL, and taking it back from a GIL-bound
        # thread costs a 5 ms switch interval: so one pread on a descriptor
        # kept open, once per sample, not an open/read/close pair twice.
        fd = schedstat.open_thread(threading.get_native_id())
        then, enough = self._then, self._enough
        start = perf()
        soonest, latest = start + self._after, start + self._by
        try:
            before = schedstat.read_delay(fd)
            while not self._stop.is_set():
                if then is not None and ((self.samples >= enough and perf() >= soonest) or perf() >= latest):
                    then()
                    then = None
                    before = schedstat.read_delay(fd)  # its time is in no sample
                counting = self.counting
                t = perf()
                sleep(_SAMPLE_SLEEP)
                late = perf() - t - _SAMPLE_SLEEP
                after = schedstat.read_delay(fd)
                # Late for the GIL, not just for a CPU: on a busy machine a
                # wake-up can be late by the scheduler's delay alone (measured
                # here: all but ~0.1 ms of it is run-queue time), while a GIL
                # wait leaves more (>= 0.6 ms seen) that the run queue does not explain.
                if counting:  # begun while a task ran: its lateness is that task's doing
                    if late > _SAMPLE_LATE and late - (after - before) > _UNEXPLAINED:
                        self.late += 1
                    self.samples += 1
                before = after
        finally:
            if fd is not None:
                os.close(fd)

    @property
    def held(self) -> float:
        return self.late / self.samples if self.samples else 0.0

    def stop(self) -> None:
        self._stop.set()
        # the probe's bound method: a cycle that would keep the probe, and the
        # callable it holds, until the garbage collector's next full pass
        self._then = None


class _ProbeBase:
    """What both probes share: the tasks held until the choice, and recording it."""

    def __init__(self, router: AutoBackend, key: Any, fn: Callable[..., Any]) -> None:
        self.router = router
        self.key = key
        self.fn = fn
        self.held: deque[Task] = deque()
        self.lock = threading.Lock()
        self.decided = False

    join_blocks = True  # join() waits for running tasks (False: it only makes the choice now)

    def hold(self, task: Task) -> bool:
        """Take ``task`` into the probe; False if the choice is already made (route it)."""
        raise NotImplementedError

    def join(self) -> None:
        """Make the choice, if not made yet, and hand on the tasks held for it."""
        raise NotImplementedError

    def _record(self, decision: Decision) -> list[Task] | None:
        """Make ``decision`` the router's choice; the held tasks, or None if another thread won."""
        # the router's lock first, then ours: the order submit() takes them in
        with self.router._lock, self.lock:
            if self.decided:
                return None
            self.decided = True
            self.router._choices[self.key] = decision.backend
            self.router._probes.pop(self.key, None)
            held = list(self.held)
            self.held.clear()
        return held

    processes = "process"  # the backend chosen for work that needs more than one process

    def _pickle_problem(self) -> str | None:
        # cloudpickle is imported only for a callable that may go to processes:
        # a run on threads is spared its ~5 ms import
        from .serialize import dumps_callable, dumps_initializer

        config = self.router.config
        try:
            dumps_callable(self.fn)
            # the process backends pickle it once, when made; made then from the probe's thread
            dumps_initializer(config.initializer, config.initargs, "to worker processes")
        except SerializationError as exc:
            return str(exc)
        with self.lock:
            held = list(self.held)
        if not held:
            return None
        # The tasks held are the calls this choice would send first: pickled
        # now, as the process backend would (it keeps what this pickles), so
        # arguments that cannot go (a lock, a socket) keep the callable on
        # threads rather than failing its calls there.
        backend = cast("ProcessBackend", self.router._sub(self.processes))
        for k, task in enumerate(held):
            try:
                backend.prepare(task)
            except SerializationError as exc:
                for t in held[:k]:
                    t.payload = None  # any shared memory it took goes now, not with the task
                return str(exc)
        return None


class _Probe(_ProbeBase):
    """Runs the first tasks of one callable on its own thread and measures them."""

    def __init__(self, router: AutoBackend, key: Any, fn: Callable[..., Any], first: Task) -> None:
        super().__init__(router, key, fn)
        self.held.append(first)
        self.more = threading.Condition(self.lock)  # a task was held
        self.cpu = 0.0
        self.wall = 0.0  # wall time less the time spent waiting for a CPU
        self.raw_wall = 0.0
        self.items = 0
        self.current_start: float | None = None
        # a task with a timeout= being run (task, results so far, failed indices, start, worker
        # stats), its item's start and the token of its deadline check: see _call_timed
        self.timed: tuple[Task, list[Any], list[int], float, Any] | None = None
        self.item_start = 0.0
        self.timed_token = 0
        # the chosen backend, while the task this probe still runs is one of its workers' share
        self.lent: Backend | None = None
        self.current_cpu0 = 0.0
        self.current_delay0 = 0.0
        self.awaitables = False  # a call returned an awaitable (said once: see _returns_awaitables)
        self.thread = threading.Thread(target=self._run, name="anypool-probe", daemon=True)
        self.began = time.perf_counter()
        self.delay0 = 0.0  # the probe thread's run-queue time when it started
        # its schedstat, kept open: read 2-3 times a task, a fresh open costs ~20 µs a read
        self._sched: int | None = None
        # Started last: its thread may call back at once.  The mid-task check
        # is armed by the sampler when an early verdict becomes possible, or at
        # PROBE_SECONDS: not sooner (each check competes with the sampler for a
        # GIL-bound task's GIL), nor later (an early verdict frees a waiting CPU).
        # Tiny tasks, decided before either, never start the clock thread.
        self.sampler = _GilSampler(self._arm, PROBE_EARLY, EARLY_SAMPLES, PROBE_SECONDS)
        self.sampler.start()
        self.thread.start()

    def _arm(self) -> None:
        if not self.decided:
            clock.call_later(0, self._tick)

    def hold(self, task: Task) -> bool:
        """Keep ``task`` until the decision; False if it is already made."""
        with self.lock:
            if self.decided:
                return False
            self.held.append(task)
            self.more.notify()
            return True

    def _run(self) -> None:
        router = self.router
        dispatch = router.dispatch
        ws = dispatch.stats.worker("probe")
        self._sched = schedstat.open_thread(threading.get_native_id())
        self.delay0 = schedstat.read_delay(self._sched)
        bind_thread({})
        serve(dispatch)  # a task here is one of the pool's: its shutdown() must not wait for itself
        init = router.config.initializer
        if init is not None:
            try:
                init(*router.config.initargs)
            except BaseException as exc:
                err = InitializerFailed(f"the worker initializer raised {exc!r}")
                err.__cause__ = exc
                dispatch.broken(err)
                self._decide_now(force=("thread", "the initializer failed"))
                return
        try:
            while True:
                with self.lock:
                    if not self.held and not self.decided and not self._seen_enough():
                        # too little measured yet: a map's next batch is usually on its way
                        self.sampler.counting = False
                        self.more.wait(PROBE_IDLE)
                        self.sampler.counting = True
                    if self.decided or not self.held:
                        break
                    task = self.held.popleft()
                    self.current_delay0 = schedstat.read_delay(self._sched)
                    self.current_start = time.perf_counter()
                    self.current_cpu0 = time.thread_time()
                if not task.claim():
                    dispatch.discard(task)
                    continue
                if dispatch.observing:
                    dispatch.started(task, ws)
                    with self.lock:  # measure from here: the observers' time is not the task's
                        self.current_delay0 = schedstat.read_delay(self._sched)
                        self.current_start = time.perf_counter()
                        self.current_cpu0 = time.thread_time()
                w0, c0, d0 = self.current_start, self.current_cpu0, self.current_delay0
                t0 = time.time()
                if task.options.timeout is None:
                    results, failed = call_items(task.fn, task.items, task.style, Failure)
                else:
                    timed = self._call_timed(task, t0, ws)
                    if timed is None:
                        return  # past its timeout: settled on time, and this thread abandoned
                    results, failed = timed
                t1 = time.time()
                if not self.awaitables and any(inspect.isawaitable(r) for r in results):
                    self._returns_awaitables(results)
                with self.lock:
                    self.current_start = None
                    lent, self.lent = self.lent, None
                    if not self.decided:
                        delay = schedstat.read_delay(self._sched) - d0
                        raw = time.perf_counter() - w0
                        self.raw_wall += raw
                        self.wall += max(raw - delay, 1e-9)
                        self.cpu += time.thread_time() - c0
                        self.items += len(task.items)
                    last = self.decided or not self.held or self._seen_enough()
                    if last and not self.decided and not self.held:
                        # too little seen to judge: a map's next batches are usually on
                        # their way (the caller competes with this very task for the GIL
                        # to send them), so wait a moment for them
                        pause = self._more_wanted()
                        if pause:
                            self.sampler.counting = False
                            self.more.wait(pause)
                            self.sampler.counting = True
                            last = self.decided or not self.held or self._seen_enough()
                if lent is not None:
                    lent.give_back()
                if last:
                    # decide before handing back this result: whoever waits for it
                    # then finds the choice already in pool.stats
                    self._decide_now()
                dispatch.finish(task, results, t0, t1, ws, failed)
                if last:
                    break
        finally:
            bind_thread(None)
            dispatch.stats.worker_gone("probe")
            self._decide_now()
            self._task_over()
            fd, self._sched = self._sched, None  # a late clock tick then reads 0, not a reused fd
            if fd is not None:
                os.close(fd)

    def _returns_awaitables(self, results: list[Any]) -> None:
        """Say once, as a warning, that the callable probed returns awaitables, handed back unawaited.

        Awaiting them would take the event loop, and this call's future (like
        every future of a sync callable) is not one the loop can settle: so
        auto runs it as ``thread`` would, and says how to get it awaited.
        """
        self.awaitables = True
        kind = next(type(r).__name__ for r in results if inspect.isawaitable(r))
        log.warning("anypool: %s returned a %s, but is no coroutine function: %s", fn_name(self.fn), kind,
                    AWAITABLES)

    def _call_timed(self, task: Task, started: float, ws: Any) -> tuple[list[Any], list[int] | None] | None:
        """Run ``task``'s items one by one under its ``timeout=``, as the thread backend does.

        None: an item ran past its timeout; ``_expire`` failed it on time,
        sent the rest on and made the choice, and this thread, abandoned,
        only finishes the call it is stuck in.
        """
        timeout = task.options.timeout
        assert timeout is not None
        fn, style = task.fn, task.style
        out: list[Any] = []
        failed: list[int] = []
        with self.lock:
            self.timed_token += 1
            token = self.timed_token
            self.timed = (task, out, failed, started, ws)
            self.item_start = time.time()
        clock.call_later(timeout, self._expire, token)
        for i, item in enumerate(task.items):
            if i:
                with self.lock:
                    self.item_start = time.time()
            try:
                r = call_one(fn, style, item)
            except BaseException as exc:
                r = Failure(exc)
            with self.lock:
                if self.timed_token != token:
                    return None
                if type(r) is Failure:
                    failed.append(i)
                out.append(r)
        with self.lock:
            if self.timed_token != token:
                return None
            self.timed = None
            self.timed_token += 1
        return out, failed or None

    def _expire(self, token: int) -> None:
        """Clock callback: fail the probe's item running past its deadline, or look again then."""
        with self.lock:
            timed = self.timed
            if timed is None or token != self.timed_token:
                return
            task, out, failed, started, ws = timed
            timeout = task.options.timeout
            assert timeout is not None
            now = time.time()
            deadline = self.item_start + timeout
            if now < deadline:
                clock.call_later(deadline - now, self._expire, token)
                return
            self.timed = None
            self.timed_token += 1  # the probe thread, back from the call, sees it abandoned
            i = len(out)
            done, bad = list(out), list(failed)
            if not self.decided and self.current_start is not None:
                # judged on what it did until now: the call may never return
                self.items += i + 1
                raw = time.perf_counter() - self.current_start
                own = raw - (schedstat.read_delay(self._sched) - self.current_delay0)
                self.raw_wall += raw
                self.wall += max(own, 1e-9)
                try:
                    clk = time.pthread_getcpuclockid(self.thread.ident or 0)
                    self.cpu += time.clock_gettime(clk) - self.current_cpu0
                except (AttributeError, OSError):
                    pass
        # the choice first: the rest of the batch, and a retry, go to the chosen backend
        self._decide_now()
        self._task_over()  # an abandoned call no longer takes a worker's share, as on threads
        dispatch = self.router.dispatch
        exc = TaskTimeout(timeout, task.label(), stopped=False)  # the call runs on in its thread
        dispatch.finish(task.head(i + 1), [*done, Failure(exc, "timeout")], started, time.time(), ws,
                        [*bad, i])
        if i + 1 < len(task.items):
            dispatch.requeue(task.subtask(i + 1, task.items[i + 1:]))

    def _task_over(self) -> None:
        """The probe runs no task now: give back the worker's share it used, if lent."""
        with self.lock:
            self.current_start = None
            lent, self.lent = self.lent, None
        if lent is not None:
            lent.give_back()

    def running(self, backend: Backend) -> bool:
        """Whether a task still runs here, chosen ``backend`` having lent a worker's share for it.

        False: none runs (any more), so ``backend`` has its share back at once.
        """
        with self.lock:
            if self.current_start is None:
                return False
            self.lent = backend
            return True

    def _seen_enough(self) -> bool:
        """Whether the measurements so far can decide (caller holds the lock)."""
        if self.items >= TINY_ITEMS and self.wall / self.items < TINY_TASK:
            return True  # tiny tasks: the GIL does not matter, threads win
        return self._early() or self._enough()

    def _more_wanted(self) -> float:
        """How long to wait for more tasks before judging on these (0: judge now).

        CPU-bound tasks need GIL samples (up to ``PROBE_IDLE``); tiny ones need
        ``TINY_ITEMS`` of them (up to ``TINY_WAIT``: one item's time is mostly
        the call's, and a map's first items may be its cheapest).
        """
        wall = self.wall
        if wall <= 0 or self.cpu / wall < IO_BOUND:
            return 0.0  # it waits: no GIL to judge
        if wall / max(self.items, 1) < TINY_TASK:
            return TINY_WAIT if self.items < TINY_ITEMS else 0.0
        if self.sampler.samples >= MIN_SAMPLES or time.perf_counter() - self.began >= PROBE_MAX:
            return 0.0
        return PROBE_IDLE

    def _early(self) -> bool:
        """Whether the sampler already found the GIL free nearly all the time.

        Only on a machine that lets the probe thread run: one kept waiting
        for a CPU drops the GIL at a switch and may wait a few ms to take it
        back, and the sampler runs freely meanwhile even beside GIL-bound
        code (bursts of 20-30 wake-ups were seen under load).
        """
        elapsed = time.perf_counter() - self.began
        if elapsed < PROBE_EARLY or self.sampler.samples < EARLY_SAMPLES:
            return False
        waited = schedstat.read_delay(self._sched) - self.delay0
        return waited < EARLY_STARVED * elapsed

    def _enough(self) -> bool:
        """Whether the full probe time has passed with enough samples to judge the GIL."""
        elapsed = time.perf_counter() - self.began
        if elapsed < PROBE_SECONDS:
            return False
        return self.sampler.samples >= MIN_SAMPLES or elapsed >= PROBE_MAX

    def _tick(self) -> None:
        """Clock callback: a task still running once the probe has seen enough is judged mid-run.

        Without it a long first task would keep every other task waiting
        until it ends; the early verdict (the GIL plainly free) is checked
        every ``_TICK`` until ``PROBE_SECONDS``.
        """
        if self.decided:
            return
        if not (self._early() or self._enough()):
            elapsed = time.perf_counter() - self.began
            clock.call_later(_TICK if elapsed < PROBE_SECONDS else PROBE_SECONDS / 2, self._tick)
            return
        with self.lock:
            if self.decided or self.current_start is None:
                if not self.decided and not self.items:
                    # the first task has not started (an initializer, or a probe
                    # thread slow to start): look again, or a long first task
                    # would hold every other one until it ends
                    clock.call_later(PROBE_EARLY, self._tick)
                return
            # The probe's clock started before this task did (the probe thread
            # may have been slow to start, or waited for a batch): a task judged
            # in its first microseconds shows only its start-up, CPU-heavy even
            # when it then sleeps for a second.  Its own time counts, not the
            # time it waited for a CPU: 1.2 ms in, 1.0 of them queued, a task
            # that had used 0.1 ms of CPU and then blocked on a socket looked
            # 50% CPU-bound (the demo's socket fetch was once called "CPU-bound
            # but releases the GIL" in a full test run).  5 ms instead of 1
            # made sha256 auto 2% slower (its first 4 ms hash ended unjudged).
            delay = schedstat.read_delay(self._sched) - self.current_delay0
            raw = time.perf_counter() - self.current_start
            own = raw - delay
            if own < MIN_RUN:
                clock.call_later(MIN_RUN - own, self._tick)
                return
            try:
                clk = time.pthread_getcpuclockid(self.thread.ident or 0)
                cpu_now = time.clock_gettime(clk)
            except (AttributeError, OSError):
                return  # judged when the task ends instead
            # thread_time() and the pthread CPU clock are the same clock on Linux
            self.cpu += cpu_now - self.current_cpu0
            self.raw_wall += raw
            self.wall += own
            self.items += 1
        self._decide_now()

    def _decide_now(self, force: tuple[str, str] | None = None) -> None:
        with self.lock:
            if self.decided:
                return
            cpu, wall, raw_wall, items = self.cpu, self.wall, self.raw_wall, self.items
        self.sampler.stop()
        # While the probe thread waits for a CPU it holds no GIL, so on a busy
        # machine the sampler is rarely late even for GIL-bound code: judge its
        # lateness against the share of time the probe thread was on a CPU.
        on_cpu = min(1.0, cpu / raw_wall) if raw_wall > 0 else 1.0
        gil_held: float | None = min(1.0, self.sampler.held / max(on_cpu, 0.05))
        if self.sampler.samples < MIN_SAMPLES and time.perf_counter() - self.began < PROBE_MAX:
            gil_held = None
        if force is None and self.awaitables:
            # never processes: what it returns could not come back from one
            force = ("thread", "it returns awaitables, but is no coroutine function: " + AWAITABLES)
        if force is not None:
            decision = Decision(force[0], force[1], cpu, wall, items, 0.0)
        else:
            decision = decide(cpu, wall, items, gil_held, self.router.cpus, self._pickle_problem)
        # Judged mid-run, the task running here is one of the chosen backend's
        # workers' share until it ends: lent before the choice is recorded, so
        # no task sent there meanwhile runs beside it with all the workers busy.
        chosen: Backend | None = None
        if self.current_start is not None:
            try:
                chosen = self.router._sub(decision.backend)
            except Exception:
                chosen = None  # reported in _decided, where the held tasks fail
            else:
                chosen.lend()
        held = self._record(decision)
        if chosen is not None and (held is None or not self.running(chosen)):
            chosen.give_back()
        if held is not None:
            self.router._decided(self.fn, decision, held)

    def join(self) -> None:
        waiting.join(self.thread)


class _Steps:
    """Awaits a coroutine (or any awaitable) step by step, adding each step's CPU time to a total.

    A step is what runs on the loop between two waits, so the sum is the time
    this coroutine kept the loop busy: its own work, without the time it
    waited and without other coroutines' turns.
    """

    __slots__ = ("awaitable", "cpu")

    def __init__(self, awaitable: Any) -> None:
        self.awaitable = awaitable
        self.cpu = 0.0

    def __await__(self) -> Generator[Any, Any, Any]:
        a = self.awaitable
        it = a.__await__() if hasattr(a, "__await__") else a  # a generator-based coroutine is its own
        cpu = time.thread_time
        value: Any = None
        exc: BaseException | None = None
        while True:
            t = cpu()
            try:
                step = it.send(value) if exc is None else it.throw(exc)
            except StopIteration as stop:
                self.cpu += cpu() - t
                return stop.value
            except BaseException:
                self.cpu += cpu() - t
                raise
            self.cpu += cpu() - t
            try:
                value, exc = (yield step), None
            except GeneratorExit:
                it.close()
                raise
            except BaseException as e:  # a cancellation, thrown in at the wait: pass it on
                value, exc = None, e


class _Timed:
    """A probed task's callable: calls it and times the steps of what it returns.

    It answers to the same name and key as the function (``__qualname__``,
    ``func``), so events, logs and the choice treat it as the function
    itself.  One is made for each task, never shared: the tasks of one key
    may hold different callables (partials, methods of different objects,
    instances of one class), and each must run its own.  Once called it gives
    the task its callable back, so a retry goes where the choice sends it.
    """

    def __init__(self, task: Task, probe: _AsyncProbe) -> None:
        self.func = task.fn
        self.task = task
        self.probe = probe
        self.__qualname__ = fn_name(self.func)

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.task.fn = self.func  # every item of the task has been called by now
        r = self.func(*args, **kwargs)
        if not inspect.isawaitable(r):
            return r
        steps = _Steps(r)
        try:
            value = await steps
        finally:
            decided = self.probe.finished(steps.cpu)
        if decided is not None:
            # the last one timed: handed back once the choice is in pool.stats,
            # as a thread probe's last task is (made off the loop, see finished)
            import asyncio

            await asyncio.wrap_future(decided)
        return value


class _AsyncProbe(_ProbeBase):
    """Runs the first coroutines of one function on the event loop, timing their CPU use.

    The first ``ASYNC_PROBE_ITEMS`` coroutines run at once, as they would
    anyway; later tasks wait until enough of those finished (or
    ``ASYNC_PROBE_SECONDS`` passed), then go to the chosen backend.
    """

    join_blocks = False
    processes = "process+async"

    def __init__(self, router: AutoBackend, key: Any, fn: Callable[..., Any], first: Task,
                 loop_backend: AsyncBackend) -> None:
        super().__init__(router, key, fn)
        self.loop_backend = loop_backend
        self.items = 0  # coroutines sent to the loop, timed
        self.cpu_done: list[float] = []  # CPU time of each finished one
        self.began = time.perf_counter()
        self.loop_cpu0 = self._loop_cpu()
        self.loop_delay0 = schedstat.thread_delay(loop_backend.loop_tid)
        clock.call_later(ASYNC_PROBE_SECONDS, self._decide_now)
        self.hold(first)

    def hold(self, task: Task) -> bool:
        """Time ``task`` on the loop while too few ran, else keep it; False once decided.

        A map batch bigger than the room left is cut: only its first items are
        timed, so the rest can still go to processes if those prove CPU-heavy.
        """
        with self.lock:
            if self.decided:
                return False
            room = ASYNC_PROBE_ITEMS - self.items
            if room <= 0:
                self.held.append(task)
                return True
            if task.future is None and len(task.items) > room:
                self.held.append(task.subtask(room, task.items[room:]))
                task = task.subtask(0, task.items[:room])
            self.items += len(task.items)
        task.fn = _Timed(task, self)
        self.loop_backend.submit(task)
        return True

    def finished(self, cpu: float) -> cf.Future[None] | None:
        """A timed coroutine ended (called on the loop thread): judge once enough did.

        Returns a future done once the choice is made, when this one completed
        the sample (None otherwise).
        """
        with self.lock:
            self.cpu_done.append(cpu)
            enough = not self.decided and len(self.cpu_done) >= min(ASYNC_PROBE_ITEMS, self.items)
        if not enough:
            return None
        done: cf.Future[None] = cf.Future()
        clock.call_later(0, self._decide_then, done)  # off the loop: choosing may start processes
        return done

    def _decide_then(self, done: cf.Future[None]) -> None:
        try:
            self._decide_now()
        finally:
            done.set_result(None)

    def join(self) -> None:
        self._decide_now()

    def _decide_now(self) -> None:
        with self.lock:
            if self.decided:
                return
            done, items = sorted(self.cpu_done), self.items
        wall = time.perf_counter() - self.began
        if done:
            # the median: a first call's one-time costs (imports, opening a
            # session) must not make a waiting coroutine look CPU-heavy
            n = len(done)
            per = done[n // 2]
            heavy = per >= ASYNC_HEAVY
        else:  # none finished yet: how busy they kept the loop
            busy, n = max(0.0, self._loop_cpu() - self.loop_cpu0), items
            per = busy / max(n, 1)
            # less the time the loop thread waited for a CPU: on a busy machine
            # a loop kept fully busy by its coroutines still gets only a share of one
            waited = schedstat.thread_delay(self.loop_backend.loop_tid) - self.loop_delay0
            heavy = busy / max(wall - waited, 1e-9) >= ASYNC_BUSY
        decision = decide_async(per, wall, n, heavy, self.router.cpus, self._pickle_problem)
        held = self._record(decision)
        if held is not None:
            self.router._decided(self.fn, decision, held)

    def _loop_cpu(self) -> float:
        """CPU time of the pool's loop thread so far (0 before it exists)."""
        ident = self.loop_backend.loop_thread
        if ident is None:
            return 0.0
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(ident))
        except (AttributeError, OSError):
            return 0.0


_LASTING = (types.ModuleType, type)  # what a built-in method may be bound to and still be kept


def _key(fn: Any) -> Any:
    """What identifies "the same callable" for the choice, holding no object made per call.

    * a function, or a method bound to any instance: its code (a decorator's
      wrapper: its code and the key of the function it wraps);
    * an instance of a class with a ``__call__`` written in Python: that
      ``__call__``'s code (keyed by the instance itself, each instance was
      probed anew and kept alive, with all it held, for the pool's life);
    * a class, a module's built-in function (``len``, ``dict.fromkeys``): itself;
    * a built-in method bound to an object (``some_list.append``): the
      object's type and the method's name;
    * anything else (a numpy ufunc, an ``operator.itemgetter``): its type,
      module and name.

    A ``functools.partial`` is keyed by the function it wraps, never an object
    that merely has a ``.func`` attribute.
    """
    if type(fn) is types.FunctionType:  # the common case first: this runs on every submit
        wrapped = getattr(fn, "__wrapped__", None)
        if wrapped is None or wrapped is fn:
            return fn.__code__
        # a decorator's wrapper (functools.wraps): its code is every decorated function's
        return (fn.__code__, _key(wrapped))
    while isinstance(fn, (functools.partial, _Timed)):
        fn = fn.func
    func = fn.__func__ if isinstance(fn, types.MethodType) else fn
    code = getattr(func, "__code__", None)
    if isinstance(code, types.CodeType):
        return code
    if isinstance(fn, type):
        return fn
    owner = getattr(fn, "__self__", None)
    if type(fn) is types.BuiltinFunctionType and (owner is None or isinstance(owner, _LASTING)):
        return fn  # a module's function (or a class's): it lives as long as its module
    code = getattr(getattr(type(fn), "__call__", None), "__code__", None)  # noqa: B004 - its code, if Python
    if isinstance(code, types.CodeType):
        return code
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    name = name if isinstance(name, str) else None
    if owner is not None and not isinstance(owner, _LASTING):
        return (type(owner), name)
    module = getattr(fn, "__module__", None)
    return (type(fn), module if isinstance(module, str) else None, name)


class AutoBackend(Backend):
    """Routes each callable to the backend that suits it (see the module docstring)."""

    name = "auto"
    options = ("own_loop", "on_output")  # those of the backends it may pick (never dask)

    def __init__(self, config: BackendConfig, dispatch: Dispatch) -> None:
        super().__init__(config, dispatch)
        self._lock = threading.Lock()
        self._subs: dict[str, Backend] = {}
        self._choices: dict[Any, str] = {}
        self._probes: dict[Any, _ProbeBase] = {}
        self._closed = False
        self.cpus = default_workers()

    def describe(self) -> str:
        chosen = ", ".join(sorted(self._subs)) or "nothing chosen yet"
        return f"auto ({chosen})"

    def _sub(self, name: str) -> Backend:
        b = self._subs.get(name)
        if b is None:
            with self._lock:
                b = self._subs.get(name)
                if b is None:
                    config = self.config
                    if name == "async":
                        # workers= sizes the thread and process pools; coroutines are
                        # cheap, and capping them at a CPU count would serialise IO
                        config = config._replace(workers=config.concurrency)
                    b = get_backend(name)(config, self.dispatch)
                    self._subs[name] = b
        return b

    def _static(self, fn: Any) -> str | None:
        if is_command(fn):
            return "subprocess"
        return self._choices.get(_key(fn))

    def plan(self, fn: Callable[..., Any]) -> Backend:
        name = self._static(fn)
        if name is None:
            name = "async" if is_async_callable(fn) else "thread"
        return self._sub(name)

    def future_for(self, fn: Callable[..., Any]) -> type[Future[Any]]:
        if is_async_callable(fn):
            from .asyncfuture import AsyncFuture  # asyncio is loaded only when coroutines run

            return AsyncFuture
        return Future

    def submit(self, task: Task) -> None:
        fn = task.fn
        name = self._static(fn)
        if name is None:
            loop: AsyncBackend | None = None
            if is_async_callable(fn):
                loop = cast("AsyncBackend", self._sub("async"))
                if loop.on_callers_loop():
                    # that loop also runs the caller's own code: its CPU time
                    # cannot be told apart from the coroutines', so no probe
                    loop.submit(task)
                    return
            key = _key(fn)
            with self._lock:
                name = self._choices.get(key)
                if name is None:
                    probe = self._probes.get(key)
                    if probe is None:
                        if loop is not None and inspect.isasyncgenfunction(fn):
                            name = "async"  # it fails there, saying why: nothing to time
                        elif loop is not None:
                            self._probes[key] = _AsyncProbe(self, key, fn, task, loop)
                            return
                        else:
                            self._probes[key] = _Probe(self, key, fn, task)
                    elif probe.hold(task):
                        return
                    else:
                        name = self._choices[key]  # decided and recorded under this lock
            if name is None:
                # Threads are the likely pick (the probe's answer for all but
                # GIL-bound Python): started now, while a CPU is free, rather
                # than at the choice, when the probe's task may be busy on one.
                self._sub("thread").start()
                return
        try:
            self._sub(name).submit(task)
        except SerializationError as exc:
            if name not in FALLBACK:
                raise
            self._fall_back(task, name, exc)

    def _fall_back(self, task: Task, name: str, exc: SerializationError) -> None:
        """Run on ``FALLBACK[name]`` a task whose arguments cannot go to the processes chosen.

        Auto chose the model; a call that cannot use it must not fail for
        that choice.  Said once per callable in ``pool.stats.choices``.
        """
        other = FALLBACK[name]
        label = fn_name(task.fn)
        choices = self.dispatch.stats.choices
        note = f"; calls that cannot be pickled run on {other}"
        text = choices.get(label, name)
        if note not in text:
            choices[label] = text + note
            log.debug("anypool: auto runs %s on %s where it cannot go to %s: %s", label, other, name, exc)
        self._sub(other).submit(task)

    def _decided(self, fn: Any, decision: Decision, held: list[Task]) -> None:
        """Record and log a probe's decision; send on the tasks it held."""
        label = fn_name(fn)
        self.dispatch.stats.choices[label] = f"{decision.backend}: {decision.reason}"
        log.debug("anypool: auto chose %s for %s: %s", decision.backend, label, decision.reason)
        if held:
            try:
                backend = self._sub(decision.backend)
            except Exception as exc:
                # on the probe's thread: unless failed here, the held tasks would wait for ever
                log.error("anypool: auto could not start the %s backend it chose for %s: %s",
                          decision.backend, label, exc)
                for task in held:
                    self.dispatch.fail_unrun(task, exc)
                return
            fixed = backend.fixed_batch()
            for task in held:
                pieces = [task]
                if fixed and task.future is None and len(task.items) > fixed:
                    # a batch sized for the probing backend: cut to the chosen one's
                    # size, or a few big batches would leave its workers unevenly loaded
                    pieces = [task.subtask(i, task.items[i:i + fixed])
                              for i in range(0, len(task.items), fixed)]
                for piece in pieces:
                    try:
                        try:
                            backend.submit(piece)
                        except SerializationError as exc:
                            # held after the choice's own check of the held tasks
                            if decision.backend not in FALLBACK:
                                raise
                            self._fall_back(piece, decision.backend, exc)
                    except Exception as exc:
                        self.dispatch.fail_unrun(piece, exc)

    def kills_running(self) -> bool:
        with self._lock:
            if self._probes:
                return False  # a probe runs its callable's first tasks on a thread
            # the backends chosen, not the thread pool started in case it would be
            used = set(self._choices.values()) | (self._subs.keys() & {"subprocess"})
            subs = [self._subs[name] for name in used if name in self._subs]
        return bool(subs) and all(b.kills_running() for b in subs)

    def cancel_pending(self) -> None:
        with self._lock:
            probes = list(self._probes.values())
            subs = list(self._subs.values())
        for p in probes:
            with p.lock:
                held = list(p.held)
                p.held.clear()
            for task in held:
                self.dispatch.cancel(task)
        for b in subs:
            cancel = getattr(b, "cancel_pending", None)
            if cancel is not None:
                cancel()

    def shutdown(self, wait: bool = True, kill: bool = False) -> None:
        self._closed = True
        with self._lock:
            probes = list(self._probes.values())
        for p in probes:
            if not kill and (wait or not p.join_blocks):
                p.join()
        with self._lock:
            subs = list(self._subs.values())  # after the probes: their choices may have made one
        for b in subs:
            b.shutdown(wait=wait, kill=kill)
