"""The GIL: CPU-bound Python on threads vs processes, and what ``backend="auto"`` picks.

Seed notes 001 and 004: because of the GIL only one thread runs Python
bytecode at a time, so threads do not make CPU-bound Python faster; the
ways around it are several processes (each has its own interpreter and
GIL) or C code that releases the GIL.

Here the same pure-Python loop runs serially, on two threads and on two
processes, then under ``backend="auto"``, which measures the function on its
first tasks and says why it chose what it chose.  ``hashlib.sha256`` over
big buffers is the other way around the GIL: C code that releases it, so
threads run it in parallel, and auto keeps it on threads (sending the
buffers to processes would cost more than hashing them).

Timings depend on the machine: with one CPU, or with the CPUs busy with
other work, processes cannot beat threads.

Run: ``python examples/gil_threads_vs_processes.py``
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from typing import Any

import anypool

TASKS = 4
LOOP = 600_000  # about 50 ms of pure Python per task on a 2020s CPU


def crunch(n: int) -> int:
    """Pure Python arithmetic: holds the GIL all the time."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def digest(buf: bytes) -> str:
    """sha256 of a big buffer: hashlib releases the GIL while it hashes."""
    return hashlib.sha256(buf).hexdigest()[:12]


def run(label: str, fn: Callable[[Any], Any], items: list[Any], backend: str | None) -> float:
    """Time ``fn`` over ``items``; a pool is started (workers up) before the clock starts."""
    if backend is None:
        t0 = time.perf_counter()
        results = [fn(x) for x in items]
        took = time.perf_counter() - t0
        print(f"  {label:<12} {took:6.2f} s")
        return took
    with anypool.Pool(backend, workers=2) as pool:
        if backend != "auto":  # start the workers first: their start-up is not the GIL's doing
            list(pool.map(abs, range(2), chunksize=1))
        t0 = time.perf_counter()
        results = list(pool.map(fn, items, chunksize=1))
        took = time.perf_counter() - t0
    assert len(set(results)) == 1
    print(f"  {label:<12} {took:6.2f} s")
    choice = pool.stats.choices.get(fn.__name__)
    if choice is not None:
        print(f"  {'':<12} auto chose {choice}")
    return took


def main() -> None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPUs available: {cpus}")
    print(f"pure-Python loop, {TASKS * 2} tasks:")
    items = [LOOP] * (TASKS * 2)
    serial = run("serial", crunch, items, None)
    threads = run("2 threads", crunch, items, "thread")
    processes = run("2 processes", crunch, items, "process")
    run("auto", crunch, items, "auto")
    print(f"  threads vs serial: {serial / threads:.2f}x; processes vs serial: {serial / processes:.2f}x")

    print(f"sha256 of 8 MiB buffers, {TASKS * 4} tasks:")
    bufs = [os.urandom(1 << 20) * 8] * (TASKS * 4)  # the same 8 MiB buffer, 16 times
    serial = run("serial", digest, bufs, None)
    threads = run("2 threads", digest, bufs, "thread")
    run("auto", digest, bufs, "auto")
    print(f"  threads vs serial: {serial / threads:.2f}x")


if __name__ == "__main__":
    main()
