"""The half of the ``dask`` backend that runs inside each Dask worker.

Two things travel to the cluster, both pickled by reference (so every Dask
worker needs ``anypool`` installed, like any library your tasks import):

* :class:`WorkerSetup`, a Dask ``WorkerPlugin`` registered by each pool.
  Dask runs its ``setup`` on every worker of the cluster, and on every
  worker that joins later (a restarted one included).  It holds that
  worker's ``anypool.worker_state()`` dict for this pool and runs the
  pool's ``initializer`` into it, in a thread so a slow initializer does
  not stall the worker's event loop.  A failure is kept, not raised, so
  the first task on that worker reports it to the pool.  A scheduler
  keeps its plugins in memory only, so a new one (the old one died) knows
  nothing of the pool: a task that finds no setup on its worker runs
  nothing and says so (``UNSET``), and the pool registers it again.
* :func:`run_task`, the one function every Dask task of the pool calls.
  It unpickles the task's callable and items, runs the items through
  :func:`anypool.calls.call_items` (a batch of ``map`` items is one Dask
  task), and returns one pickle: the results, which of them failed (each
  failure packed with its traceback text), when the batch started and
  ended on the worker's clock, and the worker's name.

Why the task pickles its own result: Dask would keep an unpicklable result
in worker memory and fail only when the client fetches it; pickling here
turns that into an ordinary failure of the item that returned it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from distributed import WorkerPlugin, get_worker

from ..calls import call_items
from ..errors import SerializationError, add_note
from ..serialize import dumps, loads, pack_exception
from ..state import bind_thread

__all__ = ["ALL", "BROKEN", "OK", "STARTED_TOPIC", "UNSET", "WorkerSetup", "run_task", "worker_name"]

STARTED_TOPIC = "anypool-started"
"""The Dask event topic on which a task announces that it started (timeouts, observers)."""

# what run_task returned (the first field of its outcome)
OK = 0
ALL = 1
BROKEN = 2
UNSET = 3


class WorkerSetup(WorkerPlugin):
    """Per-worker state and initializer of one pool (see the module docstring)."""

    idempotent = False

    def __init__(self, init_blob: bytes | None) -> None:
        self.init_blob = init_blob
        self.state: dict[str, Any] = {}
        self.error: tuple[Any, ...] | None = None
        # set once setup has run: Dask lists a plugin on the worker before its setup ends, and a
        # task arriving meanwhile (one sent before the pool reinstalled itself on a new
        # scheduler) must not run without the initializer's state
        self.ready = threading.Event()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["ready"]  # a lock does not pickle; each copy gets its own, unset
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.ready = threading.Event()

    async def setup(self, worker: Any) -> None:
        self.state = {}
        self.error = None
        try:
            if self.init_blob is not None:
                await asyncio.get_running_loop().run_in_executor(None, self._initialize)
        finally:
            self.ready.set()

    def _initialize(self) -> None:
        bind_thread(self.state)
        try:
            init, initargs = loads(self.init_blob)  # type: ignore[arg-type]
            init(*initargs)
        except BaseException as exc:  # SystemExit too: it must not end the worker
            self.error = pack_exception(exc, 1)
        finally:
            bind_thread(None)

    def teardown(self, worker: Any) -> None:
        self.state = {}


def _packed(exc: BaseException) -> tuple[Any, ...]:
    return pack_exception(exc, 1)


def run_task(fn_blob: bytes, items_blob: bytes | list[bytes], style: int, announce: str | None,
             plugin: str) -> bytes:
    """Run one task (a call, a batch of map items, or a pack of calls) here; return its pickled outcome.

    ``items_blob`` is the pickled list of items, or for a pack of ``submit``
    calls one such pickle per call, run one after the other.

    The outcome is one of ``(OK, results, failed, t0, t1, worker)`` (a
    failed item's slot holds its packed exception), ``(ALL, packed, t0, t1,
    worker)`` (nothing ran: the task could not be unpickled here),
    ``(BROKEN, packed, worker)`` (this pool's initializer failed here) or
    ``(UNSET, worker)`` (nothing ran: this pool's setup is not on this
    worker, whose scheduler has not got it: a new scheduler after a restart).
    ``announce`` is the pool token when the client wants to hear when the
    task starts (its timeout, its observers, and telling a task that ran
    from one only queued on a worker that died); the start is then
    published on :data:`STARTED_TOPIC` before anything runs, with the
    worker's name and address.
    """
    worker = get_worker()
    name = worker_name(worker.name)
    setup = worker.plugins.get(plugin)
    if not isinstance(setup, WorkerSetup):
        # not the initializer's fault (there may be none): the pool installs its setup and sends
        # the task again, so it announces nothing (it will start for real later)
        return dumps((UNSET, name))
    setup.ready.wait()  # its initializer may still be running (see WorkerSetup.__init__)
    if announce is not None:
        worker.log_event(STARTED_TOPIC, (announce, worker.get_current_task(), name, worker.address))
    if setup.error is not None:
        return dumps((BROKEN, setup.error, name))
    t0 = time.time()
    try:
        fn = loads(fn_blob)
        if isinstance(items_blob, bytes):
            items = loads(items_blob)
        else:
            items = [item for blob in items_blob for item in loads(blob)]
    except BaseException as exc:
        add_note(exc, f"anypool: the task could not be unpickled on Dask worker {name}: are the "
                   "modules it needs installed there?")
        return dumps((ALL, pack_exception(exc), t0, time.time(), name))
    bind_thread(setup.state)
    try:
        out, failed = call_items(fn, items, style, _packed)
    finally:
        bind_thread(None)
    t1 = time.time()
    try:
        return dumps((OK, out, failed, t0, t1, name))
    except Exception:
        pass
    # some result does not pickle: fail just those items, saying why
    bad = set(failed or ())
    for i, r in enumerate(out):
        if i in bad:
            continue
        try:
            dumps(r)
        except Exception as exc:
            err = SerializationError(
                f"the result of this task ({type(r).__name__}) cannot be sent back from Dask "
                f"worker {name}: {exc}"
            )
            out[i] = pack_exception(err)
            bad.add(i)
    return dumps((OK, out, sorted(bad), t0, t1, name))


def worker_name(name: Any) -> str:
    """How a Dask worker is named in anypool's statistics and messages.

    A ``LocalCluster`` numbers its workers 0, 1, ...; ``dask worker`` uses
    ``--name`` or else the worker's address.
    """
    return f"dask-{name}" if isinstance(name, int) else str(name)

