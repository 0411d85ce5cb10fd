"""The ``dask`` backend: tasks on a Dask cluster, with the core's policy on top.

``Pool(backend="dask", address="tcp://host:8786")`` runs tasks on an
existing cluster; with no ``address`` the pool starts a ``LocalCluster`` of
its own (one single-threaded worker process per core, every socket on
127.0.0.1) and closes it with the pool.  Dask does the distributing; the
core does what it does for every backend: retries, ordering, map windows,
statistics, events.

::

    submit/map ──Task──> pending ──┐        one "anypool-dask" thread per pool
                                   ├─ client.map(run_task, ...)  (at most `limit` in flight)
    Dask done callback ──> done ───┤                 │
    "started" events ───> notes ───┤   scheduler ──> worker thread: run_task (dask_worker.py)
    clock (deadlines) ──> notes ───┘                 │
                                   └─ client.gather(done) ──> dispatch.finish

A ``Task`` (one ``submit`` call, or a batch of ``map`` items) is one Dask
task: the worker side, :func:`~anypool.backends.dask_worker.run_task`, runs
the items and returns the results, which ones failed, the batch's timing and
the worker's name.  Dask spends about 2 ms on each task, so cheap work is
grouped: ``map`` items in batches sized by the core, and consecutive
``submit`` calls of a callable measured cheap in *packs* (one Dask task,
each call still its own future).  Arguments are pickled in the caller's
thread, so one that cannot be sent fails in ``submit`` with the argument
named.

Bounded: a pool has at most a few Dask tasks per worker thread at the
scheduler (one running, and as many queued as fill about 50 ms of measured
task time, at most 32), or exactly ``workers`` when that is given for an
existing cluster (its share); the rest wait here, where ``cancel()`` and
``shutdown(cancel_futures=True)`` can still drop them.

Failures, translated at this boundary:

* a task's own exception comes back as itself, its worker traceback chained;
* ``KilledWorker`` (the worker running the task died) becomes
  :class:`~anypool.WorkerCrashed` for a single task heard to start (every
  task announces its start, a Dask event), which the core retries if
  ``retries=`` allows.  Dask reports ``KilledWorker`` for the tasks merely
  queued on that worker too: one never heard to start is sent again, not
  counted as an attempt, and alone (nothing else of the pool's on the
  cluster meanwhile), since one that ended its process at once had no time
  to announce itself; lost again when alone, it is the one that kills its
  worker and fails with ``WorkerCrashed``.  A batch of ``map`` items or a pack of calls that
  lost its worker is run again in smaller pieces (which item killed the
  worker is unknown), so an item that kills its worker by itself ends up
  failing alone;
* a failed ``initializer`` breaks the pool (:class:`~anypool.InitializerFailed`).

A lost scheduler: Dask's client reconnects by itself (to a new scheduler at
the same address), but a scheduler keeps worker plugins and event
subscriptions in memory only and the client restores neither.  The pool
notices the new scheduler (its id changed), by its periodic look at the
cluster or when a task comes back ``UNSET`` (no setup on its worker), and
installs itself again: the worker setup (so the initializer runs on the new
workers) and the "started" subscription (timeouts, observers).  An ``UNSET``
task ran nothing, so it is sent again, not counted as an attempt.

Timeouts: a Dask worker runs tasks in threads, and a running thread cannot
be stopped.  Every task announces its start (a Dask event); with
``timeout=`` the pool starts the clock then, and when it runs out the task fails with
:class:`~anypool.TaskTimeout` on time, its Dask future is cancelled (so it
never starts if it had not) and a retry may start elsewhere, but the call
itself runs on in its worker thread until it returns, its result discarded.
``can_kill`` is False for that reason.

Retries and Dask's own: a scheduler retries a task whose worker died up to
its ``distributed.scheduler.allowed-failures`` times (3 by default) before
reporting ``KilledWorker``.  The embedded cluster sets it to 0, so the
pool's ``retries=`` is the whole policy, as on the other backends; an
existing cluster keeps its own setting (docs/dask.md).
"""

from __future__ import annotations

import concurrent.futures.thread
import inspect
import itertools
import logging
import math
import re
import threading
import time
import traceback
import types
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import distributed
from distributed import KilledWorker
from distributed.client import FutureCancelledError

from .. import clock, mainguard
from ..dispatch import fn_name, serve
from ..errors import (
    BrokenPool,
    InitializerFailed,
    PoolClosed,
    SerializationError,
    TaskError,
    TaskTimeout,
    WorkerCrashed,
    add_note,
)
from ..serialize import (
    RemoteTraceback,
    dumps,
    dumps_callable,
    dumps_initializer,
    explain_args,
    explain_item,
    unpack_exception,
)
from ..tasks import Failure, Task
from .base import Backend, BackendConfig, default_workers
from .dask_worker import ALL, BROKEN, STARTED_TOPIC, UNSET, WorkerSetup, run_task, worker_name

if TYPE_CHECKING:
    from ..dispatch import Dispatch
    from ..stats import WorkerStats

__all__ = ["DaskBackend"]

# distributed is only partly annotated: its client and cluster are used as Any
Client: Any = distributed.Client
LocalCluster: Any = distributed.LocalCluster

log = logging.getLogger("anypool")

OPTIONS = ("security", "connect_timeout")
"""The backend options ``Pool(backend="dask", ...)`` takes besides the common ones."""

