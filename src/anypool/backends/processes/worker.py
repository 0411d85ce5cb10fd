"""The loop that runs inside each worker process.

::

    start: own process group, parent's sys.path, faulthandler → fault pipe,
           watchdog on the parent's pidfd, initializer, then READY
    loop:  recv TASK → load callable (cached by id) and items → mark the slot →
           run (sync: one item after another; async: coroutines on a loop,
           at most `concurrency` at once) → send RESULT / PARTIAL
           (sync, with max_memory_per_worker: RSS read after each item, tiny
           ones sharing a reading; once past it, UNRUN hands back what was not
           run, now and from then on)
    exit:  STOP from the parent; EOF (the pool's process died or gave up on this
           worker) or the parent's death seen by the watchdog kill this process
           group first: no worker, nor what its tasks started, outlives its pool

Everything a task can do wrong stays inside its own result: an exception
(even ``SystemExit`` or ``KeyboardInterrupt``), an argument that fails to
unpickle here, a result that fails to pickle.  Only a real death (a signal,
``os._exit``, a segfault) ends the process, and the parent sees it on the
process sentinel.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NoReturn

from ...calls import call_items, call_one
from ...errors import SerializationError, TaskTimeout
from ...serialize import PROTOCOL, dumps, loads, loads_args, pack_exception
from ...state import bind_process
from ...tasks import Failure
from .protocol import (
    IDLE,
    INIT_FAILED,
    PARTIAL,
    READY,
    RESULT,
    SLOT_WIDTH,
    STOP,
    TASK,
    UNKNOWN_ITEM,
    UNRUN,
    FrameReader,
    FrameWriter,
    recv_frame,
    reply,
    send_frame,
)

__all__ = ["main"]

FN_CACHE = 128  # callables a worker keeps loaded; the parent mirrors this LRU exactly
# With max_memory_per_worker, RSS is read after a task at most this often (seconds):
# a reading costs ~1.5 us, 30 times a no-op task's share of a map, and in 0.1 ms a
# process grows by a megabyte at most (memory is touched at a few GB/s at best).
RSS_EVERY = 1e-4


def main(sock: socket.socket, fault: Any, slots: Any, config: bytes) -> None:
    """Entry point of a worker process (run by ``multiprocessing.Process``)."""
    cfg = pickle.loads(config)
    try:
        os.setpgid(0, 0)  # terminal Ctrl-C goes to the pool, which decides; timeouts kill the group
    except OSError:
        pass
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _forget_parents_fork_server()
    sys.path[:] = cfg["sys_path"]
    faulthandler.enable(file=fault.fileno(), all_threads=True)
    _watch_parent(cfg["parent_pid"])
    bind_process({})
    base = cfg["index"] * SLOT_WIDTH
    slots[base] = IDLE
    sock.setblocking(True)
    if cfg["initializer"] is not None:
        try:
            init, initargs = loads(cfg["initializer"])
            init(*initargs)
        except BaseException as exc:
            send_frame(sock, reply(dumps((INIT_FAILED, pack_exception(exc, 1)))))
            return
    send_frame(sock, reply(pickle.dumps((READY, os.getpid()), PROTOCOL)))
    worker = _Worker(sock, slots, base, cfg)
    if cfg["mode"] == "async":
        _serve_async(worker, cfg["concurrency"])
    else:
        worker.serve()


def _serve_async(worker: _Worker, concurrency: int) -> None:
    """Run a process+async worker's loop until the pool says STOP, then close it as ``asyncio.run`` would.

    asyncio lets ``SystemExit`` and ``KeyboardInterrupt`` out of the loop
    from any task (once the task holds it) or callback.  The pool's own
    coroutines report theirs as their result (see ``run_item``); one from a
    task a coroutine started, or a callback, is printed and the loop goes
    on: it must not end every coroutine the process holds (asyncio.run would
    cancel them all, and each came back as a bare ``CancelledError``).  Any
    other way out of the loop ends the process, whose coroutines then fail
    as a crash does (and are retried as one).
    """
    import asyncio  # only process+async workers pay its ~20 ms import

    from ..coroutines import close_loop

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(worker.serve_async(concurrency))
    while True:
        try:
            loop.run_until_complete(main)
            break
        except (SystemExit, KeyboardInterrupt) as exc:
            if main.done():  # the worker's own code: not expected
                raise
            sys.stderr.write(f"anypool: worker (pid {os.getpid()}): {exc!r} raised outside the pool's "
                             "coroutines went no further (the loop goes on)\n")
            sys.stderr.flush()
    close_loop(loop)


def _forget_parents_fork_server() -> None:
    """Drop the fork server a directly forked worker inherited the handle of.

    ``multiprocessing`` keeps its fork server's pid in the process that
    started it; a fork copies that, and the first process pool a task then
    starts (from the fork server: this worker runs threads) asks
    ``os.waitpid`` about a process that is not its child: ChildProcessError,
    and that pool is broken.  Forgotten, a task's pool starts a fork server
    of this worker's own, as in any fresh process.  Workers the fork server
    or ``spawn`` started have no pid to forget.
    """
    forkserver = sys.modules.get("multiprocessing.forkserver")
    if forkserver is None:
        return  # never imported before the fork: nothing inherited
    server: Any = forkserver._forkserver
    if server._forkserver_pid is None:
        return
    alive = server._forkserver_alive_fd
    server._forkserver_pid = server._forkserver_address = server._forkserver_alive_fd = None
    server._lock = threading.Lock()  # another thread of the parent may have held it at the fork
    if alive is not None:
        try:
            os.close(alive)  # this copy would keep the parent's fork server alive as long as we are
        except OSError:
            pass


def _die() -> NoReturn:
    """The pool is gone: kill every process this worker started, and this worker."""
    try:
        import psutil  # children that left our process group escape killpg

        for p in psutil.Process().children(recursive=True):
            p.kill()
    except Exception:
        pass
    try:
        os.killpg(os.getpgrp(), signal.SIGKILL)
    finally:
        os._exit(70)


def _watch_parent(pid: int) -> None:
    """Exit (with every process this worker started) as soon as the pool's process dies."""

    def watch() -> None:
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            fd = None
        if fd is not None:
            import select

            select.select([fd], [], [])
            _die()
        while True:  # no pidfd: poll (the parent may already be gone: then getppid changed)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                _die()
            except PermissionError:
                pass
            time.sleep(0.2)

    threading.Thread(target=watch, name="anypool-watchdog", daemon=True).start()


