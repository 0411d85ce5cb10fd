"""Master and workers on several machines: the seed's "distributed processes", on a Dask cluster.

Seed note 004: the master-worker design (a master hands out tasks, workers
run them) and "distributed processes" (the same across machines; the note
has the heading only).

The anypool way: a cluster is Dask's, started with Dask's own commands
(``dask scheduler`` on one machine, ``dask worker tcp://...`` on each of the
others), and this script, the master, only changes the pool's backend:
``anypool.Pool(backend="dask", address="tcp://scheduler:8786")``.  The
code that submits work and reads results is the same as on threads or
processes.  To keep the example on one machine, the scheduler and two
workers are started here as separate processes on 127.0.0.1, exactly as
they would be started on other hosts, and stopped at the end.

(Without ``address=`` the pool starts a local cluster of its own, which is
the quick way to try the backend.  Dask runs any code it is sent: keep
its ports on a trusted network, or use TLS.)

Run: ``python examples/master_worker_dask.py``  (needs ``pip install 'anypool[dask]'``)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import anypool


def dask_command() -> list[str]:
    """The `dask` command of this interpreter's environment."""
    here = Path(sys.executable).parent / "dask"
    if here.exists():
        return [str(here)]
    found = shutil.which("dask")
    if found is None:
        raise SystemExit("the `dask` command is not installed: pip install 'anypool[dask]'")
    return [found]


def start_cluster(tmp: str) -> tuple[str, list[subprocess.Popen[bytes]]]:
    """Start a scheduler and two workers as their own processes; return the scheduler's address.

    On real machines the workers are given the scheduler's address
    (``dask worker tcp://host:8786``); here they read it from the file the
    scheduler writes, so all three start at once.
    """
    dask = dask_command()
    sched_file = os.path.join(tmp, "scheduler.json")
    log = open(os.path.join(tmp, "cluster.log"), "wb")  # noqa: SIM115 - lives as long as the cluster
    procs = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", sched_file], stdout=log, stderr=log)]
    for name in ("worker-1", "worker-2"):
        procs.append(subprocess.Popen([*dask, "worker", "--scheduler-file", sched_file, "--name", name,
                                       "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard",
                                       "--no-nanny"], stdout=log, stderr=log))
    deadline = time.monotonic() + 30
    while not os.path.exists(sched_file) or not os.path.getsize(sched_file):
        if time.monotonic() > deadline or procs[0].poll() is not None:
            stop_cluster(procs)
            raise SystemExit(f"the scheduler did not start; see {log.name}")
        time.sleep(0.05)
    return json.loads(Path(sched_file).read_text())["address"], procs


def stop_cluster(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop the workers, then the scheduler (a worker whose scheduler is gone first retries for a while)."""
    for group in (procs[1:], procs[:1]):
        for p in group:
            p.send_signal(signal.SIGTERM)
        for p in group:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def where(task: int) -> str:
    """A task run by a worker: says which worker process (and host) ran it."""
    time.sleep(0.05)
    return f"{socket.gethostname()}:{os.getpid()}"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        address, procs = start_cluster(tmp)
        try:
            print(f"scheduler at {address}, started with `dask scheduler` and two `dask worker`s")
            with anypool.Pool(backend="dask", address=address, workers=2) as pool:
                print(f"cluster up in {time.perf_counter() - t0:.1f} s")
                t1 = time.perf_counter()
                ran_on = Counter(pool.map(where, range(20), chunksize=1))
                print(f"master handed out 20 tasks in {time.perf_counter() - t1:.2f} s; "
                      f"{len(ran_on)} worker processes ran them: {sorted(ran_on.values())}")
                try:
                    pool.submit(int, "not a number").result()
                except ValueError as exc:
                    print(f"a task's error comes back as itself: ValueError: {exc}")
                print(f"pool stats: {pool.stats.done} done, {pool.stats.failed} failed")
        finally:
            t2 = time.perf_counter()
            stop_cluster(procs)
            print(f"cluster stopped in {time.perf_counter() - t2:.1f} s")
    print(f"master pid {os.getpid()}, workers were {sorted(ran_on)}")


if __name__ == "__main__":
    main()
