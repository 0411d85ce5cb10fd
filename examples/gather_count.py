"""Three ``count()`` coroutines in about one second, and what a blocking call does to them.

Seed note 000 (and 001): ``asyncio.gather(count(), count(), count())`` prints
"One" three times, waits one second once, prints "Two" three times: the
coroutines share one thread and take turns at each ``await``.  Note 002 adds
the warning that a blocking call inside a coroutine blocks them all.

The anypool way: ``anypool.map`` sees a coroutine function and runs it on the
``async`` backend (an event loop the pool owns), so sync code needs no
``asyncio.run``.  The same job with ``time.sleep`` inside the coroutine takes
three seconds, and anypool logs a warning that the loop was blocked; written
as a plain function, ``backend="auto"`` measures it and puts it on threads,
back to one second (with three threads: the thread pool's default size is
the CPU count, and on a two-CPU machine the third sleep would wait its turn).

Run: ``python examples/gather_count.py``
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import anypool


async def count(i: int) -> int:
    print(f"One ({i})")
    await asyncio.sleep(1)  # gives the loop back: the other coroutines run meanwhile
    print(f"Two ({i})")
    return i


async def count_blocking(i: int) -> int:
    print(f"One ({i}, blocking)")
    time.sleep(1)  # keeps the loop: nothing else runs for this second
    print(f"Two ({i}, blocking)")
    return i


def count_sync(i: int) -> int:
    print(f"One ({i}, sync)")
    time.sleep(1)
    print(f"Two ({i}, sync)")
    return i


def timed(label: str, fn: Callable[[int], Any], workers: int | None = None) -> anypool.PoolStats:
    t0 = time.perf_counter()
    with anypool.Pool("auto", workers=workers) as pool:
        results = list(pool.map(fn, range(3)))
    print(f"{label}: results {results} in {time.perf_counter() - t0:.2f} s")
    return pool.stats


def main() -> None:
    logging.basicConfig(format="  log: %(message)s")
    timed("gather of 3 x count() with asyncio.sleep(1)", count)
    timed("3 x count() with time.sleep(1) inside the coroutine", count_blocking)
    # workers=3: one thread per sleep.  The default is the CPU count, so on a
    # machine with fewer than three CPUs the third call would wait for a thread
    # and the whole would take two seconds.
    stats = timed("3 x count_sync() with time.sleep(1), a plain function", count_sync, workers=3)
    print(f"auto chose for count_sync: {stats.choices['count_sync']}")


if __name__ == "__main__":
    main()