_me: Any = None
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_psutil() -> int:
    """This worker's resident memory, portably (~10 us; ``/proc/self/statm`` where there is one)."""
    global _me
    if _me is None:
        import psutil

        _me = psutil.Process()
    return int(_me.memory_info().rss)


def _packed(exc: BaseException, kind: str = "error", skip: int = 1) -> Failure:
    return Failure(pack_exception(exc, skip), kind)  # type: ignore[arg-type]


class _Worker:
    def __init__(self, sock: socket.socket, slots: Any, base: int, cfg: dict[str, Any]) -> None:
        self.sock = sock
        self.slots = slots
        self.base = base
        self.max_memory: int | None = cfg["max_memory"]
        self.over = False  # RSS passed max_memory after an item: run nothing more, hand it back
        self.next_reading = 0.0  # time.monotonic() after which watched() reads RSS again
        self.statm = -1
        if self.max_memory is not None:
            try:  # ~1.5 us a reading, where psutil takes ~10
                self.statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass
        self.fns: OrderedDict[int, Any] = OrderedDict()

    def rss(self) -> int:
        """This worker's resident memory now, noting in ``over`` when it passed ``max_memory``.

        Called only where ``max_memory_per_worker`` is set.
        """
        rss = int(os.pread(self.statm, 64, 0).split()[1]) * _PAGE if self.statm >= 0 else _rss_psutil()
        if self.max_memory is not None and rss > self.max_memory:
            self.over = True
        return rss

    def watched(self) -> bool:
        """After a task, with ``max_memory_per_worker``: whether this worker is past it now.

        Reads RSS unless it did less than ``RSS_EVERY`` ago (tiny tasks share a reading).
        """
        if not self.over:
            now = time.monotonic()
            if now >= self.next_reading:
                self.next_reading = now + RSS_EVERY
                self.rss()
        return self.over

    def send_unrun(self, wire_id: int, ran: int) -> None:
        """Hand back the items of ``wire_id`` from ``ran`` on, unrun (this worker is too big).

        Sent before the wire's last report (none follows when ``ran`` is 0).
        """
        send_frame(self.sock, reply(pickle.dumps((UNRUN, wire_id, ran, self.rss()), PROTOCOL)))

    def load(self, msg: tuple[Any, ...]) -> tuple[int, Callable[..., Any] | Failure, int, float | None,
                                                  bool, list[Any], list[int] | None]:
        """Unpack a TASK message: the callable (or why it failed to load) and the items."""
        _, wire_id, fn_id, fn_bytes, style, timeout, per_item, blobs, n, payload = msg
        fns = self.fns
        fn: Any = fns.get(fn_id)
        if fn is None:
            try:
                fn = loads(fn_bytes)
            except BaseException as exc:
                fn = _packed(RuntimeError(
                    f"the task's callable could not be loaded in the worker: {exc!r}"), skip=0)
            fns[fn_id] = fn
            if len(fns) > FN_CACHE:
                fns.popitem(last=False)
        else:
            fns.move_to_end(fn_id)
        failed: list[int] | None = None
        if not blobs:
            try:
                items = loads_args(payload)
            except BaseException as exc:
                return wire_id, _packed(SerializationError(
                    f"the task's arguments could not be loaded in the worker: {exc!r}"), skip=0), \
                    style, timeout, per_item, [None] * n, None
        else:
            items = []
            for i, blob in enumerate(payload):
                try:
                    items.append(loads_args(blob))
                except BaseException as exc:
                    failed = failed or []
                    failed.append(i)
                    items.append(_packed(SerializationError(
                        f"the task's arguments could not be loaded in the worker: {exc!r}"), skip=0))
        return wire_id, fn, style, timeout, per_item, items, failed

    # -- sync workers -------------------------------------------------------

    def serve(self) -> None:
        sock, slots, base = self.sock, self.slots, self.base
        while True:
            try:
                msg = pickle.loads(recv_frame(sock))
            except EOFError:
                _die()  # returning would leave what earlier tasks started running
            if msg[0] == STOP:
                return
            assert msg[0] == TASK
            if self.over:  # past max_memory_per_worker: the pool replaces this worker once idle
                self.send_unrun(msg[1], 0)
                continue
            now = time.time()
            slots[base + 2] = now
            slots[base + 1] = UNKNOWN_ITEM
            slots[base] = msg[1]
            wire_id, fn, style, _timeout, per_item, items, bad = self.load(msg)
            t0 = time.time()
            if type(fn) is Failure:
                results: list[Any] = [fn] * len(items)
                failed: list[int] | None = list(range(len(items)))
            elif per_item or bad:
                self.run_marked(wire_id, fn, style, items, bad)  # type: ignore[arg-type]
                slots[base] = IDLE
                continue
            elif self.max_memory is None:
                results, failed = call_items(fn, items, style, _packed)  # type: ignore[arg-type]
            else:
                results, failed = self.run_watched(fn, style, items)  # type: ignore[arg-type]
            t1 = time.time()
            slots[base] = IDLE
            if len(results) < len(items):
                self.send_unrun(wire_id, len(results))
            self.send_result(wire_id, results, failed, t0, t1)

    def run_watched(self, fn: Callable[..., Any], style: int,
                    items: list[Any]) -> tuple[list[Any], list[int] | None]:
        """As ``call_items``, watching RSS after each item and stopping once past ``max_memory``.

        Returns the results of the items that ran: all, or the first few.
        """
        out: list[Any] = []
        failed: list[int] | None = None
        for item in items:
            try:
                out.append(call_one(fn, style, item))
            except BaseException as exc:
                failed = failed or []
                failed.append(len(out))
                out.append(_packed(exc))
            if self.watched():
                break
        return out, failed

    def run_marked(self, wire_id: int, fn: Callable[..., Any], style: int, items: list[Any],
                   bad: list[int] | None) -> None:
        """Run items one by one, marking each in the slot and reporting each as it ends.

        Used for ``submit`` calls and for anything with a timeout: the slot
        lets the pool time out or blame the exact item, and reporting each
        result at once means a later crash cannot take finished work with it.
        """
        slots, base = self.slots, self.base
        skip = set(bad or ())
        watch = self.max_memory is not None
        for i, item in enumerate(items):
            t = time.time()
            slots[base + 2] = t
            slots[base + 1] = i
            if i in skip:
                r: Any = item  # already a Failure: the arguments did not load
            else:
                try:
                    r = call_one(fn, style, item)
                except BaseException as exc:
                    r = _packed(exc)
            done = (wire_id, i, r, type(r) is Failure, t, time.time())
            if watch and i + 1 < len(items) and self.watched():
                self.send_unrun(wire_id, i + 1)
                self.send_partial([done])
                return
            self.send_partial([done])

    def send_partial(self, batch: list[tuple[Any, ...]]) -> None:
        send_frame(self.sock, self.partial_bytes(batch))

    def partial_bytes(self, batch: list[tuple[Any, ...]]) -> bytes:
        """A PARTIAL message for finished items: a header, then each result in its own pickle.

        A result that cannot be pickled here fails alone; one that cannot be
        unpickled in the pool fails alone there (the header says whose it is).
        """
        rss = 0 if self.max_memory is None else self.rss()
        heads = []
        bodies = []
        for wid, i, r, is_bad, s, e in batch:
            try:
                body = dumps(r)
            except BaseException:
                res = [r]
                self.replace_unpicklable(res, None)
                body, is_bad = dumps(res[0]), True
            heads.append((wid, i, is_bad, s, e, len(body)))
            bodies.append(body)
        return reply(dumps((PARTIAL, heads, rss)), *bodies)

    def send_result(self, wire_id: int, results: list[Any], failed: list[int] | None,
                    t0: float, t1: float) -> None:
        rss = 0 if self.max_memory is None else self.rss()
        try:
            body = dumps(results)
        except BaseException:
            failed = self.replace_unpicklable(results, failed)
            body = dumps(results)
        # the header in a pickle of its own: the pool knows whose results these
        # are even when it cannot unpickle them
        send_frame(self.sock, reply(dumps((RESULT, wire_id, failed, t0, t1, rss)), body))

    @staticmethod
    def replace_unpicklable(results: list[Any], failed: list[int] | None) -> list[int] | None:
        """Fail, one by one, the results that cannot travel back; keep the others."""
        bad = set(failed or ())
        for i, r in enumerate(results):
            if i in bad:
                continue
            try:
                dumps(r)
            except BaseException as exc:
                results[i] = _packed(SerializationError(
                    f"the task's result ({type(r).__name__}) cannot be sent back to the pool: {exc!r}"),
                    skip=0)
                bad.add(i)
        return sorted(bad) or None

    # -- process+async workers ----------------------------------------------

    async def serve_async(self, concurrency: int) -> None:
        import asyncio
        import concurrent.futures as cf
        import inspect

        from ..coroutines import async_gen_error

        loop = asyncio.get_running_loop()
        sock, slots, base = self.sock, self.slots, self.base
        sock.setblocking(False)
        reader, writer = FrameReader(sock), FrameWriter(sock)
        done = loop.create_future()
        sem = asyncio.Semaphore(concurrency)
        outbox: list[tuple[Any, ...]] = []
        running: set[asyncio.Task[None]] = set()
        flush_scheduled = False

        def flush() -> None:
            nonlocal flush_scheduled
            flush_scheduled = False
            if not outbox:
                return
            batch = outbox[:]
            outbox.clear()
            writer.put(self.partial_bytes(batch))
            pump()

        def pump() -> None:
            try:
                if writer.flush():
                    loop.remove_writer(sock.fileno())
                else:
                    loop.add_writer(sock.fileno(), pump)
            except OSError:
                _die()  # the pool's end is closed: nobody is left to take the results

        def report(item: tuple[Any, ...]) -> None:
            nonlocal flush_scheduled
            outbox.append(item)
            if not flush_scheduled:
                flush_scheduled = True
                loop.call_soon(flush)

        async def run_item(wire_id: int, i: int, fn: Any, style: int, item: Any,
                           timeout: float | None) -> None:
            async with sem:
                t0 = time.time()
                # The timeout cancels this very task, not one of its own (wait_for's
                # way): asyncio re-raises SystemExit and KeyboardInterrupt from a task
                # out of the loop, which would end the worker and every coroutine in it.
                timer: asyncio.TimerHandle | None = None
                expired = False

                def expire(task: asyncio.Task[None]) -> None:
                    nonlocal expired
                    expired = True
                    task.cancel()

                try:
                    slots[base + 2] = t0  # the slot names who holds the loop: see _Marked
                    slots[base + 1] = i
                    slots[base] = wire_id
                    try:
                        r = call_one(fn, style, item)
                    finally:
                        slots[base] = IDLE
                    if inspect.isawaitable(r):
                        me = asyncio.current_task() if timeout else None
                        if me is not None:
                            timer = loop.call_at(loop.time() + (timeout or 0.0) - (time.time() - t0),
                                                 expire, me)
                        r = await _Marked(r, slots, base, wire_id, i, t0)
                    elif inspect.isasyncgen(r):
                        raise async_gen_error(r)
                    bad = False
                except asyncio.CancelledError:
                    # As on the async backend: its timeout's, a TaskTimeout (a coroutine
                    # that turned it into a value or its own error ended by itself: that
                    # is its outcome); any other (it raised one itself, or awaited what
                    # was cancelled) cancels its task.
                    if expired:
                        r = _packed(TaskTimeout(timeout or 0.0), "timeout", 0)
                    else:
                        r = _packed(cf.CancelledError("the coroutine was cancelled"), "cancelled", 0)
                    bad = True
                except BaseException as exc:
                    r, bad = _packed(exc), True
                finally:
                    if timer is not None:
                        timer.cancel()
                report((wire_id, i, r, bad, t0, time.time()))

        def on_readable() -> None:
            for frame in reader.read():
                msg = pickle.loads(frame)
                if msg[0] == STOP:
                    if not done.done():
                        done.set_result(None)
                    return
                wire_id, fn, style, timeout, _per_item, items, bad = self.load(msg)
                skip = set(bad or ())
                for i, item in enumerate(items):
                    if type(fn) is Failure or i in skip:
                        now = time.time()
                        report((wire_id, i, fn if type(fn) is Failure else item, True, now, now))
                        continue
                    t = loop.create_task(run_item(wire_id, i, fn, style, item, timeout))
                    running.add(t)
                    t.add_done_callback(running.discard)
            if reader.eof:
                # The pool's process died (or closed this channel for good).  A normal
                # return would end this process before the watchdog kills its group,
                # and every process a coroutine started would run on.
                _die()

        loop.add_reader(sock.fileno(), on_readable)
        try:
            await done
        finally:
            loop.remove_reader(sock.fileno())
            for t in running:
                t.cancel()


