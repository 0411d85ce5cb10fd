"""``map``/``imap``/``imap_unordered``: lazy input, a bounded window, batches.

A map run pulls its input in the *consumer's* thread, only when the consumer
asks for results, and keeps at most a window of batches in flight::

    input ──islice──> Batch ──Task──> backend ──finish──> Batch.deliver ──> consumer
      ▲                                                                      │
      └────────── pulled only while fewer than `window` batches are in flight ┘

So memory stays flat over an endless generator, a slow consumer slows the
input (back-pressure), and the input iterator is only ever touched by one
thread.  Batch sizes adapt to the measured time per item
(:class:`BatchSizer`): one item at first, then as many as fit in the
backend's target batch time, so tiny tasks cost one hand-off per batch and
slow tasks are spread one per worker.

The result iterator works in sync code (``for``) and in coroutines
(``async for``, which never blocks the loop).  Closing it, or dropping it,
cancels the batches that have not started.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from . import waiting
from .errors import PoolClosed, SerializationError
from .tasks import ONE, Failure, Task, TaskOptions

if TYPE_CHECKING:
    import asyncio

    from .backends.base import Backend
    from .dispatch import Dispatch

__all__ = ["Batch", "BatchSizer", "MapRun"]

T = TypeVar("T")


class BatchSizer:
    """Chooses how many items go into the next batch, from measured time per item.

    Starts at one item; after each finished batch aims at ``target`` seconds
    per batch, growing at most 16 times a step (a fast first item may not be
    typical), never past ``cap``, and for inputs of known length never past
    a quarter of a fair share per worker, so the last batches do not leave
    workers idle.
    """

    def __init__(self, target: float, cap: int, workers: int, length: int | None,
                 fixed: int | None = None) -> None:
        self.target = target
        self.cap = cap
        if length is not None:
            self.cap = max(1, min(cap, math.ceil(length / (4 * workers))))
        self.fixed = fixed
        self.size = fixed or 1
        self._per_item: float | None = None

    def next_size(self) -> int:
        return self.size

    def observe(self, items: int, seconds: float) -> None:
        if self.fixed or items <= 0:
            return
        per_item = max(seconds / items, 1e-9)
        # a slow outlier should shrink batches at once; a fast one only a bit
        prev = self._per_item
        self._per_item = per_item if prev is None or per_item > prev else 0.7 * prev + 0.3 * per_item
        ideal = int(self.target / self._per_item)
        self.size = max(1, min(ideal, self.size * 16, self.cap))


class Batch:
    """The result slots of one batch of a map run, filled as items finish."""

    __slots__ = ("done", "failed", "index", "pending", "results", "run", "size")

    def __init__(self, run: MapRun, index: int, size: int) -> None:
        self.run = run
        self.index = index
        self.size = size
        self.results: list[Any] = [None] * size
        self.pending = size
        self.done = False
        self.failed = False

    def deliver(self, offset: int, results: list[Any], final: int, failed: bool) -> bool:
        """Store results from ``offset``; ``final`` of them are final.  True when complete."""
        if failed:
            self.failed = True
        if offset == 0 and len(results) == self.size:
            self.results = results
        else:
            self.results[offset:offset + len(results)] = results
        return self.run._delivered(self, final)

    def discard(self, count: int) -> bool:
        """Count ``count`` items as dropped (cancelled before running).  True when complete."""
        return self.run._delivered(self, count)


class MapRun:
    """One ``map``/``imap``/``imap_unordered`` call (see the module docstring)."""

    def __init__(
        self,
        *,
        dispatch: Dispatch,
        backend: Backend,
        fn: Callable[..., Any],
        source: Iterator[Any],
        style: int,
        options: TaskOptions,
        ordered: bool,
        length: int | None,
        chunksize: int | None,
        buffersize: int | None,
        timeout: float | None,
        return_exceptions: bool,
    ) -> None:
        self._dispatch = dispatch
        self._fn = fn
        self._source = source
        self._style = style
        self._options = options
        self._ordered = ordered
        self._return_exceptions = return_exceptions
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._backend = backend.plan(fn)
        plan = self._backend
        workers = max(1, plan.workers)
        fixed = chunksize if chunksize and chunksize > 0 else plan.fixed_batch()
        cap = plan.max_batch
        limit = plan.config.max_tasks_per_worker
        if limit is not None:
            # a worker is replaced after this many items: a bigger batch would run past that
            cap = min(cap, limit)
            fixed = None if fixed is None else min(fixed, limit)
        self._sizer = BatchSizer(plan.batch_seconds, cap, workers, length, fixed)
        self._max_batches = plan.window()
        self._max_items = buffersize if buffersize and buffersize > 0 else None
        self._backend_for_submit = backend
        self._cond = threading.Condition(threading.Lock())
        self._inflight: deque[Batch] = deque()  # submission order
        self._completed: deque[Batch] = deque()  # completion order (unordered runs)
        self._inflight_items = 0
        self._seq = 0
        self._index = 0
        self._input_error: BaseException | None = None
        self._exhausted = False
        self.closed = False
        self.finite = length is not None
        self.owner: object = None  # the Pool, kept alive while this run is
        self._draining = False  # the pool is shutting down: feed the rest of the input, unwindowed
        # The input is read by the consumer, but also by a shutdown feeding it to its end
        self._feed_lock = threading.Lock()
        self._async_waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        dispatch.add_run(self)
        self._fill()  # start work now, as Executor.map does, not at the first next()

    # -- feeding --------------------------------------------------------------

    def _fill(self) -> None:
        if self._exhausted:
            return
        with self._feed_lock:
            self._fill_locked()

    def _fill_locked(self) -> None:
        while not self._exhausted and (self._draining or (
            len(self._inflight) < self._max_batches
            and (self._max_items is None or self._inflight_items < self._max_items)
        )):
            size = self._sizer.next_size()
            if self._draining and not self._sizer.fixed:
                size = max(size, self._sizer.cap)  # nobody consumes meanwhile: fair shares at once
            elif self._dispatch.closed and not self._draining:
                size = 1  # only to learn whether the input had ended: it is dropped if not
            elif self._max_items is not None:
                size = max(1, min(size, self._max_items - self._inflight_items))
            # extend, not list(): it keeps the items read before the input raises
            items: list[Any] = []
            try:
                items.extend(itertools.islice(self._source, size))
            except BaseException as exc:  # the input itself failed: run what it gave, then raise
                self._input_error = exc
                self._exhausted = True
            if not items:
                self._exhausted = True
                return
            try:
                self._submit(items)
            except PoolClosed:
                self._cut_off(len(items))
                return
            if len(items) < size:
                self._exhausted = True

    def _cut_off(self, unread: int) -> None:
        """The pool shut down before the input ended: what was submitted still comes, then this error."""
        self._exhausted = True
        if self.closed:
            return
        failed_input = self._input_error  # the input also raised, after what was dropped
        self._input_error = PoolClosed(
            f"the pool was shut down before this map's input was read to its end ({self._seq} items "
            f"were submitted, {unread} more read and dropped): an input of "
            "unknown length (an iterator, possibly endless) stops where it was at the shutdown; "
            "consume the results before the pool shuts down (inside its `with` block), or pass a "
            "list, tuple or range, which a shutdown runs to its end")
        self._input_error.__context__ = failed_input

    @property
    def fed(self) -> bool:
        """Whether no more input will be read (it ended, or the run is closed)."""
        return self._exhausted

    def keep_feeding(self) -> None:
        """Let this run submit the rest of its input after the pool closes (it is finite)."""
        self._draining = True

    def feed_to_end(self) -> None:
        """Submit the rest of the input now, all of it (a graceful shutdown)."""
        try:
            self._fill()
        except Exception as exc:
            # a broken pool refusing the rest: the reader's error, after the
            # results that came, not the shutdown's (a `with` block's exit)
            self._input_error = exc
            self._exhausted = True

    def _submit(self, items: list[Any]) -> None:
        n = len(items)
        batch = Batch(self, self._index, n)
        self._index += 1
        first = self._dispatch.begin(n, self._draining)
        task = Task(first, self._fn, items, self._style, self._options, None, batch, 0, self._seq)
        self._seq += n
        with self._cond:
            self._inflight.append(batch)
            self._inflight_items += n
        if self._dispatch.observing:
            self._dispatch.queued(task)
        try:
            self._backend_for_submit.submit(task)
        except SerializationError:
            self._submit_split(task)
        except BaseException:
            # the batch never reached the backend: un-count it, or shutdown would wait for it forever
            with self._cond:
                self._inflight.remove(batch)
                self._inflight_items -= n
            self._dispatch.abort(n)
            raise

    def _submit_split(self, task: Task) -> None:
        """A batch did not pickle: send its items one by one, failing only the bad ones."""
        for i, item in enumerate(task.items):
            sub = task.subtask(i, [item])
            try:
                self._backend_for_submit.submit(sub)
            except SerializationError as exc:
                self._dispatch.fail_unrun(sub, exc)

    @property
    def items_submitted(self) -> int:
        """How many input items this run has handed to the pool so far (for progress bars)."""
        return self._seq

    # -- completion (called from backend threads) ----------------------------

    def _delivered(self, batch: Batch, final: int) -> bool:
        with self._cond:
            batch.pending -= final
            if batch.pending > 0:
                return False
            batch.done = True
            if not self._ordered:
                self._completed.append(batch)
            self._cond.notify()
            waiter = self._async_waiter
        if waiter is not None:
            loop, fut = waiter
            loop.call_soon_threadsafe(_wake, fut)
        return True

    def observe(self, items: int, seconds: float) -> None:
        """Feed the batch sizer a measured run time (backends call this via the dispatcher)."""
        self._sizer.observe(items, seconds)

    # -- consuming ------------------------------------------------------------

    def _next_ready(self) -> Batch | None:
        """The next batch to hand out if it is done, else None (caller holds the lock)."""
        if self._ordered:
            if self._inflight and self._inflight[0].done:
                return self._inflight.popleft()
            return None
        while self._completed:
            b = self._completed.popleft()
            self._inflight.remove(b)
            return b
        return None

    def _take(self, batch: Batch) -> list[Any]:
        self._inflight_items -= batch.size
        results = batch.results
        batch.results = []
        return results

    def _remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return self._deadline - time.monotonic()

    def _timed_out(self) -> TimeoutError:
        self.close()
        return TimeoutError("map() did not finish within its timeout")

    def __iter__(self) -> Iterator[Any]:
        # Items are flattened in C: a generator layer per item cost more than a
        # no-op task itself (see _batches).
        return itertools.chain.from_iterable(self._batches(_Closing(self)))

    def _batches(self, closing: _Closing) -> Iterator[list[Any]]:
        """Each finished batch's results, in order; a failed item raises at its position.

        Its ``finally`` closes the run however the reading ends: exhausted,
        failed, closed, or dropped (a ``for`` left early drops it at once, as
        nothing here refers back to whatever reads it); ``closing`` does
        where it is dropped before it started.
        """
        if getattr(self._backend, "loop_thread", None) == threading.get_ident():
            self.close()
            raise RuntimeError(
                "this map runs its coroutines on the event loop of the current thread, so a "
                "plain `for` would block that loop forever; use `async for` instead"
            )
        try:
            while True:
                self._fill()
                with self._cond:
                    batch = self._next_ready()
                    while batch is None:
                        if not self._inflight:
                            break
                        remaining = self._remaining()
                        if remaining is not None and remaining <= 0:
                            raise self._timed_out()
                        self._cond.wait(waiting.slice_of(remaining))
                        batch = self._next_ready()
                    if batch is None:
                        break
                    results = self._take(batch)
                if batch.failed:
                    for r in self._checked(results):
                        yield [r]
                else:
                    yield results
            if self._input_error is not None:
                exc, self._input_error = self._input_error, None
                raise exc
        finally:
            self.close()

    def aiter(self) -> AsyncIterator[Any]:
        """The results for ``async for`` (as ``iter()``'s, for ``for``)."""
        return self._aiter(_Closing(self))

    async def _aiter(self, closing: _Closing) -> AsyncIterator[Any]:
        import asyncio  # loaded by then: this runs inside a loop

        loop = asyncio.get_running_loop()
        try:
            while True:
                self._fill()
                fut: asyncio.Future[None] | None = None
                with self._cond:
                    batch = self._next_ready()
                    if batch is not None:
                        results = self._take(batch)
                    elif self._inflight:
                        fut = loop.create_future()
                        self._async_waiter = (loop, fut)
                    else:
                        break
                if fut is not None:
                    try:
                        await asyncio.wait_for(fut, self._remaining())
                    except asyncio.TimeoutError:
                        raise self._timed_out() from None
                    finally:
                        self._async_waiter = None
                    continue
                assert batch is not None
                for r in self._checked(results) if batch.failed else results:
                    yield r
            if self._input_error is not None:
                exc, self._input_error = self._input_error, None
                raise exc
        finally:
            self.close()

    def _checked(self, results: list[Any]) -> Iterator[Any]:
        for r in results:
            if type(r) is Failure:
                if self._return_exceptions:
                    yield r.exc
                else:
                    raise r.exc
            else:
                yield r

    def close(self) -> None:
        """Stop: pull no more input; batches not yet started are dropped."""
        self.closed = True
        self._exhausted = True


class _Closing:
    """Closes a run when the iterator reading it goes, even one never started.

    Given to the run's generators as an argument, it is held by their frame
    from the moment they are made: their ``finally`` runs only once started.
    """

    __slots__ = ("run",)

    def __init__(self, run: MapRun) -> None:
        self.run = run

    def __del__(self) -> None:
        self.run.close()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class MapIterator(Iterator[T], AsyncIterator[T]):
    """What ``map``/``imap``/``imap_unordered`` return: iterate with ``for`` or ``async for``.

    Results are produced lazily; ``close()`` (or leaving the loop early)
    cancels the work that has not started.
    """

    def __init__(self, run: MapRun) -> None:
        self._run = run
        self._gen: Iterator[T] | None = None
        self._agen: AsyncIterator[T] | None = None

    def __iter__(self) -> Iterator[T]:
        # The run's own iterator, which closes it when exhausted or dropped.  It
        # must not refer back to this object: a `for` holds only the iterator,
        # and through such a cycle a loop left early dropped it only at the next
        # garbage collection, its unstarted work running meanwhile.
        if self._gen is None:
            self._gen = iter(self._run)
        return self._gen

    def __next__(self) -> T:
        return next(iter(self))

    def __aiter__(self) -> AsyncIterator[T]:
        if self._agen is None:
            self._agen = self._run.aiter()
        return self._agen

    async def __anext__(self) -> T:
        return await self.__aiter__().__anext__()

    def close(self) -> None:
        """Stop the run: no more input is read, unstarted batches are cancelled."""
        self._run.close()

    def __del__(self) -> None:
        # Once an iterator is made, it is the one to close the run: this object
        # goes as soon as `for` has taken the iterator from it.
        if self._gen is None and self._agen is None:
            self._run.close()


def source_of(iterables: tuple[Iterable[Any], ...]) -> tuple[Iterator[Any], int, int | None]:
    """The item iterator, call style and known length (or None) for ``map``'s iterables."""
    from .tasks import STAR

    lengths: list[int | None] = []
    for it in iterables:
        try:
            lengths.append(len(it))  # type: ignore[arg-type]
        except TypeError:
            lengths.append(None)
    known = [n for n in lengths if n is not None]
    length = min(known) if known and len(known) == len(lengths) else None
    if len(iterables) == 1:
        return iter(iterables[0]), ONE, length
    return zip(*iterables), STAR, length  # noqa: B905 - like builtin map(), stop at the shortest
