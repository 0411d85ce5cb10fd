"""Starting a child process and waiting for it: ``multiprocessing.Process`` done with anypool.

Seed note 004: ``Process(target=run_proc, args=('test',))``, ``p.start()``,
``p.join()``; the child prints its pid, the parent prints its own.  (The
note also explains ``os.fork()``: the call returns twice, the child's
``getppid()`` is the parent.)

The anypool way: ``pool.submit(run_proc, 'test')`` on the ``process``
backend starts the work in a worker process and ``result()`` waits for it
and brings back its return value (or its exception, with the worker's
traceback), which ``join()`` cannot.  The worker is reused for later tasks
instead of a new process per call.  A script with a single thread gets its
first workers forked from it, as ``Process.start()`` does, so the child's
parent is this script; with other threads running, workers come from
multiprocessing's fork server and their parent is that server.  The
printout shows both pids.

Run: ``python examples/process_start_join.py``
"""

from __future__ import annotations

import os

import anypool


def run_proc(name: str) -> int:
    print(f"Run child process {name} ({os.getpid()}), its parent is {os.getppid()}...", flush=True)
    return os.getpid()


def main() -> None:
    print(f"Parent process {os.getpid()}.")
    with anypool.Pool("process", workers=1) as pool:
        print("Child process will start.")
        fut = pool.submit(run_proc, "test")  # p.start()
        child = fut.result()  # p.join(), with the return value
        again = pool.submit(run_proc, "test again").result()
    print(f"Child process end: ran in pid {child} (not ours: {child != os.getpid()}); "
          f"the second task reused it: {again == child}.")


if __name__ == "__main__":
    main()