class _Marked:
    """Awaits a task's awaitable, naming it in the worker's slot while each of its steps runs.

    A process+async worker runs many coroutines, and one of them may kill it
    (``os._exit``, a segfault) or block its loop past its timeout.  The slot
    then tells the pool which one (``[wire_id, index, its start]``, written
    start first, as the sync worker does), so only that one is blamed and the
    others run again; between steps it reads IDLE, so a death while the loop
    waits blames nobody.  It costs a generator step and four stores per step.
    """

    __slots__ = ("aw", "base", "index", "slots", "start", "wire_id")

    def __init__(self, aw: Any, slots: Any, base: int, wire_id: int, index: int, start: float) -> None:
        self.aw = aw
        self.slots = slots
        self.base = base
        self.wire_id = wire_id
        self.index = index
        self.start = start

    def __await__(self) -> Any:
        aw = self.aw
        to_await = getattr(aw, "__await__", None)
        it = aw if to_await is None else to_await()  # None: a @types.coroutine generator steps itself
        slots, base, wire_id, index, start = self.slots, self.base, self.wire_id, self.index, self.start
        value: Any = None
        exc: BaseException | None = None
        while True:
            slots[base + 2] = start
            slots[base + 1] = index
            slots[base] = wire_id
            try:
                out = it.send(value) if exc is None else it.throw(exc)
            except StopIteration as stop:
                return stop.value
            finally:
                slots[base] = IDLE
            exc = None
            try:
                value = yield out
            except GeneratorExit:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
                raise
            except BaseException as e:  # a cancellation (or anything thrown in): pass it on
                value, exc = None, e
