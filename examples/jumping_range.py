"""``jumping_range``: a generator steered with ``send``, and generator-based coroutines on a pool.

Seed note 004: ``jump = yield index`` hands ``index`` out and takes back
whatever the caller passes to ``send()``; ``next()`` sends ``None`` (a jump
of 1).  ``next, send(2), next, send(-1)`` on ``jumping_range(5)`` gives
0, 2, 3, 2.  That is the mechanism coroutines were first built on
(PEP 342): a generator paused at ``yield`` that someone else resumes.

anypool does not replace ``send``: steering one generator is control flow
in one thread, and the seed's code runs unchanged (first part).  What the
pool runs is the other use of the same machinery: generator-based
coroutines, written with ``types.coroutine`` and ``yield from``, where the
*event loop* does the resuming.  ``anypool`` treats them as coroutine
functions (``backend="auto"`` sends them to ``async``), so five of them
that each wait three times 0.2 s run side by side in about 0.6 s.

Run: ``python examples/jumping_range.py``
"""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Generator
from typing import Any

import anypool


def jumping_range(n: int) -> Generator[int, int | None, None]:
    index = 0
    while index < n:
        jump = yield index  # what send() passes in lands here
        if jump is None:
            jump = 1
        index += jump


@types.coroutine
def jumping_wait(name: str, n: int) -> Generator[Any, None, list[int]]:
    """A generator-based coroutine: steers a jumping_range with send(2), waiting 0.2 s at each stop."""
    seen = []
    walker = jumping_range(n)
    try:
        index = next(walker)
        while True:
            seen.append(index)
            print(f"  {name} at {index}")
            yield from asyncio.sleep(0.2)  # the event loop resumes us (with send) when the wait is over
            index = walker.send(2)
    except StopIteration:
        return seen


def main() -> None:
    itr = jumping_range(5)
    print("the seed's next/send/next/send:", next(itr), itr.send(2), next(itr), itr.send(-1))

    print("five generator-based coroutines on the pool:")
    t0 = time.perf_counter()
    with anypool.Pool() as pool:
        walks = list(pool.map(jumping_wait, "ABCDE", [6] * 5))
    took = time.perf_counter() - t0
    print(f"walks {walks[0]} (x{len(walks)}) in {took:.2f} s, side by side "
          f"(one after another: {5 * 3 * 0.2:.1f} s); backend {pool.stats.backend}, "
          f"coroutines run: {pool.stats.done}")
    print(f"auto chose {pool.stats.choices['jumping_wait']}")


if __name__ == "__main__":
    main()
