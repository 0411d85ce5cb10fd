"""``Pool(4).apply_async`` over five tasks, done with anypool.

Seed note 004: a ``multiprocessing.Pool(4)`` runs five ``long_time_task``
calls (each sleeps a random 0-3 s); the fifth waits for a free worker;
``close()`` and ``join()`` wait for all.

The anypool way: ``pool.submit`` is ``apply_async`` (and returns a real
``Future``: ``result()``, ``done()``, ``add_done_callback``, ``await``);
leaving the ``with`` block is ``close()`` + ``join()``.  The printout shows
four tasks starting at once on four worker processes and the fifth
starting when the first of them is done.  Sleeps are 0.2-1.5 s here, and
seeded, so every run shows the same schedule.

Run: ``python examples/pool_apply_async.py``
"""

from __future__ import annotations

import os
import random
import time

import anypool


def long_time_task(name: int, seconds: float, t0: float) -> tuple[int, float, float]:
    start = time.time()
    print(f"Run task {name} ({os.getpid()}) at +{start - t0:.1f} s...", flush=True)
    time.sleep(seconds)
    end = time.time()
    print(f"Task {name} runs {end - start:0.2f} seconds.", flush=True)
    return os.getpid(), start - t0, end - start


def main() -> None:
    print(f"Parent process {os.getpid()}.")
    rng = random.Random(4)
    with anypool.Pool("process", workers=4) as p:
        list(p.map(abs, range(4), chunksize=1))  # start the four workers before the clock
        t0 = time.time()
        futures = [p.submit(long_time_task, i, 0.2 + rng.random() * 1.3, t0) for i in range(5)]
        print("Waiting for all subprocesses done...")
    print("All subprocesses done.")
    runs = [f.result() for f in futures]
    first_end = min(start + took for _, start, took in runs[:4])
    print(f"{len({pid for pid, _, _ in runs})} worker processes ran 5 tasks; "
          f"task 4 started at +{runs[4][1]:.1f} s, when the first of the others ended (+{first_end:.1f} s); "
          f"all done after {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
