"""Per-task overhead of anypool's ``dask`` backend against Dask's own ``client.map``.

One ``LocalCluster`` (loopback, ``--workers`` single-threaded worker
processes) serves every variant, so start-up is not measured; each variant
runs ``--tasks`` trivial tasks, ``--runs`` times, interleaved, and the
median wall time is reported with the ratio ``dask time / anypool time``
(above 1.0: anypool is faster).

    client.map + gather    futs = client.map(inc, xs, pure=False); client.gather(futs)
    anypool.map            list(pool.map(inc, xs))          (batched by measured task time)
    pool.map chunksize=1   list(pool.map(inc, xs, chunksize=1)) (one Dask task per item)
    submit per task        [f.result() for f in [pool.submit(inc, x) for x in xs]]

Run: ``.venv/bin/python benchmarks/dask_overhead.py [--tasks 1000 --runs 5 --workers 2]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from distributed import Client, LocalCluster

import anypool


def inc(x: int) -> int:
    return x + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    n = args.tasks
    xs = list(range(n))
    expected = [x + 1 for x in xs]

    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster, set_as_default=False) as client, \
            anypool.Pool("dask", address=cluster.scheduler_address) as pool:

        def dask_map() -> list[int]:
            return list(client.gather(client.map(inc, xs, pure=False)))

        def anypool_map() -> list[int]:
            return list(pool.map(inc, xs))

        def anypool_map_1() -> list[int]:
            return list(pool.map(inc, xs, chunksize=1))

        def anypool_submit() -> list[int]:
            futs = [pool.submit(inc, x) for x in xs]
            return [f.result() for f in futs]

        variants: dict[str, Callable[[], list[int]]] = {
            "client.map + gather": dask_map,
            "anypool.map": anypool_map,
            "pool.map chunksize=1": anypool_map_1,
            "submit per task": anypool_submit,
        }
        for fn in variants.values():  # warm up: imports, pickles, worker caches
            assert fn() == expected
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.runs):
            for name, fn in variants.items():
                t = time.perf_counter()
                got = fn()
                times[name].append(time.perf_counter() - t)
                assert got == expected, name

    base = statistics.median(times["client.map + gather"])
    print(f"{n} tasks x {args.runs} runs, {args.workers} single-threaded Dask workers")
    print(f"{'variant':<24}{'median s':>10}{'per task':>12}{'ratio':>8}   all runs (s)")
    for name, ts in times.items():
        med = statistics.median(ts)
        runs = " ".join(f"{t:.3f}" for t in ts)
        print(f"{name:<24}{med:>10.3f}{med / n * 1e6:>10.0f}us{base / med:>7.2f}x   {runs}")


if __name__ == "__main__":
    main()
