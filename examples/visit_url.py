"""``visit_url``: 2 s + 3 s one after another, both at once in 3 s, and five tasks at once.

Seed note 003: ``visit_url(url, response_time)`` waits with
``asyncio.sleep``.  Two ``asyncio.run`` calls in a row take 2 + 3 = 5 s;
``asyncio.gather`` of the two takes 3 s; ``asyncio.create_task`` for five of
them, then ``gather``, takes as long as one.  The note also says you cannot
call ``asyncio.run`` inside ``asyncio.run``.

The anypool way, from sync code: ``pool.submit`` returns a future at once
and the coroutine starts on the pool's own event loop, so "one after
another" is ``submit(...).result()`` twice and "at once" is submitting
both before waiting.  Inside a running loop the pool *attaches* to that
loop: ``await pool.submit(...)`` is the counterpart of ``create_task``, and
the blocking ``result()`` (the ``asyncio.run``-inside-``asyncio.run``
mistake) raises ``RuntimeError`` saying what to use instead of deadlocking.

(The five-task part uses 1 s waits instead of the note's 2 s to keep the
example under ten seconds.)

Run: ``python examples/visit_url.py``
"""

from __future__ import annotations

import asyncio
import time

import anypool

URL = "https://www.example.org"


async def visit_url(url: str, response_time: float) -> str:
    """Pretend to fetch ``url``: the server answers after ``response_time`` seconds."""
    await asyncio.sleep(response_time)
    return f"visited {url} in {response_time} s, got the response"


def one_after_another(pool: anypool.Pool) -> None:
    t0 = time.perf_counter()
    first = pool.submit(visit_url, URL, 2).result()  # waits 2 s before the next starts
    second = pool.submit(visit_url, URL, 3).result()
    print(first)
    print(second)
    print(f"one after another (2 s + 3 s): {time.perf_counter() - t0:.2f} s")


def at_once(pool: anypool.Pool) -> None:
    t0 = time.perf_counter()
    futures = [pool.submit(visit_url, URL, 2), pool.submit(visit_url, URL, 3)]  # both running now
    print([f.result() for f in futures])
    print(f"at once (2 s and 3 s): {time.perf_counter() - t0:.2f} s")


async def five_tasks() -> None:
    # Created inside a running loop, the pool runs its coroutines on this loop.
    async with anypool.Pool("async") as pool:
        t0 = time.perf_counter()
        futures = [pool.submit(visit_url, URL, 1) for _ in range(5)]  # like create_task
        for result in await asyncio.gather(*futures):  # anypool futures are awaitable
            print(result)
        print(f"5 tasks of 1 s each, awaited together: {time.perf_counter() - t0:.2f} s")
        unfinished = pool.submit(visit_url, URL, 0.1)
        try:
            unfinished.result()  # would block the very loop that must run it
        except RuntimeError as exc:
            print(f"blocking result() inside the loop refused: {exc}")
        await unfinished


def main() -> None:
    with anypool.Pool() as pool:  # auto: visit_url is a coroutine function -> async
        one_after_another(pool)
        at_once(pool)
        print(f"backend: {pool.stats.backend}, tasks done: {pool.stats.done}")
    asyncio.run(five_tasks())


if __name__ == "__main__":
    main()
