"""``threading.local``: each worker's own variables, as ``anypool.worker_state()`` and ``initializer``.

Seed note 004: ``local_school = threading.local()`` is one global whose
attributes each thread sees on its own; ``process_thread(name)`` binds
``local_school.student`` and ``process_student()`` reads it without the
name being passed down.

The anypool way: ``anypool.worker_state()`` returns a dict private to the
worker running the current task (a thread on ``thread``, a process on
``process``, the event loop on ``async``).  The seed's code is the same
with the dict in place of the ``local`` object.  The common use is the
pool's ``initializer``: it runs once in each worker and puts something
there that must not be shared, here a SQLite connection (SQLite refuses a
connection used from a thread other than its creator's), which every task
on that worker then reuses.  The same code runs on threads and on
processes.

Run: ``python examples/thread_local.py``
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import Counter

import anypool


def process_student() -> str:
    std = anypool.worker_state()["student"]  # the current worker's student
    return f"Hello, {std} (in {threading.current_thread().name})"


def process_thread(name: str) -> str:
    anypool.worker_state()["student"] = name  # bind it for this worker
    time.sleep(0.1)  # the other worker binds its own meanwhile
    return process_student()


def open_connection(path: str) -> None:
    """The initializer: one connection per worker, kept in its state."""
    db = sqlite3.connect(path)
    db.execute("create table if not exists seen (worker text, item int)")
    anypool.worker_state()["db"] = db


def record(item: int) -> str:
    db = anypool.worker_state()["db"]
    worker = f"{os.getpid()}/{threading.current_thread().name}"
    db.execute("insert into seen values (?, ?)", (worker, item))
    db.commit()
    time.sleep(0.01)
    return worker


def main() -> None:
    with anypool.Pool("thread", workers=2) as pool:
        for line in pool.map(process_thread, ["Alice", "Bob"]):
            print(line)

    for backend in ("thread", "process"):
        with anypool.Pool(backend, workers=2, initializer=open_connection, initargs=(":memory:",)) as pool:
            workers = Counter(pool.map(record, range(40), chunksize=1))
        print(f"{backend}: 40 inserts through {len(workers)} per-worker connections: "
              f"{sorted(workers.values())} inserts each")

    shared = sqlite3.connect(":memory:")
    with anypool.Pool("thread", workers=1) as pool:
        try:
            pool.submit(shared.execute, "select 1").result()
        except sqlite3.ProgrammingError as exc:
            print(f"one connection shared with a worker thread instead: {exc}")


if __name__ == "__main__":
    main()
