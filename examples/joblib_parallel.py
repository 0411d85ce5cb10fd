"""joblib's ``Parallel(n_jobs=...)(delayed(func)(para1, para2) for ...)``, done with anypool.

Seed note 000 ends with::

    Parallel(n_jobs=30)(delayed(func)(para1, para2)
                        for para2 in range(100) if int(para2) % 5 > 2)

The anypool counterpart is ``anypool.map(func, ...)`` (or ``Pool.map``):
the generator of arguments is read lazily, at most a bounded number of
calls are in flight, and the results come back as a list in input order,
as joblib's do.  ``workers=`` is ``n_jobs``; ``backend="auto"`` measures
``func`` and picks threads or processes (joblib's default is processes).
Two spellings are shown: zipping two iterables (``map`` calls
``func(a, b)``), and ``Pool.submit`` per call for code that builds
``delayed`` calls one at a time.  If joblib is installed, its result is
computed too and compared.

Run: ``python examples/joblib_parallel.py``
"""

from __future__ import annotations

import itertools
import time

import anypool


def func(para1: int, para2: int) -> int:
    """Some work on two parameters (a few milliseconds of waiting, then arithmetic)."""
    time.sleep(0.01)
    return para1 * 1000 + para2


def main() -> None:
    para1 = 7
    wanted = [para2 for para2 in range(100) if int(para2) % 5 > 2]
    expected = [func(para1, p) for p in wanted]

    t0 = time.perf_counter()
    results = anypool.map(func, itertools.repeat(para1),
                          (para2 for para2 in range(100) if int(para2) % 5 > 2), workers=30)
    took = time.perf_counter() - t0
    print(f"anypool.map(func, repeat(para1), generator, workers=30): {len(results)} results "
          f"in {took:.2f} s (serially: {len(wanted) * 0.01:.2f} s of waiting)")
    print(f"first results: {results[:4]}; same as a plain loop: {results == expected}")

    with anypool.Pool(workers=30) as pool:
        futures = [pool.submit(func, para1, para2) for para2 in range(100) if int(para2) % 5 > 2]
        by_submit = [f.result() for f in futures]
        print(f"Pool.submit one call at a time: same results: {by_submit == expected}; "
              f"auto chose {pool.stats.choices['func']}")

    try:
        from joblib import Parallel, delayed  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        print("joblib is not installed here, so its side of the comparison is skipped")
        return
    t0 = time.perf_counter()
    by_joblib = Parallel(n_jobs=30)(delayed(func)(para1, para2)
                                    for para2 in range(100) if int(para2) % 5 > 2)
    print(f"joblib Parallel(n_jobs=30): {time.perf_counter() - t0:.2f} s, "
          f"same results: {by_joblib == expected}")


if __name__ == "__main__":
    main()
