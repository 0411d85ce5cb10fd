"""Processes running coroutines: IO-heavy work that also needs more than one core.

Each task waits on the "network" (asyncio.sleep stands in for an HTTP call),
then parses what came back, which costs real CPU.  One event loop overlaps
the waits but parses on one core; processes parse in parallel but block on
each wait.  ``backend="process+async"`` runs an event loop in each of N
processes: the waits overlap *and* the parsing uses every core.

Run:  python examples/process_async.py [N]
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time

import anypool

WAIT = 0.05  # seconds of simulated network latency per request


def parse(i: int) -> int:
    """The CPU-heavy part: decode a JSON document and hash its fields (~1 ms)."""
    doc = json.dumps({"id": i, "rows": [{"k": j, "v": "x" * 20} for j in range(150)]})
    total = 0
    for row in json.loads(doc)["rows"]:
        total += hashlib.md5(f"{row['k']}{row['v']}".encode()).digest()[0]
    return total


async def fetch_and_parse(i: int) -> int:
    await asyncio.sleep(WAIT)  # the request
    return parse(i)  # the response's parsing


def fetch_and_parse_blocking(i: int) -> int:
    time.sleep(WAIT)
    return parse(i)


def timed(label: str, fn: object, n: int, **pool_args: object) -> float:
    t = time.perf_counter()
    results = anypool.map(fn, range(n), **pool_args)  # type: ignore[call-overload]
    took = time.perf_counter() - t
    assert results == [parse(i) for i in range(n)] if n <= 200 else len(results) == n
    print(f"  {label:<44} {n:>6} tasks in {took:6.2f} s  ({n / took:8.0f} tasks/s)")
    return n / took


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    cores = len(os.sched_getaffinity(0))
    print(f"{n} requests of {WAIT * 1e3:.0f} ms, each followed by a ~1 ms parse, on {cores} cores:")
    both = timed(f"process+async ({cores} processes x 1000 loops)", fetch_and_parse, n,
                 backend="process+async", workers=cores, concurrency=1000)
    loop = timed("async (one event loop)", fetch_and_parse, n, backend="async")
    # blocking waits make the process pool crawl: measure a sample and project
    sample = max(cores * 20, n // 50)
    procs = timed(f"process ({cores} processes, blocking waits)", fetch_and_parse_blocking, sample,
                  backend="process", workers=cores)
    print(f"process+async is {both / loop:.1f}x async alone and {both / procs:.0f}x process alone")


if __name__ == "__main__":
    main()
