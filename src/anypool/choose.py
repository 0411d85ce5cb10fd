"""``backend="auto"``: pick the execution model per callable, and say why.

* a coroutine function (or a callable returning awaitables) → ``async``;
* a command (a ``str`` or a list of ``str``) → ``subprocess``;
* a sync callable → measured on its first tasks, run on a probe thread:

  - CPU time well under wall time (it waits: IO, sleep, locks) → ``thread``;
  - tiny tasks (a few µs): pickling them to processes would cost more than
    running them → ``thread``;
  - CPU-bound but the GIL is free most of the time (hashlib, zlib, numpy:
    a sampler thread gets to run) → ``thread``;
  - CPU-bound Python holding the GIL → ``process`` (when the callable can be
    pickled and there is more than one CPU).

The probe runs tasks for at most ``PROBE_SECONDS`` (a long first task is
judged mid-run from its thread's CPU clock); later tasks of that callable
wait, then go to the chosen backend.  Each choice and its reason are in
``pool.stats.choices`` and logged at debug level.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import clock
from .backends import get_backend
from .backends.base import Backend, BackendConfig, default_workers
from .calls import call_items
from .dispatch import fn_name
from .errors import InitializerFailed, SerializationError
from .serialize import dumps_callable
from .state import bind_thread
from .tasks import Failure, Task

if TYPE_CHECKING:
    from .dispatch import Dispatch

__all__ = ["AutoBackend", "Decision", "decide"]

log = logging.getLogger("anypool")

PROBE_SECONDS = 0.1
TINY_TASK = 20e-6  # seconds per task under which processes cannot pay for themselves
IO_BOUND = 0.5  # CPU / wall under this: the task mostly waits
GIL_HELD = 0.5  # share of sampler wake-ups delayed by the GIL above this: it holds the GIL
_SAMPLE_SLEEP = 0.0002
_SAMPLE_LATE = 0.002  # a wake-up later than this waited for the GIL (switch interval is 5 ms)


def is_command(fn: Any) -> bool:
    """Whether ``fn`` is a shell command (``str``) or an argv list."""
    if isinstance(fn, str):
        return True
    if isinstance(fn, (list, tuple)) and fn and all(isinstance(a, str) for a in fn):
        return True
    return hasattr(fn, "__anypool_command__")


def is_coroutine_callable(fn: Any) -> bool:
    """Whether calling ``fn`` gives a coroutine (async def, partials of one, async __call__)."""
    if inspect.iscoroutinefunction(fn):
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


def decide(cpu: float, wall: float, items: int, gil_held: float, cpus: int,
           picklable: Callable[[], str | None]) -> Decision:
    """Turn probe measurements into a backend choice with its reason."""
    ratio = cpu / wall if wall > 0 else 0.0
    per = wall / max(items, 1)

    def d(backend: str, reason: str) -> Decision:
        return Decision(backend, reason, cpu, wall, items, gil_held)

    if ratio < IO_BOUND:
        return d("thread", f"it mostly waits (CPU {ratio:.0%} of wall time)")
    if per < TINY_TASK:
        return d("thread", f"tasks are tiny ({per * 1e6:.1f} µs each): sending them to processes "
                           "would cost more than running them")
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


class _GilSampler:
    """Measures how often a thread that wants the GIL is kept waiting for it."""

    def __init__(self) -> None:
        self.samples = 0
        self.late = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="anypool-gil-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        perf, sleep = time.perf_counter, time.sleep
        while not self._stop.is_set():
            t = perf()
            sleep(_SAMPLE_SLEEP)
            if perf() - t - _SAMPLE_SLEEP > _SAMPLE_LATE:
                self.late += 1
            self.samples += 1

    @property
    def held(self) -> float:
        return self.late / self.samples if self.samples else 0.0

    def stop(self) -> None:
        self._stop.set()


class _Probe:
    """Runs the first tasks of one callable on its own thread and measures them."""

    def __init__(self, router: AutoBackend, key: Any, fn: Callable[..., Any], first: Task) -> None:
        self.router = router
        self.key = key
        self.fn = fn
        self.held: deque[Task] = deque([first])
        self.lock = threading.Lock()
        self.decided = False
        self.routed = threading.Event()  # set once the router knows the choice
        self.cpu = 0.0
        self.wall = 0.0
        self.items = 0
        self.current_start: float | None = None
        self.current_cpu0 = 0.0
        self.thread = threading.Thread(target=self._run, name="anypool-probe", daemon=True)
        self.sampler = _GilSampler()
        self.thread.start()
        clock.call_later(PROBE_SECONDS, self._deadline)

    def hold(self, task: Task) -> bool:
        """Keep ``task`` until the decision; False if it is already made."""
        with self.lock:
            if self.decided:
                return False
            self.held.append(task)
            return True

    def _run(self) -> None:
        router = self.router
        dispatch = router.dispatch
        ws = dispatch.stats.worker("probe")
        bind_thread({})
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
                    if self.decided or not self.held:
                        break
                    task = self.held.popleft()
                    self.current_start = time.perf_counter()
                    self.current_cpu0 = time.thread_time()
                if not task.claim():
                    dispatch.discard(task)
                    continue
                w0, c0 = self.current_start, self.current_cpu0
                t0 = time.time()
                results, failed = call_items(task.fn, task.items, task.style, Failure)
                t1 = time.time()
                with self.lock:
                    self.current_start = None
                    if not self.decided:
                        self.wall += time.perf_counter() - w0
                        self.cpu += time.thread_time() - c0
                        self.items += len(task.items)
                dispatch.finish(task, results, t0, t1, ws, failed)
                if self.wall >= PROBE_SECONDS:
                    break
        finally:
            bind_thread(None)
            dispatch.stats.worker_gone("probe")
            self._decide_now()

    def _deadline(self) -> None:
        """Clock callback: a first task still running after PROBE_SECONDS is judged mid-run."""
        with self.lock:
            if self.decided or self.current_start is None:
                return
            try:
                clk = time.pthread_getcpuclockid(self.thread.ident or 0)
                cpu_now = time.clock_gettime(clk)
            except (AttributeError, OSError):
                return  # judged when the task ends instead
            wall = time.perf_counter() - self.current_start
            # thread_time() and the pthread CPU clock are the same clock on Linux
            self.cpu += cpu_now - self.current_cpu0
            self.wall += wall
            self.items += 1
        self._decide_now()

    def _decide_now(self, force: tuple[str, str] | None = None) -> None:
        with self.lock:
            if self.decided:
                return
            self.decided = True
            held = list(self.held)
            self.held.clear()
        self.sampler.stop()
        if force is not None:
            decision = Decision(force[0], force[1], self.cpu, self.wall, self.items, 0.0)
        else:
            decision = decide(self.cpu, self.wall, self.items, self.sampler.held,
                              self.router.cpus, self._pickle_problem)
        try:
            self.router._decided(self.key, self.fn, decision, held)
        finally:
            self.routed.set()

    def _pickle_problem(self) -> str | None:
        try:
            dumps_callable(self.fn)
        except SerializationError as exc:
            return str(exc)
        return None


def _key(fn: Any) -> Any:
    """What identifies "the same callable" for the choice: its code where it has one."""
    inner = getattr(fn, "func", None)  # functools.partial
    if inner is not None:
        return _key(inner)
    func = getattr(fn, "__func__", fn)  # bound methods
    code = getattr(func, "__code__", None)
    if code is not None:
        return code
    try:
        hash(fn)
    except TypeError:
        return type(fn)
    return fn


class AutoBackend(Backend):
    """Routes each callable to the backend that suits it (see the module docstring)."""

    name = "auto"

    def __init__(self, config: BackendConfig, dispatch: Dispatch) -> None:
        super().__init__(config, dispatch)
        self._lock = threading.Lock()
        self._subs: dict[str, Backend] = {}
        self._choices: dict[Any, str] = {}
        self._probes: dict[Any, _Probe] = {}
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
                    b = get_backend(name)(self.config, self.dispatch)
                    self._subs[name] = b
        return b

    def _static(self, fn: Any) -> str | None:
        if is_command(fn):
            return "subprocess"
        if is_coroutine_callable(fn):
            return "async"
        return self._choices.get(_key(fn))

    def plan(self, fn: Callable[..., Any]) -> Backend:
        name = self._static(fn)
        return self._sub(name or "thread")

    def submit(self, task: Task) -> None:
        name = self._static(task.fn)
        if name is None:
            key = _key(task.fn)
            while True:
                with self._lock:
                    name = self._choices.get(key)
                    if name is not None:
                        break
                    probe = self._probes.get(key)
                    if probe is None:
                        self._probes[key] = _Probe(self, key, task.fn, task)
                        return
                    if probe.hold(task):
                        return
                # decided, but the router has not recorded the choice yet
                probe.routed.wait()
        self._sub(name).submit(task)

    def _decided(self, key: Any, fn: Any, decision: Decision, held: list[Task]) -> None:
        with self._lock:
            self._choices[key] = decision.backend
            self._probes.pop(key, None)
        label = fn_name(fn)
        self.dispatch.stats.choices[label] = f"{decision.backend}: {decision.reason}"
        log.debug("anypool: auto chose %s for %s: %s", decision.backend, label, decision.reason)
        if held:
            backend = self._sub(decision.backend)
            for task in held:
                try:
                    backend.submit(task)
                except Exception as exc:  # e.g. an argument that does not pickle
                    self.dispatch.fail_unrun(task, exc)

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
            subs = list(self._subs.values())
        for p in probes:
            if wait and not kill:
                p.thread.join()
        for b in subs:
            b.shutdown(wait=wait, kill=kill)