_FN_CACHE = 256  # callables whose pickles are kept, so repeated submits pickle them once
_SPLIT = 8  # a batch that lost its worker is run again as this many pieces
_REFRESH = 2.0  # seconds between looks at the cluster's size (workers come and go)
_QUEUED_SECONDS = 0.05  # work queued at the scheduler behind each busy thread, in measured task time
_MAX_AHEAD = 32  # Dask tasks queued per thread at most (the scheduler's memory, cancellability)
_MAX_PACK = 256  # submit() calls packed into one Dask task at most
_CONNECT_GRACE = 1.0  # seconds allowed past the connect timeout before the pool gives up itself
_MAX_UNSET = 5  # times a task may come back UNSET (no setup on its worker) before it fails


class _Sent:
    """A Dask task in flight (owned by the pool's thread, guarded by its lock).

    It runs ``task`` (one call, or a batch of map items), or, when ``pack``
    is set, several single calls packed into one Dask task (``task`` is the
    first of them).
    """

    __slots__ = ("alone", "deadline", "future", "pack", "sent", "started", "task", "unset", "worker")

    def __init__(self, task: Task, future: Any, pack: list[Task] | None = None) -> None:
        self.task = task
        self.pack = pack
        self.future = future
        self.sent = time.time()
        self.started: float | None = None
        self.worker: str | None = None
        self.deadline: clock.Handle | None = None
        self.unset = 0  # how many times its tasks came back UNSET before (see DaskBackend._on_unset)
        self.alone = False  # a suspect, sent with nothing else of the pool's in flight

    @property
    def tasks(self) -> list[Task]:
        return self.pack or [self.task]


