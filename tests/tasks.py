"""Task functions for the tests: importable by reference from worker processes.

Also the deliberately bad objects of the fault matrix: things that crash or
raise while being pickled or unpickled, in the parent or in a worker.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import os
import signal
import threading
import time
from typing import Any

import anypool


def square(x: int) -> int:
    return x * x


async def asquare(x: int) -> int:
    await asyncio.sleep(0)
    return x * x


def add(a: int, b: int = 0, *, c: int = 0) -> int:
    return a + b + c


async def aadd(a: int, b: int = 0, *, c: int = 0) -> int:
    return a + b + c


def fail_on(x: int, bad: int = 3) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


async def afail_on(x: int, bad: int = 3) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def stop_on(x: int, bad: int = 3) -> int:
    if x == bad:
        raise StopIteration(f"stopped at {x}")
    return x


async def astop_on(x: int, bad: int = 3) -> int:
    if x == bad:
        raise StopIteration(f"stopped at {x}")  # a coroutine's becomes a RuntimeError (PEP 479)
    return x


def never(exc: BaseException) -> bool:
    """A ``retry_on`` predicate that is itself broken."""
    raise KeyError("the predicate broke")


def sleep(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def sleep_then_fail(seconds: float) -> None:
    time.sleep(seconds)
    raise ValueError(f"failed after {seconds} s")


async def asleep(seconds: float, value: Any = None) -> Any:
    await asyncio.sleep(seconds)
    return value


def pid(_: Any = None) -> int:
    return os.getpid()


def thread_id(_: Any = None) -> int:
    return threading.get_ident()


def kill_self(sig: int = signal.SIGKILL) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(10)


def exit_hard(code: int = 3) -> None:
    os._exit(code)


def sleep_then_exit(seconds: float, code: int = 3) -> None:
    """End this process after ``seconds`` (a worker that dies mid-task, its start long announced)."""
    time.sleep(seconds)
    os._exit(code)


def segfault() -> None:
    ctypes.string_at(0)


def crash_if(x: int, bad: int) -> int:
    if x == bad:
        os._exit(7)
    return x


def raise_system_exit(code: int = 2) -> None:
    raise SystemExit(code)


def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def set_state(key: str, value: Any) -> None:
    anypool.worker_state()[key] = value


def slow_set_state(seconds: float, key: str, value: Any) -> None:
    """An initializer that takes ``seconds`` before it sets ``key`` in the worker's state."""
    time.sleep(seconds)
    anypool.worker_state()[key] = value


def get_state(key: str) -> Any:
    return anypool.worker_state().get(key)


async def aget_state(key: str) -> Any:
    return anypool.worker_state().get(key)


def init_fails() -> None:
    raise RuntimeError("initializer refuses")


def return_exception(_: Any = None) -> BaseException:
    return ValueError("I am a value, not an error")


def return_lock(_: Any = None) -> Any:
    return threading.Lock()


def big_result(n: int) -> bytes:
    return b"x" * n


def cpu(n: int = 2_000_000) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


async def fetch_then_parse(x: int, n: int = 200_000) -> tuple[int, int]:
    """A coroutine that waits a moment, then does some ms of pure-Python CPU work: (x, its pid)."""
    await asyncio.sleep(0.001)
    cpu(n)
    return x, os.getpid()


def leak(mb: int) -> int:
    """Grow this worker's memory by ``mb`` MiB and keep it (a memory leak)."""
    hoard = anypool.worker_state().setdefault("hoard", [])
    hoard.append(bytearray(mb << 20))
    return os.getpid()


def leak_rss(mb: int) -> tuple[int, int]:
    """Leak ``mb`` MiB, as ``leak`` does; return this worker's pid and its RSS after that."""
    import psutil

    leak(mb)
    return os.getpid(), psutil.Process().memory_info().rss


class Unpicklable:
    """Refuses to be pickled (like a lock or an open socket)."""

    def __reduce__(self) -> Any:
        raise TypeError("Unpicklable objects cannot be pickled")


class ExitAtUnpickle:
    """Pickles fine; unpickling it kills the process that loads it."""

    def __reduce__(self) -> Any:
        return (os._exit, (11,))


