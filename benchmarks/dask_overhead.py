"""Per-task overhead of anypool's ``dask`` backend against Dask's own ``client.map``.

One ``LocalCluster`` (loopback, ``--workers`` single-threaded worker
processes) serves every variant, so start-up is not measured.  Two
workloads: ``--tasks`` trivial tasks (``inc``: pure overhead), and
``--slow-tasks`` tasks sleeping ``--slow`` seconds (long enough that anypool
sends each as its own Dask task).  Each variant runs ``--runs`` times,
interleaved with the others; the median wall time is reported with the
ratio ``dask time / anypool time`` (above 1.0: anypool is faster).

    client.map + gather    futs = client.map(f, xs, pure=False); client.gather(futs)
    anypool.map            list(pool.map(f, xs))                (batched by measured task time)
    pool.map chunksize=1   list(pool.map(f, xs, chunksize=1))   (one Dask task per item)
    submit per task        [f.result() for f in [pool.submit(f, x) for x in xs]]

Run: ``.venv/bin/python benchmarks/dask_overhead.py [--tasks 1000 --runs 5 --workers 2]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from distributed import Client, LocalCluster

import anypool


def inc(x: int) -> int:
    return x + 1


def nap(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x + 1


def run(client: Client, pool: anypool.Pool, fn: Callable[..., int], n: int, runs: int,
        **kw: Any) -> dict[str, list[float]]:
    xs = list(range(n))
    expected = [x + 1 for x in xs]
    variants: dict[str, Callable[[], list[int]]] = {
        "client.map + gather": lambda: list(client.gather(client.map(fn, xs, pure=False, **kw))),
        "anypool.map": lambda: list(pool.map(partial(fn, **kw), xs)),
        "pool.map chunksize=1": lambda: list(pool.map(partial(fn, **kw), xs, chunksize=1)),
        "submit per task": lambda: [f.result() for f in [pool.submit(fn, x, **kw) for x in xs]],
    }
    for name, variant in variants.items():  # warm up: imports, pickles, measured task times
        assert variant() == expected, name
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(runs):
        for name, variant in variants.items():
            t = time.perf_counter()
            got = variant()
            times[name].append(time.perf_counter() - t)
            assert got == expected, name
    return times


def report(title: str, n: int, times: dict[str, list[float]]) -> None:
    base = statistics.median(times["client.map + gather"])
    print(title)
    print(f"  {'variant':<22}{'median s':>10}{'per task':>12}{'ratio':>8}   all runs (s)")
    for name, ts in times.items():
        med = statistics.median(ts)
        runs = " ".join(f"{t:.3f}" for t in ts)
        print(f"  {name:<22}{med:>10.3f}{med / n * 1e6:>10.0f}us{base / med:>7.2f}x   {runs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--slow-tasks", type=int, default=100)
    parser.add_argument("--slow", type=float, default=0.05)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster, set_as_default=False) as client, \
            anypool.Pool("dask", address=cluster.scheduler_address) as pool:
        tiny = run(client, pool, inc, args.tasks, args.runs)
        slow = run(client, pool, nap, args.slow_tasks, args.runs, seconds=args.slow)
    print(f"{args.workers} single-threaded Dask workers on 127.0.0.1, median of {args.runs} runs")
    report(f"{args.tasks} trivial tasks", args.tasks, tiny)
    report(f"{args.slow_tasks} tasks of {args.slow * 1e3:g} ms", args.slow_tasks, slow)


if __name__ == "__main__":
    main()
