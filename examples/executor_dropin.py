"""Code written for ``ThreadPoolExecutor`` / ``ProcessPoolExecutor`` running unchanged on ``anypool.Pool``.

Seed note 002: ``concurrent.futures`` gives a pool of threads
(``ThreadPoolExecutor``, five workers each taking the next task) and a pool
of processes (``ProcessPoolExecutor``, each with its own GIL, so CPU-bound
code runs in parallel).

``anypool.Pool`` *is* a ``concurrent.futures.Executor``: the functions
below take "an executor" and use only the standard API (``submit``,
``map`` with ``timeout=``, ``as_completed``, ``wait``, ``with``), and give
the same answers on the standard pools and on anypool's.  ``max_workers=``
is accepted as it is.  Two deliberate differences, not exercised here:
anypool's ``map`` submits lazily (a bounded window, not the whole input at
once), and a crashed worker fails only its own task instead of breaking
the pool.

Run: ``python examples/executor_dropin.py``
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import time
from collections.abc import Callable

import anypool

URLS = [f"https://example.org/page/{i}" for i in range(10)]
PRIMES = [10_000_000_000_037, 10_000_000_000_051, 10_000_000_000_099, 10_000_000_000_129,
          10_000_000_000_183, 10_000_000_000_259, 10_000_000_000_267, 10_000_000_000_000]


def load_url(url: str) -> int:
    """Pretend to download ``url`` (0.2 s of waiting) and return its size."""
    time.sleep(0.2)
    return 1000 + 37 * int(url.rsplit("/", 1)[1])


def is_prime(n: int) -> bool:
    if n < 2 or n % 2 == 0:
        return n == 2
    return all(n % i for i in range(3, math.isqrt(n) + 1, 2))


def download_all(executor: cf.Executor) -> list[str]:
    """Stdlib-style code: submit everything, handle results as they complete."""
    lines = []
    futures = {executor.submit(load_url, url): url for url in URLS}
    for fut in cf.as_completed(futures, timeout=30):
        lines.append(f"{futures[fut]} is {fut.result()} bytes")
    return sorted(lines)


def check_primes(executor: cf.Executor) -> list[str]:
    """Stdlib-style code: map with a deadline, then wait on two more futures."""
    answers = executor.map(is_prime, PRIMES, timeout=60)
    lines = [f"{n} is prime: {p}" for n, p in zip(PRIMES, answers, strict=True)]
    done, not_done = cf.wait([executor.submit(is_prime, 97), executor.submit(is_prime, 91)])
    lines.append(f"wait: {len(done)} done, {len(not_done)} not done")
    return lines


def run(job: Callable[[cf.Executor], list[str]], make: Callable[[], cf.Executor]) -> tuple[list[str], float]:
    with make() as executor:
        job(executor)  # warm-up: workers started before the clock runs
        t0 = time.perf_counter()
        out = job(executor)
        return out, time.perf_counter() - t0


def main() -> None:
    for title, job, name, stdlib, ours in (
        ("10 downloads on 5 threads", download_all, "ThreadPoolExecutor",
         lambda: cf.ThreadPoolExecutor(max_workers=5),
         lambda: anypool.Pool("thread", max_workers=5)),
        ("8 prime checks on 2 processes", check_primes, "ProcessPoolExecutor",
         lambda: cf.ProcessPoolExecutor(max_workers=2),
         lambda: anypool.Pool("process", max_workers=2)),
    ):
        expected, t_std = run(job, stdlib)
        got, t_any = run(job, ours)
        print(f"{title}: {name} {t_std:.2f} s, anypool.Pool {t_any:.2f} s, "
              f"same output: {got == expected}")
        for line in got[:3]:
            print(f"  {line}")


if __name__ == "__main__":
    main()
