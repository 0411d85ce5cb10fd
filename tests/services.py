"""Helper processes that live for the whole test session, and how the leak check knows them.

A session service (a Dask scheduler and its workers) outlives every test by
design, and Dask's nannies *replace* a worker a test kills, so the new
worker appears in the middle of a test.  ``SERVICE_PIDS`` holds the pids of
the processes the session started; the autouse leak check in ``conftest.py``
ignores them and every process below them, whatever their command line.

:class:`DaskCluster` runs the real ``dask scheduler`` and ``dask worker``
commands on 127.0.0.1 (random ports, no dashboard), each in its own session
with a parent-death signal, so nothing survives even a killed pytest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

SERVICE_PIDS: set[int] = set()
"""Pids of session-long helper processes: they and their descendants are not leaks."""

# `--no-dashboard` alone still leaves each process's HTTP server (health,
# metrics) on 0.0.0.0: the scheduler on :8787, workers on a random port
LOOPBACK_HTTP = ("--no-dashboard", "--dashboard-address", "127.0.0.1:0")

# Run a command with a parent-death signal (Linux): it gets SIGTERM when the
# process that started it dies, even by SIGKILL.  A launcher sets it and
# execs the command, rather than a preexec_fn, which is unsafe with threads.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "if sys.platform == 'linux':\n"
    "    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


def under_service(p: psutil.Process) -> bool:
    """True if ``p`` is a session service or was started by one."""
    if not SERVICE_PIDS:
        return False
    try:
        chain = [p, *p.parents()]
    except psutil.Error:
        return False
    return any(q.pid in SERVICE_PIDS for q in chain)


class DaskCluster:
    """A Dask scheduler and ``nworkers`` nanny-managed workers, started with Dask's own CLI."""

    def __init__(self, workdir: Path, nworkers: int = 2, nthreads: int = 2, port: int = 0) -> None:
        self.workdir = workdir
        self.port = port
        self.procs: list[subprocess.Popen[bytes]] = []
        tests = Path(__file__).resolve().parent
        self.env = dict(os.environ)
        # workers import task functions by reference, as the pool's own processes do
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(tests), str(tests / "backends"), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        # anypool's retries= decides about a task whose worker died, as on every backend
        self.env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = "0"
        self.dask = str(Path(sys.executable).with_name("dask"))
        self.address = self._start_scheduler()
        self.nworkers, self.nthreads = nworkers, nthreads
        self.nannies = self._start_workers()
        self.wait_for_workers(nworkers)

    def _start_workers(self) -> list[subprocess.Popen[bytes]]:
        return [
            self._start(
                "worker", self.address, "--host", "127.0.0.1", "--nthreads", str(self.nthreads),
                *LOOPBACK_HTTP, "--name", f"w{i}", "--memory-limit", "0", "--death-timeout", "30",
                "--local-directory", str(self.workdir / f"w{i}"),
            )
            for i in range(self.nworkers)
        ]

    def _start_scheduler(self) -> str:
        sched_file = self.workdir / f"scheduler-{len(self.procs)}.json"
        self.scheduler = self._start(
            "scheduler", "--host", "127.0.0.1", "--port", str(self.port), *LOOPBACK_HTTP,
            "--scheduler-file", str(sched_file),
        )
        return self._read_address(sched_file)

    def restart_scheduler(self) -> None:
        """SIGKILL the scheduler; start a new one at the same address (a fixed ``port``) and new workers.

        A worker whose scheduler connection breaks stops, and its nanny
        with it (distributed 2026.8), so the old workers end by themselves
        and new ones are started, as an operator would.
        """
        assert self.port, "a new scheduler can take the old one's address only on a fixed port"
        os.kill(self.scheduler.pid, signal.SIGKILL)
        self.scheduler.wait()
        assert self._start_scheduler() == self.address
        self.nannies = self._start_workers()

    def _start(self, *args: str) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{args[0]}-{len(self.procs)}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", _DIE_WITH_PARENT, self.dask, *args], env=self.env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.procs.append(proc)
        SERVICE_PIDS.add(proc.pid)
        return proc

    def _read_address(self, path: Path, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.scheduler.poll() is not None:
                raise RuntimeError(f"dask scheduler exited with {self.scheduler.returncode}")
            try:
                return str(json.loads(path.read_text())["address"])
            except (OSError, ValueError, KeyError):
                time.sleep(0.05)
        raise RuntimeError("dask scheduler did not write its address in time")

    def worker_pids(self) -> dict[str, int]:
        """Worker name → pid of the worker process (the nanny's child) now running."""
        from distributed import Client

        with Client(self.address, set_as_default=False, timeout=30) as client:
            info = client.run(os.getpid)
            names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
        return {str(names[a]): pid for a, pid in info.items()}

    def wait_for_workers(self, n: int, timeout: float = 60.0) -> None:
        """Block until ``n`` workers are connected to the scheduler."""
        from distributed import Client

        with Client(self.address, set_as_default=False, timeout=30) as client:
            client.wait_for_workers(n, timeout=timeout)

    def stop(self) -> None:
        """SIGTERM everything, then SIGKILL each process group that is still there."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 3.0  # a worker may be running an abandoned task
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its session: the nanny's worker too
            except ProcessLookupError:
                pass
            proc.wait()
            SERVICE_PIDS.discard(proc.pid)
