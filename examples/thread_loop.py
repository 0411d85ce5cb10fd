"""A thread that loops and sleeps, started and joined: ``threading.Thread`` done with anypool.

Seed note 004: ``threading.Thread(target=loop, name='LoopThread')`` counts
to five with a one-second sleep per step, printing the thread's name;
``t.start()`` puts it in the background and ``t.join()`` waits for it.
Note 001 shows the same with a ``Thread`` subclass overriding ``run``.

The anypool way: ``pool.submit(loop)`` is ``start()`` (it returns at once
with a future) and ``future.result()`` is ``join()``, which also hands back
the function's return value and re-raises its exception, which a
``Thread`` cannot do.  Two loops are started here to show that they
interleave on two worker threads.  (Steps are 0.2 s, not the note's 1 s.)

Run: ``python examples/thread_loop.py``
"""

from __future__ import annotations

import threading
import time

import anypool


def loop(tag: str) -> int:
    name = threading.current_thread().name
    print(f"thread {name} is running {tag}...")
    n = 0
    while n < 5:
        n = n + 1
        print(f"thread {name} >>> {tag} {n}")
        time.sleep(0.2)
    print(f"thread {name} ended {tag}.")
    return n


def main() -> None:
    print(f"thread {threading.current_thread().name} is running...")
    t0 = time.perf_counter()
    with anypool.Pool("thread", workers=2) as pool:
        a = pool.submit(loop, "A")  # t.start()
        b = pool.submit(loop, "B")
        print("both loops started; the main thread is free meanwhile")
        steps = a.result() + b.result()  # t.join(), with the return values
    print(f"joined: {steps} steps in {time.perf_counter() - t0:.2f} s "
          f"(one after another: {2 * 5 * 0.2:.1f} s)")
    print(f"thread {threading.current_thread().name} ended.")


if __name__ == "__main__":
    main()