class DaskBackend(Backend):
    """Runs sync callables on a Dask cluster (see the module docstring).

    Raises (when the pool is created):
        TypeError: an unknown backend option, or ``address`` is not a string.
        ValueError: an option Dask cannot honour (``max_tasks_per_worker``,
            ``max_memory_per_worker``, ``start_method``).
        ConnectionError: the scheduler at ``address`` could not be reached, or
            what answers there is not a Dask scheduler.
        ValueError: ``address`` is malformed (no port, say).
        MainNotGuarded: a local cluster was asked for while this process is
            a worker process importing the main module (the missing
            ``if __name__ == "__main__":`` guard).
        RuntimeError: the local cluster did not start.
    """

    name = "dask"
    options = OPTIONS
    can_kill = False
    transports = True
    # ~2 ms of scheduling per Dask task on 2 cores (PEER-BASELINES.md): batches
    # of 50 ms keep that below 5 %.  The cap bounds how far a map reads ahead
    # (window x max_batch items), as on the process backend.
    batch_seconds = 0.05
    max_batch = 4096

    def __init__(self, config: BackendConfig, dispatch: Dispatch) -> None:
        super().__init__(config, dispatch)
        _check_config(config)
        extra = config.extra
        self._security = extra.get("security")
        self._connect_timeout = extra.get("connect_timeout")
        self._token = uuid.uuid4().hex[:16]
        self._plugin = f"anypool-{self._token}"
        self._keys = itertools.count(1)
        self._cond = threading.Condition(threading.Lock())
        self.pending: deque[Task] = deque()
        self._done: deque[Any] = deque()  # Dask futures whose state is final
        # ("started", key, worker name, worker address) | ("expired", key, "", "")
        self._notes: deque[tuple[str, str, str, str]] = deque()
        # worker address -> when a task of the pool's last started there (client clock)
        self._last_start: OrderedDict[str, float] = OrderedDict()
        self._sent: dict[str, _Sent] = {}  # Dask key -> what it runs
        self._fns: OrderedDict[Any, bytes] = OrderedDict()
        self._workers: dict[str, WorkerStats] = {}
        self._per_task: float | None = None  # moving average of one Dask task's run time
        self._cost: OrderedDict[bytes, float] = OrderedDict()  # callable's pickle -> seconds per call
        self._solo: set[int] = set()  # ids of calls whose pack lost its worker: never packed again
        self._unset: dict[int, int] = {}  # task id -> times it came back UNSET (sent again meanwhile)
        # ids of single calls whose worker died before they were heard to start: each is sent
        # again alone (see _on_error); _alone is the Dask key of the one in flight
        self._suspects: set[int] = set()
        self._alone: str | None = None
        self._scheduler_id: str | None = None  # the scheduler the pool installed itself on
        self._stopping = False
        self._closed = False
        self._broken: BaseException | None = None
        self._init_blob = dumps_initializer(config.initializer, config.initargs, "to Dask workers")
        self._cluster: Any = None
        _quiet_exit_noise()
        self._client: Any = self._connect()
        try:
            self._install(self._scheduler_info())
        except BaseException:
            self._close_client()
            raise
        self._sized = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="anypool-dask", daemon=True)
        self._thread.start()

    # -- connecting -------------------------------------------------------------

    def _connect(self) -> Any:
        address = self.config.address
        kwargs: dict[str, Any] = {"set_as_default": False}
        timeout = self._connect_timeout
        if timeout is None:
            timeout = _dask_connect_timeout()
        else:
            kwargs["timeout"] = timeout
        # Dask gives up on an unreachable address after `timeout` itself, with its own reason;
        # the limit only catches what it would wait for without end (a silent port)
        limit = timeout + _CONNECT_GRACE
        if address is None:
            self._cluster = self._start_cluster()
            try:
                return _open_client(self._cluster, kwargs, limit)
            except BaseException:
                self._cluster.close()
                raise
        if self._security is not None:
            kwargs["security"] = self._security
        elif address.startswith("tls://"):
            raise ValueError(
                f"the scheduler at {address!r} speaks TLS: pass security=distributed.Security(...) "
                "with the cluster's CA and a client certificate (docs/dask.md)"
            )
        try:
            return _open_client(address, kwargs, limit)
        except ValueError:  # a malformed address: Dask's message says what is wrong with it
            raise
        except TimeoutError as exc:
            raise ConnectionError(
                f"cannot connect to the Dask scheduler at {address!r}: no answer in {limit:g} s. Is "
                "this the scheduler's port (8786 by default), not its dashboard's (8787)?"
            ) from exc
        except OSError as exc:  # refused, unreachable
            raise ConnectionError(
                f"cannot connect to the Dask scheduler at {address!r}: {exc}. Is a scheduler "
                "running there (`dask scheduler`), and does the address include its port?"
            ) from exc
        except Exception as exc:  # something answers there, but not in Dask's protocol
            raise ConnectionError(
                f"cannot connect to the Dask scheduler at {address!r}: what answers there is not a "
                f"Dask scheduler ({type(exc).__name__}: {exc}). Is this the scheduler's port (8786 by "
                "default), not its dashboard's (8787) or another server's?"
            ) from exc

    def _start_cluster(self) -> Any:
        mainguard.check("a local Dask cluster (Pool(backend='dask') without an address)")
        n = self.config.workers or default_workers()
        kwargs: dict[str, Any] = {}
        if self._security is not None:
            kwargs["security"] = self._security
        try:
            return LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
                worker_dashboard_address="127.0.0.1:0",
                scheduler_kwargs={"allowed_failures": 0},
                **kwargs,
            )
        except Exception as exc:
            raise RuntimeError(
                f"could not start a local Dask cluster ({exc}). Its workers are new processes that "
                "import your main module: in a script, the code that creates the pool must be under "
                "`if __name__ == \"__main__\":`"
            ) from exc

    def _scheduler_info(self) -> Any:
        """The scheduler's identity (its id, the cluster's size), fetched now; learns the size."""
        info = self._client.scheduler_info(n_workers=0)
        self._threads = int(info.get("total_threads") or 0)
        return info

    def _install(self, info: Any) -> None:
        """Put the pool on the scheduler described by ``info``: its worker setup and event subscription.

        Run at start, and again on a new scheduler at the same address
        (Dask's client reconnected), which knows neither.  Registering the
        setup runs it on every worker (the initializer included) and waits
        for it.  The id is taken before registering: a scheduler replaced
        meanwhile shows as a change later, and the pool installs itself
        once more, rather than never.
        """
        self._scheduler_id = str(info.get("id"))
        self._client.register_plugin(WorkerSetup(self._init_blob), name=self._plugin)
        self._client.subscribe_topic(STARTED_TOPIC, self._on_started)

    def _reinstall_if_new(self, info: Any) -> None:
        """Install the pool again if ``info`` describes another scheduler than the one it is on.

        Nothing to do while the client is not connected: reconnecting, it
        still shows the old scheduler; closed (it gave up), it shows none,
        and :meth:`_check_cluster` reports the loss.
        """
        ident = info.get("id")
        if ident is None or str(ident) == self._scheduler_id or self._client.status != "running":
            return
        log.info("anypool: a new Dask scheduler at %s: installing the pool's worker setup there again",
                 self._where())
        try:
            self._install(info)
        except Exception:
            # that scheduler is gone too, or not ready: the next look or UNSET task tries again
            self._scheduler_id = None
            log.warning("anypool: could not install the pool on the new Dask scheduler at %s",
                        self._where(), exc_info=True)

    @property
    def workers(self) -> int:
        if self.config.workers:
            return self.config.workers
        return max(1, self._threads)

    def _limit(self) -> int:
        """How many Dask tasks this pool may have at the scheduler at once.

        One per worker thread, plus some queued behind each so no thread
        waits for the round trip to this client: as many as fill
        ``_QUEUED_SECONDS`` of measured task time, at most ``_MAX_AHEAD``.
        Slow tasks get one queued each, so they stay here, cancellable,
        until a thread is about to be free.
        """
        if self._cluster is None and self.config.workers:
            return self.config.workers  # a share of someone's cluster: a hard cap
        threads = max(1, self._threads)
        per = self._per_task
        if per is None or per >= _QUEUED_SECONDS:
            return 2 * threads
        return threads * (1 + min(_MAX_AHEAD, math.ceil(_QUEUED_SECONDS / per)))

    def _where(self) -> str:
        if self._cluster is not None:
            return f"local cluster {self._cluster.scheduler_address}"
        return str(self.config.address)

    def describe(self) -> str:
        if self._cluster is not None:
            return f"dask ({self._where()}, {self.workers} worker processes)"
        return f"dask ({self._where()}, {self.workers} threads)"

    # -- submitting -------------------------------------------------------------

    def submit(self, task: Task) -> None:
        if self._closed:
            raise PoolClosed("the dask backend is shut down")
        units = self._prepare(task) if task.payload is None else [task]
        with self._cond:
            self.pending.extend(units)
            self._cond.notify()

    def _fn_blob(self, fn: Callable[..., Any]) -> bytes:
        # Only a function is pickled once: anything with state of its own (a bound
        # method, a callable object, a partial) is pickled as it is at each submit,
        # as ProcessPoolExecutor does, so a change to that state reaches the next task.
        key: Any = fn if type(fn) in (types.FunctionType, types.BuiltinFunctionType) else None
        if key is not None:
            with self._cond:
                blob = self._fns.get(key)
                if blob is not None:
                    self._fns.move_to_end(key)
                    return blob
        if inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"the dask backend runs plain callables, and {fn_name(fn)} is a coroutine function: "
                "use backend='process+async', or call asyncio.run() inside a plain function"
            )
        blob = dumps_callable(fn)
        if key is not None:
            with self._cond:
                self._fns[key] = blob
                if len(self._fns) > _FN_CACHE:
                    self._fns.popitem(last=False)
        return blob

    def _prepare(self, task: Task) -> list[Task]:
        """Pickle ``task`` for the cluster; a timed batch becomes one unit per item.

        Raises:
            SerializationError: the callable or an argument cannot be pickled.
            TypeError: the callable is a coroutine function.
        """
        fn = self._fn_blob(task.fn)
        if task.future is not None:
            args, kwargs = task.items[0]
            try:
                task.payload = (fn, dumps(task.items))
            except (Exception, SystemExit) as exc:
                raise explain_args(args, kwargs or {}, exc) from exc
            return [task]
        # a deadline is per item, and a Dask task's start is only seen once: one item per task
        units = [task] if task.options.timeout is None or len(task.items) == 1 else [
            task.subtask(i, [item]) for i, item in enumerate(task.items)
        ]
        for unit in units:
            try:
                unit.payload = (fn, dumps(unit.items))
            except (Exception, SystemExit) as exc:
                if len(unit.items) == 1:
                    raise explain_item(unit.seq, unit.items[0], exc) from exc
                raise SerializationError(f"a batch of map items cannot be pickled: {exc}") from exc
        return units

    # -- the pool's thread ----------------------------------------------------------

    def _run(self) -> None:
        serve(self.dispatch)
        try:
            while True:
                with self._cond:
                    while not (self._done or self._notes or (self.pending and self._room() > 0)):
                        if self._stopping:
                            return
                        busy = self.pending or self._sent
                        if busy and time.monotonic() - self._sized > _REFRESH:
                            break  # look at the cluster: grown? still there?
                        self._cond.wait(_REFRESH if busy else None)
                    done, self._done = self._done, deque()
                    notes, self._notes = self._notes, deque()
                    sends = self._take_pending(self._room())
                for note in notes:
                    self._on_note(note)
                if done:
                    self._collect(done)
                    # drop the Dask futures now, not when the next batch replaces them, so the
                    # cluster frees their results (a local cluster closed at exit warns of any it holds)
                    done.clear()
                if sends:
                    self._send(sends)
                if time.monotonic() - self._sized > _REFRESH:
                    self._check_cluster()
        except BaseException as exc:  # a bug: fail what waits, refuse what comes
            log.exception("anypool: the dask backend's thread failed")
            self._lost(PoolClosed(f"the dask backend stopped: {exc!r}"))

    def _check_cluster(self) -> None:
        """Every ``_REFRESH`` seconds while busy: the cluster's size, and whether it is still there."""
        self._sized = time.monotonic()
        if self._client.status in ("closing", "closed"):
            # Dask gave up reconnecting: what it still holds will never be reported
            self._lost(BrokenPool(f"the pool lost its Dask scheduler ({self._where()}) and could "
                                  "not reconnect"))
            return
        try:
            info = self._scheduler_info()
        except Exception:  # keep the last size; a lost scheduler shows up on the tasks
            log.debug("anypool: could not read the Dask cluster's size", exc_info=True)
            return
        self._reinstall_if_new(info)

    def _room(self) -> int:
        """How many Dask tasks may be sent now (caller holds the lock).

        None while a suspect is in flight, and a suspect at the head of the
        queue waits until nothing of the pool's is in flight, so that if its
        worker dies again, it was the only task of the pool there.
        """
        if self._alone is not None:
            return 0
        if self.pending and self.pending[0].id in self._suspects:
            return 0 if self._sent else 1
        return self._limit() - len(self._sent)

    def _take_pending(self, room: int) -> list[list[Task]]:
        """Up to ``room`` Dask tasks' worth of pending work (caller holds the lock).

        Single calls of a cheap callable (its measured time per call well
        under ``batch_seconds``) go several to one Dask task, as ``map``
        items do, so Dask's per-task cost is paid once per pack.  A pack
        holds consecutive calls with the same callable and options, and is
        kept small enough to leave at least two packs per worker thread.
        """
        pending = self.pending
        units: list[list[Task]] = []
        while room > 0 and pending:
            if pending[0].id in self._suspects:
                if not units and not self._sent:
                    units.append([pending.popleft()])  # alone, see _room
                break
            first = pending.popleft()
            unit = [first]
            cost = self._cost.get(first.payload[0]) if first.future is not None else None
            if (cost is not None and pending and first.options.timeout is None
                    and first.id not in self._solo):
                fair = len(pending) // (2 * max(1, self._threads))
                limit = min(_MAX_PACK, fair, int(self.batch_seconds / max(cost, 1e-7)))
                fn_blob, options = first.payload[0], first.options
                while len(unit) < limit and pending:
                    nxt = pending[0]
                    if (nxt.future is None or nxt.payload[0] is not fn_blob or nxt.options is not options
                            or nxt.id in self._solo or nxt.id in self._suspects):
                        break
                    unit.append(pending.popleft())
            units.append(unit)
            room -= 1
        return units

    def _send(self, units: list[list[Task]]) -> None:
        claimed: list[list[Task]] = []
        for unit in units:
            mine = []
            for task in unit:
                if self._broken is not None:
                    self.dispatch.fail_unrun(task, self._broken)
                elif task.claim():
                    mine.append(task)
                else:
                    self.dispatch.discard(task)
            if mine:
                claimed.append(mine)
        if not claimed:
            return
        keys, fns, blobs, styles, announce = [], [], [], [], []
        for unit in claimed:
            task = unit[0]
            keys.append(f"{_key_name(task.fn)}-{self._token}-{next(self._keys)}")
            fn_blob, items_blob = task.payload
            fns.append(fn_blob)
            blobs.append(items_blob if len(unit) == 1 else [t.payload[1] for t in unit])
            styles.append(task.style)
            # always: a task lost with its worker before it was heard to start is sent again
            announce.append(self._token)
        try:
            futures = self._client.map(run_task, fns, blobs, styles, announce, key=keys,
                                       plugin=self._plugin, pure=False)
        except Exception as exc:
            for unit in claimed:
                for task in unit:
                    self.dispatch.fail_unrun(task, exc)
            if self._client.status in ("closing", "closed"):
                self._lost(BrokenPool(f"the pool lost its Dask scheduler ({self._where()}): {exc!r}"))
            return
        with self._cond:
            for key, unit, fut in zip(keys, claimed, futures, strict=True):
                rec = self._sent[key] = _Sent(unit[0], fut, unit if len(unit) > 1 else None)
                if len(unit) == 1 and unit[0].id in self._suspects:
                    rec.alone, self._alone = True, key
        for fut in futures:
            fut.add_done_callback(self._on_done)

    # -- hearing back -------------------------------------------------------------

    def _on_done(self, fut: Any) -> None:
        # on Dask's callback thread
        with self._cond:
            self._done.append(fut)
            self._cond.notify()

    def _on_started(self, event: tuple[float, Any]) -> None:
        # on the client's event loop: only hand over, never block it
        msg = event[1]
        if not isinstance(msg, (list, tuple)) or len(msg) != 4 or msg[0] != self._token:
            return  # another pool's task on the same cluster
        with self._cond:
            self._notes.append(("started", str(msg[1]), str(msg[2]), str(msg[3])))
            self._cond.notify()

    def _expired(self, key: str) -> None:
        # on the shared clock thread
        with self._cond:
            self._notes.append(("expired", key, "", ""))
            self._cond.notify()

    def _on_note(self, note: tuple[str, str, str, str]) -> None:
        kind, key, worker, address = note
        if kind == "started":
            with self._cond:
                rec = self._sent.get(key)
                if rec is None or rec.started is not None:
                    return  # already over
                rec.started, rec.worker = time.time(), worker
                self._last_start[address] = rec.started
                self._last_start.move_to_end(address)
                if len(self._last_start) > _FN_CACHE:
                    self._last_start.popitem(last=False)
                timeout = rec.task.options.timeout
                if timeout is not None and rec.pack is None:
                    rec.deadline = clock.call_later(timeout, self._expired, key)
            if self.dispatch.observing:
                ws = self._ws(worker)
                for task in rec.tasks:
                    self.dispatch.started(task, ws)
            return
        with self._cond:
            rec = self._sent.pop(key, None)
            if rec is not None and rec.alone:
                self._alone = None
                self._suspects.discard(rec.task.id)
        if rec is None:
            return  # it finished first
        task = rec.task
        exc = TaskTimeout(task.options.timeout or 0.0, task.label(), stopped=False)
        add_note(exc, "anypool: a Dask worker cannot stop a running task: it runs on in its worker "
                   "thread until it returns, and its result is discarded")
        rec.future.cancel()
        started = rec.started or rec.sent
        self.dispatch.finish(task, [Failure(exc, "timeout")], started, time.time(),
                             self._ws(rec.worker or "-"), [0])

    def _collect(self, futures: deque[Any]) -> None:
        # "lost": it finished, then the worker holding its result died; Dask
        # recomputes it for us, so it is fetched like the others (and waited for)
        ready = [f for f in futures if f.status not in ("error", "cancelled")]
        if ready:
            try:
                blobs = self._client.gather(ready)
            except Exception:  # one of them failed meanwhile: take them one by one
                blobs = None
            for i, fut in enumerate(ready):
                if blobs is None:
                    try:
                        blob = fut.result()
                    except BaseException as exc:
                        self._on_error(fut, exc)
                        continue
                else:
                    blob = blobs[i]
                self._on_result(fut.key, blob)
        for fut in futures:
            if fut.status == "cancelled":
                try:
                    fut.result()  # raises Dask's reason for the cancellation
                except BaseException as exc:
                    self._on_error(fut, exc)
                else:
                    self._on_error(fut, None)
            elif fut.status == "error":
                try:
                    error = fut.exception()
                except BaseException as exc:  # cancelled meanwhile
                    error = exc
                self._on_error(fut, error)

    def _take(self, key: str) -> _Sent | None:
        with self._cond:
            rec = self._sent.pop(key, None)
            if rec is not None and rec.alone:
                self._alone = None
                self._suspects.discard(rec.task.id)
        if rec is not None:
            if rec.deadline is not None:
                rec.deadline.cancel()
            if self._solo and rec.pack is None:
                self._solo.discard(rec.task.id)
            if self._unset:
                rec.unset = max(self._unset.pop(t.id, 0) for t in rec.tasks)
        return rec

    def _report(self, rec: _Sent, results: list[Any], failed: Sequence[int] | None,
                t0: float, t1: float, worker: str) -> None:
        """Hand every item's value or ``Failure`` to the dispatcher."""
        ws = self._ws(worker)
        if rec.pack is None:
            self.dispatch.finish(rec.task, results, t0, t1, ws, failed)
            return
        step = (t1 - t0) / len(rec.pack)  # the calls ran one after the other
        for i, task in enumerate(rec.pack):
            self.dispatch.finish_one(task, results[i], t0 + i * step, t0 + (i + 1) * step, ws)

    def _fail(self, rec: _Sent, exc: BaseException, kind: str, t0: float, t1: float,
              worker: str) -> None:
        """Fail every item ``rec`` ran with ``exc``."""
        n = sum(len(t.items) for t in rec.tasks)
        self._report(rec, [Failure(exc, kind) for _ in range(n)], range(n), t0, t1, worker)

    def _on_result(self, key: str, blob: bytes) -> None:
        rec = self._take(key)
        if rec is None:
            return  # timed out or killed already
        outcome = _loads(blob)
        kind = outcome[0]
        if kind == UNSET:
            self._on_unset(rec, outcome[1])
            return
        if kind == BROKEN:
            _, packed, worker = outcome
            cause = unpack_exception(packed)
            err = InitializerFailed(
                f"the worker initializer {self.config.initializer!r} raised {cause!r} on Dask worker {worker}"
            )
            err.__cause__ = cause
            self._break(err)
            for task in rec.tasks:
                self.dispatch.fail_unrun(task, err)
            return
        if kind == ALL:
            _, packed, t0, t1, worker = outcome
            self._fail(rec, unpack_exception(packed), "error", t0, t1, worker)
            return
        _, results, failed, t0, t1, worker = outcome
        self._measure(rec, len(results), t1 - t0)
        if failed:
            for i in failed:
                results[i] = Failure(unpack_exception(results[i]))
        self._report(rec, results, failed, t0, t1, worker)

    def _on_unset(self, rec: _Sent, worker: str) -> None:
        """``rec`` ran nothing: its worker has no setup of this pool (a new scheduler does not know it).

        Install the pool there if the scheduler is new and send the tasks
        again, not counted as an attempt.  A task that keeps finding no
        setup (``_MAX_UNSET`` times) fails with ``WorkerCrashed``, which
        ``retries=`` may retry, rather than going round for ever.
        """
        try:
            self._reinstall_if_new(self._scheduler_info())
        except Exception:  # no scheduler now: the task goes back, and the next look decides
            log.debug("anypool: could not read the Dask scheduler's identity", exc_info=True)
        tries = rec.unset + 1
        if tries >= _MAX_UNSET:
            now = time.time()
            err = WorkerCrashed(
                f"anypool's worker setup is missing on Dask worker {worker}, {tries} times for "
                f"{rec.task.label()}: the pool could not install itself on the scheduler at {self._where()}"
            )
            self._fail(rec, err, "crash", rec.started or rec.sent, now, worker)
            return
        log.debug("anypool: no worker setup on Dask worker %s for %s: sending it again",
                  worker, rec.task.label())
        with self._cond:
            for task in rec.tasks:
                self._unset[task.id] = tries
            self.pending.extendleft(reversed(rec.tasks))
            self._cond.notify()

    def _measure(self, rec: _Sent, items: int, took: float) -> None:
        """Learn how long a Dask task, and one call of its callable, take (for limits and packs)."""
        took = max(took, 1e-7)
        per = self._per_task
        self._per_task = took if per is None else 0.8 * per + 0.2 * took
        fn_blob = rec.task.payload[0]
        per_call = took / max(1, items)
        old = self._cost.get(fn_blob)
        self._cost[fn_blob] = per_call if old is None else 0.8 * old + 0.2 * per_call
        self._cost.move_to_end(fn_blob)
        if len(self._cost) > _FN_CACHE:
            self._cost.popitem(last=False)

    def _on_error(self, fut: Any, exc: BaseException | None) -> None:
        """A Dask task that produced no outcome of ours: its worker died, or Dask dropped it."""
        rec = self._take(fut.key)
        if rec is None:
            return
        task = rec.task
        now = time.time()
        started = rec.started or rec.sent
        if isinstance(exc, KilledWorker):
            last = exc.last_worker
            # a LocalCluster's first worker is named 0: only a missing name falls back to the address
            wname = getattr(last, "name", None)
            name = worker_name(getattr(last, "address", "?") if wname is None else wname)
            if rec.pack is not None:
                # which call killed the worker is unknown: run each again, on its own
                log.info("anypool: Dask worker %s died running %d packed calls; running them again "
                         "one by one", name, len(rec.pack))
                with self._cond:
                    self._solo.update(t.id for t in rec.pack)
                    self.pending.extendleft(reversed(rec.pack))
                    self._cond.notify()
                return
            if len(task.items) > 1:
                # which item killed the worker is unknown: run the batch again in pieces
                log.info("anypool: Dask worker %s died running %s; running it again in %d pieces",
                         name, task.label(), min(_SPLIT, len(task.items)))
                self._requeue_split(task)
                return
            address = getattr(last, "address", "?")
            if (rec.started is not None and not rec.alone and getattr(last, "nthreads", 0) == 1
                    and self._last_start.get(address, 0.0) > rec.started):
                # the worker's one thread started another task of the pool's after this one, so
                # this one had returned, and its result died with the worker before it was sent
                log.info("anypool: Dask worker %s died holding the result of %s; running it again",
                         name, task.label())
                with self._cond:
                    self.pending.appendleft(task)
                    self._cond.notify()
                return
            if not rec.alone and (rec.started is None or task.future is None):
                # never heard to start: it was queued on that worker (Dask fails those too), or
                # it ended the process before its start event left.  A map item (a piece of a
                # batch that lost its worker) may also have returned just before its neighbour
                # killed the worker, its result unsent.  Sent again alone to tell
                log.info("anypool: Dask worker %s died with %s, which may not have run it; running "
                         "it again alone", name, task.label())
                with self._cond:
                    self._suspects.add(task.id)
                    self.pending.appendleft(task)
                    self._cond.notify()
                return
            pid = getattr(last, "pid", None) or None
            where = f"{name} ({address}, pid {pid})" if pid else f"{name} ({address})"
            crash = WorkerCrashed(
                f"Dask worker {where} died while running {task.label()} (killed from outside, "
                "out of memory, or the task ended its process)", None, pid,
            )
            crash.__cause__ = exc
            self.dispatch.finish(task, [Failure(crash, "crash")], started, now, self._ws(name), [0])
            return
        if exc is None or isinstance(exc, FutureCancelledError):
            why = getattr(exc, "msg", None) or getattr(exc, "reason", None) or "no reason given"
            lost = WorkerCrashed(
                f"the Dask cluster dropped {task.label()}: {why} (the scheduler restarted or lost "
                "this client, or the task was cancelled from outside the pool)"
            )
            self._fail(rec, lost, "crash", started, now, rec.worker or "-")
            return
        # Dask could not run run_task at all (anypool missing on the worker, say)
        tb = fut.traceback()
        text = "".join(traceback.format_exception(type(exc), exc, tb)) if tb is not None else repr(exc)
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith("anypool"):
            add_note(exc, "anypool: every Dask worker needs anypool installed (pip install anypool)")
        exc.__cause__ = RemoteTraceback(text)
        self._fail(rec, exc, "error", started, now, rec.worker or "-")

    def _requeue_split(self, task: Task) -> None:
        n = len(task.items)
        size = -(-n // _SPLIT)
        parts = [task.subtask(i, task.items[i:i + size]) for i in range(0, n, size)]
        units: list[Task] = []
        for part in parts:
            units.extend(self._prepare(part))
        with self._cond:
            self.pending.extendleft(reversed(units))
            self._cond.notify()

    def _ws(self, name: str) -> WorkerStats:
        ws = self._workers.get(name)
        if ws is None:
            ws = self._workers[name] = self.dispatch.stats.worker(name)
        return ws

    # -- breaking and stopping ------------------------------------------------------

    def _break(self, err: BaseException) -> None:
        with self._cond:
            if self._broken is not None:
                return
            self._broken = err
            waiting = list(self.pending)
            self.pending.clear()
        self.dispatch.broken(err)
        for task in waiting:
            self.dispatch.fail_unrun(task, err)

    def _lost(self, err: BaseException) -> None:
        """The cluster is gone: break the pool and fail everything waiting or in flight."""
        self._break(err)
        with self._cond:
            running = list(self._sent.values())
            self._sent.clear()
            self._alone = None
        for rec in running:
            if rec.deadline is not None:
                rec.deadline.cancel()
            for task in rec.tasks:
                self.dispatch.fail_unrun(task, err)

    def cancel_pending(self) -> None:
        """Cancel every task not yet handed to the scheduler."""
        with self._cond:
            waiting = list(self.pending)
            self.pending.clear()
        for task in waiting:
            self.dispatch.cancel(task)

    def shutdown(self, wait: bool = True, kill: bool = False) -> None:
        self._closed = True
        # at exit Dask can no longer run a future's done callbacks (see _ExitNoiseFilter):
        # cancelling would only log one more error per future, and the client's close
        # releases them all the same
        exiting = _exiting()
        if kill:
            self.cancel_pending()
            with self._cond:
                running = list(self._sent.values())
                self._sent.clear()
                self._alone = None
            if running and not exiting:
                try:
                    self._client.cancel([r.future for r in running])
                except Exception:
                    log.debug("anypool: could not cancel Dask tasks", exc_info=True)
            exc = PoolClosed("the pool was shut down with kill=True while this task was on the Dask "
                             "cluster (a running Dask task finishes in its worker thread, unheard)")
            for rec in running:
                if rec.deadline is not None:
                    rec.deadline.cancel()
                for task in rec.tasks:
                    self.dispatch.fail_unrun(task, exc, "cancelled")
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(5.0 if kill else None)
        self._close_client()

    def _close_client(self) -> None:
        client, cluster = self._client, self._cluster
        try:
            if self._cluster is None:  # leave a shared cluster as we found it
                client.unsubscribe_topic(STARTED_TOPIC)
                client.unregister_worker_plugin(self._plugin)
        except Exception:
            log.debug("anypool: could not remove the worker plugin", exc_info=True)
        _close(client)
        if cluster is not None:
            try:
                cluster.close()
            except Exception:
                log.debug("anypool: could not close the local Dask cluster", exc_info=True)


_EXIT_NOISE = "cannot schedule new futures after shutdown"


def _exiting() -> bool:
    """True once the interpreter is exiting and ``concurrent.futures`` has shut its thread pools.

    It does so before the ``atexit`` hooks run (the one that stops live
    pools included), and Dask runs every future's done callbacks in such a
    pool.
    """
    return bool(getattr(concurrent.futures.thread, "_shutdown", False))


class _ExitNoiseFilter(logging.Filter):
    """At exit only, drops the records of Dask callbacks that failed because thread pools are shut.

    From the moment the interpreter starts exiting, Dask's client cannot
    run a future's done callbacks any more (its callback executor refuses
    them), and every future that changes state after that (the pool's
    futures cancelled or released at shutdown, tasks lost when
    distributed's own exit hook closes the local cluster) makes tornado log
    an ERROR with a traceback, one per future, as does the embedded
    scheduler for its own.  None of it concerns the pool, which fails its
    own futures itself.  Outside exit nothing is dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not _exiting():
            return True
        exc = record.exc_info[1] if record.exc_info else None
        return not (_EXIT_NOISE in record.getMessage()
                    or (isinstance(exc, RuntimeError) and _EXIT_NOISE in str(exc)))


_exit_filter = _ExitNoiseFilter()


def _quiet_exit_noise() -> None:
    """Put :class:`_ExitNoiseFilter` where Dask and tornado log that failure (once per process).

    tornado logs a failed callback on ``tornado.application``; the embedded
    cluster's scheduler, in this process, logs its own on
    ``distributed.scheduler``.  A logger's filters see only records logged
    on it, so each gets the filter; nothing else they log is touched.
    """
    for name in ("tornado.application", "distributed.scheduler", "distributed.client",
                 "distributed.core", "distributed.utils"):
        logger = logging.getLogger(name)
        if _exit_filter not in logger.filters:
            logger.addFilter(_exit_filter)


def _open_client(address: Any, kwargs: dict[str, Any], limit: float) -> Any:
    """``Client(address, **kwargs)``, connected within ``limit`` seconds, leaking no thread when it fails.

    Dask's own start waits for the scheduler's handshake without a limit
    (distributed 2026.8: its ``timeout`` bounds only the TCP connection), so
    a port that accepts and never speaks, a dashboard's say, would hang the
    caller for ever; the start is run here, bounded, instead of in
    ``Client.__init__``.  A ``Client`` that cannot connect also leaves the
    event-loop thread it started running, one more thread for every failed
    attempt; keeping hold of the object lets us stop it.

    Raises:
        TimeoutError: the client did not connect within ``limit`` seconds.
        Whatever Dask raised: it could not connect otherwise.
    """
    client = Client.__new__(Client)
    # an instance attribute shadows the method: __init__ builds the client and starts nothing
    client.start = _no_start
    try:
        client.__init__(address, **kwargs)
        del client.start
        client._loop_runner.start()
        client.sync(client._start, callback_timeout=limit)
    except BaseException:
        _close(client)
        raise
    return client


def _dask_connect_timeout() -> float:
    """Dask's ``distributed.comm.timeouts.connect``, in seconds (``distributed`` is imported: so is dask)."""
    from dask.config import get
    from dask.utils import parse_timedelta

    return float(parse_timedelta(get("distributed.comm.timeouts.connect"), "s"))


def _no_start(**kwargs: Any) -> None:
    """Stands in for ``Client.start`` while ``Client.__init__`` runs (see :func:`_open_client`)."""


def _close(client: Any) -> None:
    """Close a Dask client and stop its event-loop thread.

    ``Client.close()`` does nothing to a client that closed itself (it gave
    up reconnecting to a lost scheduler, or failed to connect at all), and
    that leaves its event-loop thread running; its loop runner is stopped
    here in that case.
    """
    try:
        client.close()
    except Exception:
        log.debug("anypool: could not close the Dask client", exc_info=True)
    runner = getattr(client, "_loop_runner", None)
    try:
        if runner is not None and runner.is_started():
            runner.stop()
    except Exception:
        log.debug("anypool: could not stop a Dask client's event loop", exc_info=True)


def _check_config(config: BackendConfig) -> None:
    for name, hint in (
        ("max_tasks_per_worker", "Dask replaces its workers itself: `dask worker --lifetime`"),
        ("max_memory_per_worker", "Dask watches worker memory itself: `dask worker --memory-limit`"),
        ("start_method", "Dask starts its own worker processes"),
    ):
        if getattr(config, name) is not None:
            raise ValueError(f"{name}= does not apply to the dask backend ({hint})")
    if config.address is not None and not isinstance(config.address, str):
        raise TypeError(f"address must be a Dask scheduler address such as 'tcp://host:8786', "
                        f"not {config.address!r}")
    if config.extra.get("security") is True and config.address is not None:
        raise ValueError("security=True makes throw-away certificates for a local cluster; for a "
                         "cluster at address= pass distributed.Security(...) with its certificates")
    timeout = config.extra.get("connect_timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or timeout <= 0):
        raise ValueError(f"connect_timeout must be a positive number of seconds, not {timeout!r}")


_UNSAFE = re.compile(r"[^A-Za-z0-9_.]+")


def _key_name(fn: Any) -> str:
    """The task-name prefix Dask shows for ``fn`` (its dashboard groups tasks by it)."""
    return _UNSAFE.sub("_", fn_name(fn)).strip("_") or "task"


def _loads(blob: bytes) -> Any:
    from ..serialize import loads

    try:
        return loads(blob)
    except Exception as exc:  # a result class the client cannot import, say
        err = TaskError(type(exc).__name__, f"the task's outcome could not be unpickled here: {exc}")
        return (ALL, (err, "anypool.TaskError", str(err), ""), time.time(), time.time(), "-")

