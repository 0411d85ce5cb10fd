"""Ten thousand coroutines on one thread, waiting at once.

Seed note 002: starting a coroutine costs a function call and it uses little
memory while it waits ("under 1 KB"), so one CPU handles tens of thousands
of them; threads cost far more each, and the system cannot add them without
limit.

The anypool way: ``anypool.map`` over a coroutine function runs it on the
``async`` backend (one event loop thread), up to 10,000 coroutines at a
time by default.  Here 10,000 simulated network waits of one second each
finish in about one second.  For comparison, 1,000 of the same waits run
as blocking calls on 1,000 threads.  Memory is the growth of the process's
resident size while everything waits, divided by the number of waits.

Run: ``python examples/many_coroutines.py``
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psutil

import anypool

N = 10_000
THREADS = 1_000
peak_rss = 0


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


async def fetch(i: int) -> int:
    """A network request that takes one second to answer."""
    global peak_rss
    await asyncio.sleep(1)
    if i == 0:  # the first to wake up: every other one is still waiting
        peak_rss = rss()
    return i


def fetch_blocking(i: int) -> int:
    global peak_rss
    time.sleep(1)
    if i == 0:
        peak_rss = rss()
    return i


def measure(label: str, fn: Callable[[int], Any], n: int, **pool_args: Any) -> None:
    base = rss()
    t0 = time.perf_counter()
    results = anypool.map(fn, range(n), **pool_args)
    took = time.perf_counter() - t0
    grew = max(0, peak_rss - base)
    print(f"{label}: {took:.2f} s for {len(results):,} results; "
          f"+{grew / 2**20:.1f} MiB while waiting, about {grew / n:,.0f} bytes each")


def main() -> None:
    measure(f"{N:,} coroutines waiting 1 s each", fetch, N)
    measure(f"{THREADS:,} threads waiting 1 s each", fetch_blocking, THREADS,
            backend="thread", workers=THREADS)


if __name__ == "__main__":
    main()
