"""Processes talking through a queue: the writer/reader pair, done with anypool.

Seed note 004: the parent makes a ``multiprocessing.Queue``; a writer
process puts 'A', 'B', 'C' (sleeping a random moment between them); a
reader process loops forever on ``q.get()``; the parent joins the writer
and must ``terminate()`` the reader, since its loop never ends.

Two anypool counterparts:

1. **Results flow back.**  Most queues between processes exist only to
   carry results to whoever reads them.  A pool does that itself: the
   writer becomes a task per value on a worker process, and the parent
   reads the values with ``imap_unordered`` as they are ready.  No queue,
   no reader loop, nothing to terminate.
2. **An explicit queue between two running tasks**, when they really must
   talk while both run: a ``multiprocessing.Manager().Queue()`` can be
   passed to tasks (a plain ``multiprocessing.Queue`` can only be inherited
   by processes the queue's owner starts itself, and pool workers are
   already running).  The reader stops on a sentinel instead of being
   terminated, so it returns what it read.

Run: ``python examples/queue_ipc.py``
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from typing import Any

import anypool

STOP = None  # the sentinel that ends the reader's loop


def produce(value: str) -> tuple[str, int]:
    """The writer's work for one value; its result is what it used to put on the queue."""
    time.sleep(random.random() * 0.3)
    return value, os.getpid()


def write(q: Any) -> int:
    print(f"Process to write: {os.getpid()}", flush=True)
    for value in ["A", "B", "C"]:
        print(f"Put {value} to queue...", flush=True)
        q.put(value)
        time.sleep(random.random() * 0.3)
    q.put(STOP)
    return os.getpid()


def read(q: Any) -> tuple[int, list[str]]:
    print(f"Process to read: {os.getpid()}", flush=True)
    got = []
    while (value := q.get(True)) is not STOP:
        print(f"Get {value} from queue.", flush=True)
        got.append(value)
    return os.getpid(), got


def main() -> None:
    with anypool.Pool("process", workers=2) as pool:
        print("-- results flow back: no queue --")
        for value, pid in pool.imap_unordered(produce, ["A", "B", "C"], chunksize=1):
            print(f"Get {value} (made in process {pid}).")

        print("-- a Manager queue between two running tasks --")
        try:
            pool.submit(read, multiprocessing.Queue())
        except anypool.SerializationError as exc:
            print(f"a plain multiprocessing.Queue is refused at submit: {exc}")
        with multiprocessing.Manager() as manager:
            q = manager.Queue()
            reader = pool.submit(read, q)  # starts first and waits on the queue
            writer = pool.submit(write, q)
            writer_pid = writer.result()
            reader_pid, got = reader.result()
        print(f"reader got {got} and returned by itself (no terminate); "
              f"writer and reader in two processes: {writer_pid != reader_pid}")


if __name__ == "__main__":
    main()
