"""The bank balance guarded by a ``Lock``: threads share memory, processes do not.

Seed note 004: two threads each deposit and withdraw (5 and 8) 100,000
times on a global ``balance``; ``lock.acquire()``/``release()`` around the
change keep the result at 0.  The note's point: threads share every
variable, so two of them can interleave a read-modify-write; processes each
have their own copy.

The anypool way: the same functions run as two tasks on the ``thread``
backend, with the same ``threading.Lock``: a pool changes where functions
run, not what they share.  Three runs show it:

* with the lock: 0, every time;
* without it: the interleaving can lose updates.  (On CPython the
  interpreter only switches threads at calls and loop jumps, so the
  seed's exact ``balance = balance + n`` happens to be safe; this version
  computes the new value in a function call, as real code does, and
  shortens the switch interval so the race shows within a second.  Whether
  it shows on a given run is chance: that is the bug.)
* on the ``process`` backend: each worker process changes *its own* copy
  of ``balance``; the parent's stays 0, with or without a lock.

Run: ``python examples/bank_balance.py``
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

import anypool

balance = 0
lock = threading.Lock()


def add(a: int, b: int) -> int:
    return a + b


def change_it(n: int) -> None:
    # deposit first, then withdraw: the result should be 0
    global balance
    balance = add(balance, n)
    balance = add(balance, -n)


def run_thread(n: int) -> None:
    for _ in range(100_000):
        lock.acquire()  # take the lock first
        try:
            change_it(n)  # change it safely
        finally:
            lock.release()  # always give it back


def run_thread_unlocked(n: int) -> None:
    for _ in range(100_000):
        change_it(n)


def deposit_only(n: int) -> tuple[int, int]:
    """In a worker process: deposit without withdrawing, report this process's balance."""
    global balance
    for _ in range(1000):
        balance += n
    time.sleep(0.2)  # long enough that the other task goes to the other worker
    return os.getpid(), balance


def run(label: str, target: Callable[[int], None]) -> None:
    global balance
    balance = 0
    with anypool.Pool("thread", workers=2) as pool:
        t1 = pool.submit(target, 5)
        t2 = pool.submit(target, 8)
        t1.result()
        t2.result()
    print(f"{label}: balance = {balance}")


def main() -> None:
    sys.setswitchinterval(1e-5)  # switch threads often, so a race shows quickly
    run("two threads with the lock", run_thread)
    run("two threads without the lock", run_thread_unlocked)

    global balance
    balance = 0
    with anypool.Pool("process", workers=2) as pool:
        a = pool.submit(deposit_only, 5)
        b = pool.submit(deposit_only, 8)
        (pid_a, in_a), (pid_b, in_b) = a.result(), b.result()
    print(f"two processes: worker {pid_a} has balance {in_a}, worker {pid_b} has {in_b}, "
          f"this process still has {balance}")


if __name__ == "__main__":
    main()