class RaiseAtUnpickle:
    """Pickles fine; unpickling it raises."""

    def __reduce__(self) -> Any:
        return (_raise_value_error, ("cannot unpickle me",))


def _raise_value_error(msg: str) -> None:
    raise ValueError(msg)


class SegfaultAtUnpickle:
    """Pickles fine; unpickling it segfaults the process that loads it."""

    def __reduce__(self) -> Any:
        return (ctypes.string_at, (0,))


def return_raise_at_unpickle(_: Any = None) -> Any:
    return RaiseAtUnpickle()


def return_unpicklable(_: Any = None) -> Any:
    return Unpicklable()


class UnpicklableError(Exception):
    """An exception that cannot be pickled (it holds a lock)."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.lock = threading.Lock()


def raise_unpicklable(_: Any = None) -> None:
    raise UnpicklableError("holding a lock")


class BrokenStrError(Exception):
    """An exception whose ``__str__`` raises (user code may)."""

    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be shown")


def raise_broken_str(_: Any = None) -> None:
    raise BrokenStrError()


async def araise_broken_str(_: Any = None) -> None:
    raise BrokenStrError()


def attempt_then_sleep(path: str, seconds: float, value: Any = None) -> Any:
    """Append this process's pid to ``path``; sleep ``seconds`` on the first attempt only.

    A test waits for the first line, kills that pid, and sees the retry
    (which appends a second line) return at once.
    """
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    with open(path) as f:
        attempt = sum(1 for _ in f)
    if attempt == 1:
        time.sleep(seconds)
    return (value, attempt)


def mark_then_sleep(path: str, seconds: float) -> None:
    """Create ``path``, then sleep: a test waits for the file to know the task runs."""
    with open(path, "w"):
        pass
    time.sleep(seconds)


async def amark_then_sleep(path: str, seconds: float) -> None:
    with open(path, "w"):
        pass
    await asyncio.sleep(seconds)


def note_pid(path: str) -> None:
    """An initializer that records, one line each, the processes it ran in."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def linger(seconds: float, value: Any = None) -> Any:
    """Return ``value`` at once, leaving a non-daemon thread that keeps this process from
    exiting for ``seconds`` (a worker told to stop exits that much later)."""
    threading.Thread(target=time.sleep, args=(seconds,), daemon=False).start()
    return value


def count_calls(_: Any = None) -> tuple[int, int]:
    """(pid, how many times this worker's state has counted so far)."""
    counter = anypool.worker_state().setdefault("calls", itertools.count(1))
    return os.getpid(), next(counter)


def unloadable_if(x: int, bad: int) -> Any:
    """``x``, or for ``x == bad`` a result the pool cannot unpickle."""
    return RaiseAtUnpickle() if x == bad else x


async def aunloadable_if(x: int, bad: int) -> Any:
    """As ``unloadable_if``, later items finishing first."""
    import asyncio

    await asyncio.sleep(0.02 * (6 - x))
    return RaiseAtUnpickle() if x == bad else x


def timed_sleep(seconds: float) -> tuple[float, float]:
    """Sleep; return when it ran (wall clock, comparable across processes)."""
    t = time.time()
    time.sleep(seconds)
    return t, time.time()


def timed_cpu(n: int, then_sleep: float = 0.0) -> tuple[float, float]:
    """Pure-Python CPU work holding the GIL, then a sleep; return when it ran (wall clock)."""
    t = time.time()
    cpu(n)
    time.sleep(then_sleep)
    return t, time.time()


def cpu_beside(n: int, _other: Any = None) -> tuple[int, int]:
    """``cpu(n)`` and the pid that ran it; ``_other`` is only carried (a lock, say)."""
    return cpu(n), os.getpid()


def nested_pool_sum(n: int) -> int:
    """A task that runs a process pool of its own: the sum of ``square`` over ``range(n)``."""
    with anypool.Pool("process", workers=2) as pool:
        return sum(pool.map(square, range(n)))


class Scaler:
    """A callable with state: ``x * k``."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, x: int) -> int:
        return x * self.k

    def times(self, x: int) -> int:
        return x * self.k
