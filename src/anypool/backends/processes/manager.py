"""The manager thread: the one place that talks to worker processes.

::

    caller threads ──submit──> pending deque ──wake pipe──┐
                                                          ▼
    ┌──────────────────────── manager thread: one selector over ────────────────────┐
    │  wake pipe · each worker's socket (read; write while output is queued) ·      │
    │  each worker's process sentinel                                               │
    │                                                                               │
    │  readable socket  → RESULT/PARTIAL → dispatch.finish (retries, futures, map)  │
    │                     UNRUN (worker too big) → its unrun items back to pending  │
    │  sentinel         → the worker is gone: read what it sent first, blame the    │
    │                     item it was running (slot), requeue the rest, replace it  │
    │  every turn       → hand pending tasks to workers with room (coalescing small │
    │                     submits into one wire batch), kill items past deadline    │
    └───────────────────────────────────────────────────────────────────────────────┘

Shared structures and their shapes:

* ``pending``: deque of ``Task`` (appended by any thread, popped here only;
  the part of a map batch cut off to fit ``max_tasks_per_worker``, and what
  a worker hands back, go back to its head from here).
* ``_Worker.inflight``: deque of ``_Wire`` sent to that worker, oldest
  first; a sync worker answers them in that order.
* ``slots``: ``RawArray('d', 2 * workers * SLOT_WIDTH)`` in shared memory;
  twice the worker count so a retiring worker and its replacement never
  share a slot.  A slot is free again only once its worker's exit is seen:
  when workers retire faster than they exit, a replacement waits for one
  (``wanted``), and a retiring worker that does not exit is killed.

Nothing here blocks on a worker: sockets are non-blocking, and a worker is
only ever waited for through its sentinel.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import pickle
import selectors
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ... import mainguard
from ...dispatch import serve
from ...errors import (
    BrokenPool,
    InitializerFailed,
    PoolClosed,
    TaskError,
    TaskTimeout,
    WorkerCrashed,
    describe_exit,
)
from ...serialize import PROTOCOL, unpack_exception
from ...tasks import CALL, Failure, Task
from .protocol import (
    IDLE,
    INIT_FAILED,
    PARTIAL,
    READY,
    RESULT,
    SLOT_WIDTH,
    STOP,
    TASK,
    UNRUN,
    FrameReader,
    FrameWriter,
    reply_head,
)
from .worker import FN_CACHE
from .worker import main as worker_main

if TYPE_CHECKING:
    from ...stats import WorkerStats
    from . import ProcessBackend

log = logging.getLogger("anypool")

STARTUP_FAILURES = 3  # workers dying before READY, in a row, before the pool is declared broken
STOP_GRACE = 5.0  # seconds a stopping worker gets before it is killed
ASYNC_GRACE = 1.0  # seconds a process+async worker gets to stop a coroutine past its timeout
PREFETCH_BELOW = 0.05  # send a second batch to a busy worker only if batches take less than this
MAX_COALESCE = 256  # submit() calls packed into one message at most


class _Wire:
    """One TASK message: a map batch, or several single calls coalesced."""

    __slots__ = ("delivered", "fn_id", "id", "n", "remaining", "results", "started", "timeout", "units")

    def __init__(self, wire_id: int, units: list[Task], fn_id: int, timeout: float | None) -> None:
        self.id = wire_id
        self.units = units
        self.n = sum(len(t.items) for t in units)
        self.fn_id = fn_id
        self.timeout = timeout
        self.results: list[Any] | None = None  # items reported one by one, as they arrive
        self.remaining = self.n
        self.delivered = 0  # sync workers report items in order: how many came back
        self.started = time.time()


class _Worker:
    __slots__ = ("fault", "fns", "inflight", "inflight_items", "killed", "name", "pid", "proc",
                 "reader", "ready", "retired_at", "retiring", "rss", "slot", "sock", "tasks_done",
                 "writer", "ws")

    def __init__(self, slot: int, name: str, proc: Any, sock: socket.socket, fault: Any,
                 ws: WorkerStats) -> None:
        self.slot = slot
        self.name = name
        self.proc = proc
        self.pid: int = proc.pid
        self.sock = sock
        self.reader = FrameReader(sock)
        self.writer = FrameWriter(sock)
        self.fault = fault
        self.ws = ws
        self.ready = False
        self.retiring = False
        self.retired_at = 0.0  # time.monotonic() when _retire sent it STOP
        self.killed: tuple[Any, ...] | None = None  # ("timeout", wire_id, index) or ("kill",)
        self.inflight: deque[_Wire] = deque()
        self.inflight_items = 0
        self.tasks_done = 0
        self.rss = 0
        self.fns: OrderedDict[int, None] = OrderedDict()  # mirror of the worker's callable cache


def _context(method: str | None) -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    if method is None:
        method = "forkserver" if "forkserver" in methods else "spawn"
    if method not in methods:
        raise ValueError(f"start_method must be one of {methods}, not {method!r}")
    if method == "forkserver":
        from multiprocessing import forkserver

        server: Any = forkserver._forkserver
        # Preload the worker module in the fork server so each new worker
        # starts with it imported (a few ms instead of tens).  Only when
        # nobody started the server or changed its preload list yet.
        if server._forkserver_pid is None and server._preload_modules == ["__main__"]:
            server._preload_modules = ["__main__", "anypool.backends.processes.worker"]
    return multiprocessing.get_context(method)


class Manager:
    """Runs the worker processes of one pool (see the module docstring)."""

    def __init__(self, backend: ProcessBackend) -> None:
        self.backend = backend
        self.dispatch = backend.dispatch
        self.config = backend.config
        self.mode = backend.worker_mode
        self.n = backend.workers
        self.ctx: Any = _context(self.config.start_method)
        # The first workers are forked on the spot when nothing can go wrong
        # with it: no start method asked for, and this is the process's only
        # thread (no lock can be held by another thread at the fork).  A fork
        # costs ~1 ms; a cold fork server ~0.3 s.  Later workers (replacements)
        # start from the fork server, since the manager thread exists by then.
        self.first_ctx: Any = None
        if (self.config.start_method is None and "fork" in multiprocessing.get_all_start_methods()
                and threading.active_count() == 1):
            self.first_ctx = multiprocessing.get_context("fork")
        self.pending = backend.pending
        self.slots = self.ctx.RawArray("d", 2 * self.n * SLOT_WIDTH)
        for i in range(0, len(self.slots), SLOT_WIDTH):
            self.slots[i] = IDLE
        self.free_slots = list(range(2 * self.n - 1, -1, -1))
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        # wake() against _close(): a write to the closed pipe's number, once the
        # system has given it to another file, would write into that file
        self.wake_lock = threading.Lock()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, ("wake", None))
        self.wake_pending = False
        self.workers: dict[int, _Worker] = {}  # by slot
        self.names = itertools.count(1)
        self.wire_ids = itertools.count(1)
        self.cost: dict[int, float] = {}  # fn_id -> seconds per item (moving average)
        self.startup_failures = 0
        self.wanted = 0  # workers to start as soon as a slot is free (see _start_worker)
        self.stopping = False
        self.killing = False
        self.broken: BaseException | None = None
        self.stop_deadline: float | None = None
        self.init_bytes = backend.init_bytes
        if self.first_ctx is not None:
            for _ in range(self.n):
                self._start_worker(self.first_ctx)
        self.thread = threading.Thread(target=self._run, name="anypool-process-manager", daemon=True)
        self.thread.start()

    # -- called from other threads ------------------------------------------

    def wake(self) -> None:
        if not self.wake_pending:
            self.wake_pending = True
            with self.wake_lock:  # once a burst: the manager clears wake_pending as it reads
                if self.wake_w < 0:
                    return  # closed: the manager has ended
                try:
                    os.write(self.wake_w, b"x")
                except (BlockingIOError, OSError):
                    pass

    def stop(self) -> None:
        """Graceful: workers finish what they hold and exit."""
        self.stopping = True
        self.wake()

    def kill(self) -> None:
        """Kill every worker now (and everything it started); their tasks fail."""
        self.stopping = True
        self.killing = True
        for w in list(self.workers.values()):
            w.killed = ("kill",)
            _kill_group(w.pid)
        self.wake()

    # -- the loop ---------------------------------------------------------------

    def _run(self) -> None:
        serve(self.dispatch)
        try:
            if self.first_ctx is None:
                for _ in range(self.n):
                    self._start_worker()
            while True:
                timeout = self._turn()
                if self.stopping and not self.workers:
                    break
                for key, mask in self.selector.select(timeout):
                    kind, w = key.data
                    if kind == "wake":
                        # drain first, then clear: a wake() in between then either
                        # wrote a byte still unread or finds the flag clear and writes
                        try:
                            while os.read(self.wake_r, 4096):
                                pass
                        except BlockingIOError:
                            pass
                        self.wake_pending = False
                    elif kind == "chan":
                        if mask & selectors.EVENT_READ:
                            self._read(w)
                        if mask & selectors.EVENT_WRITE and w.slot in self.workers:
                            self._flush(w)
                    elif kind == "exit":
                        self._on_exit(w)
        except BaseException as exc:
            log.exception("anypool: the process manager failed; the pool is broken")
            # what failed, in the error every pending task gets: the log may be out of sight
            err = BrokenPool(f"the process pool's manager thread failed, {_doing(exc)}: "
                             f"{type(exc).__name__}: {exc} (its traceback is in the log)")
            err.__cause__ = exc
            self._break(err)
            for w in list(self.workers.values()):
                _kill_group(w.pid)
            raise
        finally:
            self._close()

    def _turn(self) -> float | None:
        """Housekeeping between selects; returns how long the next select may sleep."""
        if self.killing:
            # kill() ran in another thread: a worker started since then escaped it
            for w in self.workers.values():
                if w.killed is None:
                    w.killed = ("kill",)
                    _kill_group(w.pid)
            self.fail_pending(PoolClosed("the pool was shut down with kill=True"), "cancelled")
        if self.broken is None and not self.killing:
            self._assign()
        if self.stopping and not self.killing:
            self._stop_idle_workers()
        wait = self._check_deadlines()
        if self.wanted and not self.stopping:
            reap = self._reap()
            if reap is not None:
                wait = reap if wait is None else min(wait, reap)
        return wait

    # -- workers ---------------------------------------------------------------

    def _start_worker(self, ctx: Any = None) -> None:
        if self.killing or self.broken is not None:
            return
        if not self.free_slots:
            # Every slot is held by a worker that retired but whose exit is not
            # seen yet (workers retiring after every task or two): this one
            # starts when one of them is gone (_on_exit), or killed (_reap).
            self.wanted += 1
            return
        ctx = ctx or self.ctx
        slot = self.free_slots.pop()
        parent_sock, child_sock = socket.socketpair()
        fault_r, fault_w = ctx.Pipe(duplex=False)
        name = f"process-{next(self.names)}"
        cfg = pickle.dumps({
            "index": slot,
            "parent_pid": os.getpid(),
            "sys_path": list(sys.path),
            "initializer": self.init_bytes,
            "mode": self.mode,
            "concurrency": self.config.concurrency or 1000,
            "max_memory": self.config.max_memory_per_worker,
        }, PROTOCOL)
        proc = ctx.Process(
            target=worker_main, args=(child_sock, fault_w, self.slots, cfg),
            name=mainguard.WORKER_PREFIX + name, daemon=False,
        )
        proc.start()
        child_sock.close()
        fault_w.close()
        parent_sock.setblocking(False)
        os.set_blocking(fault_r.fileno(), False)
        w = _Worker(slot, name, proc, parent_sock, fault_r, self.dispatch.stats.worker(name))
        self.workers[slot] = w
        self.selector.register(parent_sock, selectors.EVENT_READ, ("chan", w))
        self.selector.register(proc.sentinel, selectors.EVENT_READ, ("exit", w))

    def _retire(self, w: _Worker) -> None:
        w.retiring = True
        w.retired_at = time.monotonic()
        self._send(w, (STOP,))
        if not self.stopping:
            self._start_worker()

    def _reap(self) -> float | None:
        """Kill retired workers that do not exit while a replacement waits for their slot.

        A worker exits once told to stop, unless a task left something that
        holds it (a non-daemon thread, an ``atexit`` handler that hangs): its
        slot would never come back, and with every slot so held no worker
        would be left to run the pending tasks.  Returns how long until the
        next one is due.
        """
        now = time.monotonic()
        soonest: float | None = None
        for w in self.workers.values():
            if not w.retiring or w.killed is not None or not w.retired_at:
                continue
            left = w.retired_at + STOP_GRACE - now
            if left <= 0:
                log.warning("anypool: retired worker %s (pid %s) did not exit within %s s; killing it",
                            w.name, w.pid, STOP_GRACE)
                w.killed = ("kill",)
                _kill_group(w.pid)
            else:
                soonest = left if soonest is None else min(soonest, left)
        return soonest

    def _stop_idle_workers(self) -> None:
        now = time.monotonic()
        if self.stop_deadline is None:
            self.stop_deadline = now + STOP_GRACE
        for w in list(self.workers.values()):
            if (not w.retiring and not w.inflight and w.ready) or (not w.ready and not w.retiring):
                w.retiring = True
                self._send(w, (STOP,))
        if now > self.stop_deadline:
            for w in list(self.workers.values()):
                _kill_group(w.pid)

    def _on_exit(self, w: _Worker) -> None:
        """A worker's process ended: collect what it sent, settle its tasks, replace it."""
        if w.slot not in self.workers:
            return
        self._read(w, final=True)
        w.proc.join(1.0)
        code = w.proc.exitcode
        del self.workers[w.slot]
        for obj in (w.sock, w.proc.sentinel):
            try:
                self.selector.unregister(obj)
            except (KeyError, ValueError):
                pass
        fault = _drain(w.fault)
        w.sock.close()
        w.fault.close()
        w.proc.close()
        self.dispatch.stats.worker_gone(w.name)
        expected = w.retiring or w.killed is not None
        if not w.ready and not expected and code == mainguard.EXIT_CODE:
            self._break(BrokenPool(mainguard.worker_exit_message()))
        elif not w.ready and not expected:
            self.startup_failures += 1
            log.warning("anypool: worker %s (pid %s) %s during start-up", w.name, w.pid, describe_exit(code))
            if self.startup_failures >= STARTUP_FAILURES:
                self._break(BrokenPool(
                    f"worker processes keep dying during start-up (the last one {describe_exit(code)})"
                    + (f"; its last output:\n{fault}" if fault else "")))
        if w.inflight:
            self._settle_lost(w, code, fault)  # reads the slot: free it only afterwards
        elif not expected and w.ready:
            log.warning("anypool: idle worker %s (pid %s) %s", w.name, w.pid, describe_exit(code))
        self.slots[w.slot * SLOT_WIDTH] = IDLE
        self.free_slots.append(w.slot)
        if not self.stopping and self.broken is None:
            # its replacement (a retired worker's was started, or deferred, when it retired)
            # and the starts deferred for want of a slot: those beyond the free slots wait again
            starts = self.wanted + (0 if w.retiring else 1)
            self.wanted = 0
            for _ in range(starts):
                self._start_worker()

    def _settle_lost(self, w: _Worker, code: int | None, fault: str) -> None:
        """Decide what happened to every task a dead worker held."""
        killed = w.killed
        wires = list(w.inflight)
        w.inflight.clear()
        w.inflight_items = 0
        now = time.time()
        if killed is not None and killed[0] == "kill":
            self._settle_killed(w, wires, now)
            return
        if self.mode == "async":
            self._settle_lost_async(w, wires, code, fault, now)
            return
        first, rest = wires[0], wires[1:]
        for wire in rest:  # never started: hand back untouched
            for task in wire.units:
                self.dispatch.requeue(task)
        base = w.slot * SLOT_WIDTH
        if self.slots[base] != first.id:
            for task in first.units:  # never started either
                self.dispatch.requeue(task)
            return
        culprit: int | None = int(self.slots[base + 1])
        if killed is not None and killed[0] == "timeout" and killed[1] == first.id:
            culprit = killed[2]
        if culprit is None or culprit < 0:
            # died somewhere in a batch run without per-item marks: if one item
            # is left it was that one; else re-run them one by one, so the one
            # that crashes does so alone and is blamed
            culprit = first.delivered if first.n - first.delivered == 1 else None
        if culprit is None:
            log.warning("anypool: worker %s (pid %s) %s during a batch of %d tasks; "
                        "re-running them one at a time", w.name, w.pid, describe_exit(code), first.n)

        def failure(task: Task) -> Failure:
            if killed is not None and killed[0] == "timeout":
                return Failure(TaskTimeout(first.timeout or 0.0, task.label()), "timeout")
            return Failure(WorkerCrashed(_crash_message(w, code, fault, task.label()), code, w.pid), "crash")

        start = self.slots[base + 2] or first.started
        self._settle_started(w, first, culprit, failure, start, now)

    def _settle_lost_async(self, w: _Worker, wires: list[_Wire], code: int | None, fault: str,
                           now: float) -> None:
        """Settle the coroutines of a dead process+async worker.

        The worker names in its slot the coroutine whose step holds its loop
        (see ``worker._Marked``).  If one did when it died, that one is blamed
        (one attempt, as on ``process``) and the others, which only shared its
        process, run again without losing an attempt.  A timeout kill blames
        the coroutines it named.  A death between steps (killed from outside,
        the OOM killer, a thread's crash) names nobody: every coroutine it held
        fails, each counting an attempt, so retries re-run them and a cause
        that keeps coming back cannot re-run them for ever.
        """
        killed = w.killed
        base = w.slot * SLOT_WIDTH
        timed_out = killed is not None and killed[0] == "timeout"
        blamed: set[tuple[int, int]] | None
        if timed_out:
            assert killed is not None
            blamed = killed[1]
        elif self.slots[base] != IDLE:
            blamed = {(int(self.slots[base]), int(self.slots[base + 1]))}
        else:
            blamed = None
        held = sum(wire.remaining for wire in wires)

        def failure(wire: _Wire, task: Task) -> Failure:
            if timed_out:
                return Failure(TaskTimeout(wire.timeout or 0.0, task.label()), "timeout")
            what = task.label()
            if blamed is None:
                what += (f" (one of the {held} coroutines it held; none of them was running a step"
                         " when it died, so none could be blamed)")
            return Failure(WorkerCrashed(_crash_message(w, code, fault, what), code, w.pid), "crash")

        for wire in wires:
            results = wire.results
            assert results is not None
            pos = 0
            for task in wire.units:
                n = len(task.items)
                lo = pos
                pos += n
                # split the unit into runs: reported, blamed, or to run again
                i = 0
                while i < n:
                    r = results[lo + i]
                    if r is not _MISSING:
                        j = i + 1
                        while j < n and results[lo + j] is not _MISSING:
                            j += 1
                        if task.future is None:  # a map batch: settle what came back
                            res = results[lo + i:lo + j]
                            failed = [k for k, x in enumerate(res) if type(x) is Failure] or None
                            self.dispatch.finish(task.subtask(i, task.items[i:j]), res, wire.started, now,
                                                 w.ws, failed)
                        i = j
                    elif blamed is None or (wire.id, lo + i) in blamed:
                        part = task if n == 1 else task.subtask(i, [task.items[i]])
                        self.dispatch.finish(part, [failure(wire, part)], wire.started, now, w.ws, [0])
                        i += 1
                    else:
                        j = i + 1
                        while (j < n and results[lo + j] is _MISSING
                               and (wire.id, lo + j) not in blamed):
                            j += 1
                        self.dispatch.requeue(task if j - i == n else task.subtask(i, task.items[i:j]))
                        i = j

    def _settle_killed(self, w: _Worker, wires: list[_Wire], now: float) -> None:
        """Fail the tasks of a worker killed by ``shutdown(kill=True)``.

        What was running is an attempt on that worker, killed (the job log
        records it so); what had not started never ran, as if cancelled.
        """
        exc = PoolClosed("the pool was shut down with kill=True while this task ran")

        def unrun(task: Task) -> None:
            self.dispatch.fail_unrun(task, exc, "cancelled")

        base = w.slot * SLOT_WIDTH
        for k, wire in enumerate(wires):
            if self.mode == "async":  # every coroutine in the process was running
                for task in wire.units:
                    self._fail_items(task, exc, "cancelled", w.ws, wire, now)
            elif k == 0 and self.slots[base] == wire.id:
                running = int(self.slots[base + 1])  # -1: the wire does not mark its items
                culprit = running if running >= 0 else wire.delivered  # unmarked: the first unreported
                start = self.slots[base + 2] or wire.started
                self._settle_started(w, wire, culprit, lambda _: Failure(exc, "cancelled"), start, now, unrun)
            else:
                for task in wire.units:
                    unrun(task)

    def _settle_started(self, w: _Worker, wire: _Wire, culprit: int | None, failure: Any, start: float,
                        now: float, others: Callable[[Task], None] | None = None) -> None:
        """Split a started wire of a dead sync worker: what came back, the culprit, the rest.

        Items report in order, so ``wire.delivered`` items (a prefix) are done.
        Between them and the culprit, items finished but their results died
        with the worker: they run again.  After the culprit, nothing started.
        ``others`` takes the items other than the culprit (default: run again).
        """
        others = others or self.dispatch.requeue
        d = wire.delivered
        pos = 0
        for task in wire.units:
            n = len(task.items)
            lo = pos
            pos += n
            if pos <= d:
                continue  # a single call already finished and settled
            a = max(d - lo, 0)  # first item of this unit not yet reported
            if a > 0:  # a map batch reported in part: settle that part now
                assert wire.results is not None
                res = wire.results[lo:lo + a]
                failed = [i for i, r in enumerate(res) if type(r) is Failure] or None
                self.dispatch.finish(task.subtask(0, task.items[:a]), res, wire.started, now, w.ws, failed)
            if culprit is None:
                for i in range(a, n):
                    others(task if n == 1 else task.subtask(i, [task.items[i]]))
                continue
            c = culprit - lo
            if not a <= c < n:
                others(task if a == 0 else task.subtask(a, task.items[a:]))
                continue
            if c > a:
                others(task.subtask(a, task.items[a:c]))
            blamed = task if n == 1 else task.subtask(c, [task.items[c]])
            self.dispatch.finish(blamed, [failure(blamed)], start, now, w.ws, [0])
            if c + 1 < n:
                others(task.subtask(c + 1, task.items[c + 1:]))

    def _fail_items(self, task: Task, exc: BaseException, kind: str, ws: WorkerStats,
                    wire: _Wire, now: float) -> None:
        n = len(task.items)
        if wire.results is not None and task.future is None:
            # process+async map batch: keep the items that already came back
            off = 0
            for t in wire.units:
                if t is task:
                    break
                off += len(t.items)
            results = wire.results[off:off + n]
            failed = [i for i, r in enumerate(results) if r is _MISSING or type(r) is Failure]
            for i in failed:
                if results[i] is _MISSING:
                    results[i] = Failure(exc, kind)
            self.dispatch.finish(task, results, wire.started, now, ws, failed)
            return
        self.dispatch.finish(task, [Failure(exc, kind) for _ in range(n)], wire.started, now, ws,
                             list(range(n)))

    # -- sending ---------------------------------------------------------------

    def _send(self, w: _Worker, msg: tuple[Any, ...]) -> None:
        w.writer.put(pickle.dumps(msg, PROTOCOL))
        self._flush(w)

    def _flush(self, w: _Worker) -> None:
        try:
            done = w.writer.flush()
        except OSError:
            done = True  # the worker is gone; its sentinel will tell
        try:
            self.selector.modify(w.sock, selectors.EVENT_READ | (0 if done else selectors.EVENT_WRITE),
                                 ("chan", w))
        except (KeyError, ValueError):
            pass

    def _room(self, w: _Worker) -> bool:
        if not w.ready or w.retiring or w.killed is not None:
            return False
        limit = self.config.max_tasks_per_worker
        memory = self.config.max_memory_per_worker
        if w.inflight and memory is not None and w.rss > memory:
            return False  # too big: let it go idle, so that _maybe_retire can replace it
        # nothing more once its tasks reach the limit: it retires when they are done
        if limit is not None and w.tasks_done + w.inflight_items >= limit:
            return False
        if self.mode == "async":
            return w.inflight_items < (self.config.concurrency or 1000)
        if not w.inflight:
            return True
        if len(w.inflight) >= 2:
            return False
        cost = self.cost.get(w.inflight[0].fn_id)
        return cost is not None and cost * w.inflight[0].n < PREFETCH_BELOW

    def _assign(self) -> None:
        pending = self.pending
        while pending:
            idle = [w for w in self.workers.values() if self._room(w)]
            if self.backend.lent:
                # a worker's share is lent (auto's probe still runs a task): a
                # worker with nothing in flight may start only while fewer than
                # n - lent run; a busy one may still take its next batch
                busy = sum(1 for w in self.workers.values() if w.inflight)
                free = self.n - self.backend.lent - busy
                idle = [w for w in idle if w.inflight or (free := free - 1) >= 0]
            if not idle:
                return
            idle.sort(key=lambda w: w.inflight_items)
            for w in idle:
                if not pending:
                    return
                wire = self._next_wire(w)
                if wire is None:
                    continue
                self._send_wire(w, wire)

    def _next_wire(self, w: _Worker) -> _Wire | None:
        pending = self.pending
        while pending:
            task = pending.popleft()
            if task.claim():
                break
            self.dispatch.discard(task)
        else:
            return None
        fn_id = task.payload[0]
        timeout = task.options.timeout
        units = [task]
        if task.future is not None:
            if pending:
                units.extend(self._coalesce(w, task, fn_id, timeout))
        elif self.config.max_tasks_per_worker is not None:
            left = self.config.max_tasks_per_worker - w.tasks_done - w.inflight_items  # >= 1: _room
            if len(task.items) > left:
                units = [self._cut(task, left)]
        return _Wire(next(self.wire_ids), units, fn_id, timeout)

    def _cut(self, task: Task, k: int) -> Task:
        """The first ``k`` items of map batch ``task``, to send now; the rest go back first in line."""
        head = task.subtask(0, task.items[:k])
        try:
            self.backend.prepare(head)
        except Exception:
            # the items pickled as one batch but not in part (a __reduce__ that
            # changes its mind): send them whole, past the limit, rather than lose them
            return task
        self._put_back([task.subtask(k, task.items[k:])])
        return head

    def _put_back(self, tasks: list[Task]) -> None:
        """Hand ``tasks`` (claimed, never started) back to the head of ``pending``, in order."""
        for task in reversed(tasks):
            try:
                self.backend.prepare(task)  # a map batch's part: its items pickled anew
            except Exception as exc:
                self.dispatch.fail_unrun(task, exc, "unsendable")
                continue
            self.pending.appendleft(task)

    def _coalesce(self, w: _Worker, first: Task, fn_id: int, timeout: float | None) -> list[Task]:
        """More single calls of the same callable and options for the same message."""
        pending = self.pending
        cost = self.cost.get(fn_id)
        if cost is None:
            return []
        room = max(1, len(pending) // max(1, len(self.workers)))
        limit = min(MAX_COALESCE, room, max(1, int(self.backend.batch_seconds / max(cost, 1e-7))) - 1)
        if self.mode == "async":
            limit = min(limit, (self.config.concurrency or 1000) - w.inflight_items - 1)
        if self.config.max_tasks_per_worker is not None:
            limit = min(limit, self.config.max_tasks_per_worker - w.tasks_done - w.inflight_items - 1)
        out: list[Task] = []
        while len(out) < limit and pending:
            nxt = pending[0]
            if (nxt.future is None or nxt.payload[0] != fn_id or nxt.options.timeout != timeout
                    or nxt.options is not first.options):
                break
            pending.popleft()
            if nxt.claim():
                out.append(nxt)
            else:
                self.dispatch.discard(nxt)
        return out

    def _send_wire(self, w: _Worker, wire: _Wire) -> None:
        first = wire.units[0]
        fn_id, fn_bytes, blobs, payload, _shared = first.payload
        if fn_id in w.fns:
            w.fns.move_to_end(fn_id)
            fn_bytes = None
        else:
            w.fns[fn_id] = None
            if len(w.fns) > FN_CACHE:
                w.fns.popitem(last=False)
        if len(wire.units) > 1:
            payload = [t.payload[3][0] for t in wire.units]
        per_item = first.style == CALL or wire.timeout is not None
        if self.mode == "async" or per_item:
            wire.results = [_MISSING] * wire.n
        msg = (TASK, wire.id, fn_id, fn_bytes, first.style, wire.timeout, per_item, blobs, wire.n, payload)
        w.inflight.append(wire)
        w.inflight_items += wire.n
        wire.started = time.time()
        if self.dispatch.observing:
            for t in wire.units:
                self.dispatch.started(t, w.ws)
        self._send(w, msg)

    # -- receiving ---------------------------------------------------------------

    def _read(self, w: _Worker, final: bool = False) -> None:
        try:
            frames = w.reader.read()
        except OSError:
            frames = []
        for frame in frames:
            head, view, at = reply_head(frame)
            msg = pickle.loads(head)  # plain data, always loadable
            tag = msg[0]
            if tag == RESULT:
                self._on_result(w, msg, view[at:])
            elif tag == PARTIAL:
                self._on_partial(w, msg, view, at)
            elif tag == READY:
                w.ready = True
                self.startup_failures = 0
            elif tag == INIT_FAILED:
                cause = unpack_exception(msg[1])
                err = InitializerFailed(f"the worker initializer raised {cause!r}; the pool cannot run tasks")
                err.__cause__ = cause
                self._break(err)
            elif tag == UNRUN:
                self._on_unrun(w, msg)
        if w.reader.eof and not final:
            try:
                self.selector.unregister(w.sock)
            except (KeyError, ValueError):
                pass

    def _on_result(self, w: _Worker, msg: tuple[Any, ...], body: memoryview) -> None:
        _, wire_id, failed, t0, t1, rss = msg
        wire = w.inflight.popleft()
        assert wire.id == wire_id, (wire.id, wire_id)
        w.inflight_items -= wire.n
        w.tasks_done += wire.n
        w.rss = rss
        try:
            results = pickle.loads(body)
        except BaseException as exc:  # the batch's results, all in one pickle: all fail
            results = [_unloadable(exc, wire.n)] * wire.n
            failed = list(range(wire.n))
        else:
            for i in failed or ():
                f = results[i]
                results[i] = Failure(unpack_exception(f.exc), f.kind)
        per_item = (t1 - t0) / wire.n
        prev = self.cost.get(wire.fn_id)
        self.cost[wire.fn_id] = per_item if prev is None else 0.8 * prev + 0.2 * per_item
        units = wire.units
        if len(units) == 1:
            self.dispatch.finish(units[0], results, t0, t1, w.ws, failed)
        else:  # single calls whose callable failed to load: all fail alike
            for k, task in enumerate(units):
                self.dispatch.finish_one(task, results[k], t0, t1, w.ws)
        self._maybe_retire(w)

    def _on_partial(self, w: _Worker, msg: tuple[Any, ...], frame: memoryview, at: int) -> None:
        _, items, rss = msg
        w.rss = rss
        by_id = {wire.id: wire for wire in w.inflight}
        for wire_id, index, bad, s, e, size in items:
            try:
                result = pickle.loads(frame[at:at + size])
            except BaseException as exc:
                result, bad = _unloadable(exc), False
            at += size
            wire = by_id.get(wire_id)
            if wire is None:
                continue
            if bad:
                result = Failure(unpack_exception(result.exc), result.kind)
                if result.kind == "timeout" and type(result.exc) is TaskTimeout and not result.exc.task:
                    result.exc.task = _item_label(wire, index)  # the worker knows no task numbers
            w.inflight_items -= 1
            w.tasks_done += 1
            wire.remaining -= 1
            wire.delivered += 1
            if self.mode != "async":
                prev = self.cost.get(wire.fn_id)
                self.cost[wire.fn_id] = (e - s) if prev is None else 0.8 * prev + 0.2 * (e - s)
            if len(wire.units) > 1 or wire.units[0].future is not None:
                # single calls: each finishes on its own (marked done: not re-run if its worker dies)
                self.dispatch.finish_one(wire.units[index], result, s, e, w.ws)
                if wire.results is not None:
                    wire.results[index] = None
            else:
                assert wire.results is not None
                wire.results[index] = result
            if wire.remaining == 0:
                w.inflight.remove(wire)
                if wire.units[0].future is None and len(wire.units) == 1:
                    res = wire.results or []
                    failed = [i for i, r in enumerate(res) if type(r) is Failure] or None
                    self.dispatch.finish(wire.units[0], res, wire.started, e, w.ws, failed)
        self._maybe_retire(w)

    def _on_unrun(self, w: _Worker, msg: tuple[Any, ...]) -> None:
        """A worker past ``max_memory_per_worker`` hands back a wire's items from ``ran`` on.

        The wire shrinks to its first ``ran`` items (their report follows);
        the others go back first in line, for another worker.
        """
        _, wire_id, ran, rss = msg
        w.rss = rss
        wire = next((x for x in w.inflight if x.id == wire_id), None)
        if wire is None:
            return
        keep: list[Task] = []
        back: list[Task] = []
        pos = 0
        for task in wire.units:  # several single calls, or one map batch
            n = len(task.items)
            if pos >= ran:
                back.append(task)
            elif pos + n <= ran:
                keep.append(task)
            else:
                keep.append(task.head(ran - pos))
                back.append(task.subtask(ran - pos, task.items[ran - pos:]))
            pos += n
        dropped = wire.n - ran
        wire.units = keep
        wire.n = ran
        wire.remaining -= dropped
        if wire.results is not None:
            del wire.results[ran:]
        w.inflight_items -= dropped
        if not ran:
            w.inflight.remove(wire)
        self._put_back(back)
        if not ran:
            self._maybe_retire(w)

    def _maybe_retire(self, w: _Worker) -> None:
        if w.retiring or self.stopping:
            return
        cfg = self.config
        used_up = cfg.max_tasks_per_worker is not None and w.tasks_done >= cfg.max_tasks_per_worker
        too_big = cfg.max_memory_per_worker is not None and w.rss > cfg.max_memory_per_worker
        if (used_up or too_big) and not w.inflight:
            self._retire(w)

    # -- deadlines ---------------------------------------------------------------

    def _check_deadlines(self) -> float | None:
        if self.mode == "async":
            wait = self._check_async_deadlines()
            if self.stopping:
                wait = 1.0 if wait is None else min(wait, 1.0)
            return wait
        now = time.time()
        soonest: float | None = None
        slots = self.slots
        for w in self.workers.values():
            if not w.inflight or w.killed is not None:
                continue
            wire = w.inflight[0]
            if wire.timeout is None:
                continue
            base = w.slot * SLOT_WIDTH
            if slots[base] != wire.id:
                left = wire.timeout  # not started yet: look again after a while
            else:
                start = slots[base + 2]
                index = int(slots[base + 1])
                left = start + wire.timeout - now
                if left <= 0:
                    w.killed = ("timeout", wire.id, max(index, 0))
                    _kill_group(w.pid)
                    continue
            soonest = left if soonest is None else min(soonest, left)
        if self.stopping:
            soonest = 0.5 if soonest is None else min(soonest, 0.5)
        return soonest

    def _check_async_deadlines(self) -> float | None:
        """Kill a process+async worker that did not stop a coroutine at its timeout.

        The worker cancels a coroutine at its deadline itself; it cannot when a
        coroutine blocks its loop (``time.sleep``, a C call that hangs), ignores
        its cancellation, or the process is stopped.  ``ASYNC_GRACE`` after the
        deadline the pool kills the process, as ``process`` kills a late task:
        the coroutine holding the loop (its slot, see ``worker._Marked``) fails
        with ``TaskTimeout`` if it is the late one; else every coroutine past
        its deadline does.  The others it held run again (``_settle_lost_async``).
        """
        now = time.time()
        soonest: float | None = None
        slots = self.slots
        for w in self.workers.values():
            if not w.inflight or w.killed is not None:
                continue
            base = w.slot * SLOT_WIDTH
            wire_id = slots[base]
            if wire_id != IDLE:
                index, start = int(slots[base + 1]), slots[base + 2]
                holder = next((x for x in w.inflight if x.id == wire_id), None)
                # the id read again, unchanged: index and start are of that wire's coroutine
                # holding the loop (at worst of one of its items that held it a moment ago)
                if holder is not None and holder.timeout is not None and slots[base] == wire_id:
                    left = start + holder.timeout + ASYNC_GRACE - now
                    if left <= 0:
                        w.killed = ("timeout", {(holder.id, index)})
                        _kill_group(w.pid)
                        continue
                    # The others wait behind it (they started no later than it did): their
                    # deadlines come first, but the blame is its own if it still holds the loop.
                    soonest = left if soonest is None else min(soonest, left)
                    continue
            late: set[tuple[int, int]] = set()
            for wire in w.inflight:
                if wire.timeout is None:
                    continue
                left = wire.started + wire.timeout + ASYNC_GRACE - now
                if left <= 0:
                    assert wire.results is not None
                    late.update((wire.id, k) for k, r in enumerate(wire.results) if r is _MISSING)
                else:
                    soonest = left if soonest is None else min(soonest, left)
            if late:
                w.killed = ("timeout", late)
                _kill_group(w.pid)
        return soonest

    # -- failure of the whole pool -------------------------------------------------

    def _break(self, err: BaseException) -> None:
        if self.broken is not None:
            return
        self.broken = err
        self.dispatch.broken(err)
        self.fail_pending(err, "unsendable")
        now = time.time()
        for w in list(self.workers.values()):
            for wire in w.inflight:
                for task in wire.units:
                    self._fail_items(task, err, "unsendable", w.ws, wire, now)
            w.inflight.clear()
            w.inflight_items = 0
            w.killed = ("kill",)
            _kill_group(w.pid)
        self.stopping = True

    def fail_pending(self, err: BaseException, kind: str) -> None:
        """Fail every task not yet sent (safe from any thread: each is popped once)."""
        while self.pending:
            task = self.pending.popleft()
            if task.future is not None and not task.claim():
                self.dispatch.discard(task)
                continue
            self.dispatch.fail_unrun(task, err, kind)

    def _close(self) -> None:
        for w in list(self.workers.values()):
            _kill_group(w.pid)
            w.proc.join(1.0)
        try:
            self.selector.close()
        finally:
            os.close(self.wake_r)
            with self.wake_lock:
                os.close(self.wake_w)
                self.wake_w = -1


def _doing(exc: BaseException) -> str:
    """What the manager was doing when ``exc`` ended it, from its innermost frame in this module."""
    tb, where = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == __file__:
            where = tb.tb_frame.f_code.co_name
        tb = tb.tb_next
    return "starting a worker process" if where == "_start_worker" else "running the pool"


class _Missing:
    __slots__ = ()


_MISSING: Any = _Missing()


def _item_label(wire: _Wire, index: int) -> str:
    """The label of item ``index`` of ``wire``, as ``Task.label`` gives it."""
    if len(wire.units) > 1 or wire.units[0].future is not None:
        return wire.units[index].label()
    task = wire.units[0]
    return task.label() if len(task.items) == 1 else task.subtask(index, [task.items[index]]).label()


def _kill_group(pid: int) -> None:
    """SIGKILL a worker and every process its tasks started.

    The worker leads its own process group, which ``killpg`` ends at once;
    a task's child that started a group or session of its own escapes that,
    so the worker's process tree is collected first (psutil) and killed too.
    """
    import psutil  # on the kill path only: timeouts, shutdown(kill=True)

    try:
        tree = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        tree = []
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for p in tree:
        try:
            p.kill()
        except psutil.Error:
            pass


def _drain(conn: Any) -> str:
    chunks = []
    try:
        while True:
            data = os.read(conn.fileno(), 65536)
            if not data:
                break
            chunks.append(data)
    except (BlockingIOError, OSError):
        pass
    return _last_words(b"".join(chunks).decode("utf-8", "replace").strip())


def _last_words(text: str, frames: int = 15) -> str:
    """The useful part of what a dead worker wrote to its fault pipe.

    A faulthandler dump lists every thread, innermost call first, and a
    worker forked from a deep stack inherits all of it: keep the error line,
    the crashing thread's innermost ``frames`` and the extension modules
    (a segfault's usual suspects).  Anything else: its last 25 lines.
    """
    lines = text.splitlines()
    errors = [ln for ln in lines if ln.startswith("Fatal Python error")]
    current = next((i for i, ln in enumerate(lines) if ln.startswith("Current thread")), None)
    if not errors or current is None:
        return "\n".join(lines[-25:])
    block = [lines[current]]
    for ln in lines[current + 1:]:
        if not ln.startswith("  "):
            break
        block.append(ln)
    if len(block) > frames + 1:
        block = [*block[:frames + 1], f"  ... ({len(block) - frames - 1} outer frames left out)"]
    modules = [ln for ln in lines if ln.startswith("Extension modules")]
    return "\n".join([*errors, "", *block, *(["", *modules] if modules else [])])


_HINTS = {
    -signal.SIGKILL: " (killed from outside the pool, or by the kernel's OOM killer when memory ran out)",
    -signal.SIGSEGV: " (a segmentation fault, usually in a C extension or ctypes)",
    -signal.SIGBUS: " (a bus error, usually a memory-mapped file that shrank)",
    -signal.SIGABRT: " (an abort, usually a failed assertion in C code)",
}


def _crash_message(w: _Worker, code: int | None, fault: str, what: str) -> str:
    hint = _HINTS.get(code or 0, "")
    if code is not None and code >= 0:  # 0 too: a worker never exits by itself while it holds tasks
        hint = " (os._exit() or a C library exiting the process)"
    msg = f"worker {w.name} (pid {w.pid}) {describe_exit(code)}{hint} while running {what}"
    if fault:
        msg += f"; its last words:\n{fault}"
    return msg


def _unloadable(exc: BaseException, batch: int = 1) -> Failure:
    """The failure of a task whose result came back but cannot be unpickled here."""
    whose = "the task's result" if batch == 1 else f"a result of this map batch (of {batch} items)"
    return Failure(TaskError(type(exc).__name__, f"{whose} could not be loaded in the pool: {exc}"))
