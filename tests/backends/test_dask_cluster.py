"""The ``dask`` backend on real Dask clusters.

Two kinds of cluster: the session's ``dask scheduler`` + two ``dask worker``
processes (the ``dask_cluster`` fixture, what ``address=`` users have), and
the ``LocalCluster`` a pool starts by itself when given no address.  The
shared behaviour is in ``test_contract.py`` (its ``dask`` flavor); here is
what is particular to Dask: a worker SIGKILLed mid-task, the bound on what
reaches the scheduler, per-worker state, loopback-only sockets, the errors.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import anypool
import tasks
from services import DaskCluster, under_service

pytestmark = pytest.mark.dask


def _wait_for_lines(path: Path, n: int, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = [int(x) for x in path.read_text().split()]
            if len(lines) >= n:
                return lines
        time.sleep(0.02)
    raise AssertionError(f"{path} did not get {n} line(s) in {timeout} s")


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 just now (for a scheduler that must come back at the same address)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _io_loops() -> int:
    """How many Dask client event-loop threads are running in this process."""
    return sum(t.name == "IO loop" for t in threading.enumerate())


# -- an existing cluster (address=) -------------------------------------------------


class TestWorkerKilled:
    @pytest.mark.timeout(90)
    def test_a_task_on_a_sigkilled_worker_is_retried_and_nothing_is_lost(
        self, dask_cluster: DaskCluster, tmp_path: Path
    ) -> None:
        """The victim's attempt fails with WorkerCrashed, its retry succeeds, every other task completes."""
        marks = tmp_path / "victim"
        with anypool.Pool("dask", 4, address=dask_cluster.address, retries=1, backoff=0) as pool:
            victim = pool.submit(tasks.attempt_then_sleep, str(marks), 30, "victim")
            others = [pool.submit(tasks.sleep, 0.2, i) for i in range(12)]
            (pid,) = _wait_for_lines(marks, 1)
            os.kill(pid, signal.SIGKILL)
            assert victim.result(60) == ("victim", 2)
            assert [f.result(60) for f in others] == list(range(12))
        (attempt,) = victim.attempts
        assert attempt.outcome == "crash"
        assert "WorkerCrashed" in attempt.error
        assert "died while running" in attempt.error
        s = pool.stats
        assert s.failed == 0
        assert s.done == 13
        assert s.crashed >= 1
        assert s.retried >= 1
        dask_cluster.wait_for_workers(2)  # the nanny has replaced it, for the tests that follow

    @pytest.mark.timeout(90)
    def test_without_retries_only_the_tasks_on_the_dead_worker_fail(
        self, dask_cluster: DaskCluster, tmp_path: Path
    ) -> None:
        marks = tmp_path / "victim"
        with anypool.Pool("dask", 4, address=dask_cluster.address) as pool:
            victim = pool.submit(tasks.attempt_then_sleep, str(marks), 30, "victim")
            (pid,) = _wait_for_lines(marks, 1)
            dead = next(name for name, p in dask_cluster.worker_pids().items() if p == pid)
            others = [pool.submit(tasks.sleep, 0.3, i) for i in range(12)]
            time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)
            crashed = f"Dask worker {dead} .*died while running"
            with pytest.raises(anypool.WorkerCrashed, match=crashed) as info:
                victim.result(60)
            assert isinstance(info.value, anypool.WorkerCrashed)
            outcomes = [f.exception(60) for f in others]
            # the pool goes on: a new task runs after the crash
            assert pool.submit(tasks.square, 9).result(60) == 81
        for i, (f, exc) in enumerate(zip(others, outcomes, strict=True)):
            if exc is None:
                assert f.result() == i
            else:  # it was on the same worker (its other thread, or queued there)
                assert isinstance(exc, anypool.WorkerCrashed)
                assert f"Dask worker {dead} " in str(exc)
        assert sum(exc is None for exc in outcomes) >= 9
        dask_cluster.wait_for_workers(2)

    @pytest.mark.timeout(90)
    def test_a_map_item_that_kills_its_worker_fails_alone(self, dask_cluster: DaskCluster) -> None:
        """A batch that lost its worker is rerun in pieces until the item that kills it fails by itself."""
        # one Dask task at a time, so no neighbour shares the worker the bad item kills
        with anypool.Pool("dask", 1, address=dask_cluster.address) as pool:
            got = list(pool.imap(tasks.crash_if, range(8), [5] * 8, chunksize=4, return_exceptions=True))
        assert got[:5] == [0, 1, 2, 3, 4]
        assert got[6:] == [6, 7]
        assert isinstance(got[5], anypool.WorkerCrashed)
        assert "#5 crash_if" in str(got[5])
        assert pool.stats.done == 7
        assert pool.stats.failed == 1
        dask_cluster.wait_for_workers(2)


class TestSessionCluster:
    def test_it_listens_on_loopback_only(self, dask_cluster: DaskCluster) -> None:
        """Scheduler, nannies and workers: every listening socket is on 127.0.0.1."""
        procs = [psutil.Process(p.pid) for p in dask_cluster.procs]
        family = [p.pid for root in procs for p in (root, *root.children(recursive=True))]
        sockets = _listening(family)
        assert len(sockets) >= 5, sockets  # scheduler (+ its HTTP), 2 nannies, 2 workers (+ HTTP)
        assert {ip for ip, _ in sockets} == {"127.0.0.1"}, sockets


class TestPacking:
    def test_cheap_submits_share_dask_tasks(self, dask_cluster: DaskCluster) -> None:
        """Once a callable is measured cheap, submit() calls travel several to a Dask task."""
        from distributed import Client

        def ran(dask_scheduler: Any, prefix: str) -> int:
            # Dask counts, per task-name prefix, every task that ever reached memory
            tp = dask_scheduler.task_prefixes.get(prefix)
            return 0 if tp is None else int(tp.state_counts["memory"])

        with anypool.Pool("dask", address=dask_cluster.address) as pool, \
                Client(dask_cluster.address, set_as_default=False) as client:
            before = client.run_on_scheduler(ran, prefix="add")
            assert pool.submit(tasks.add, 1, 2).result(30) == 3  # measured now
            futs = [pool.submit(tasks.add, i, c=1) for i in range(2000)]
            assert [f.result(30) for f in futs] == [i + 1 for i in range(2000)]
            dask_tasks = client.run_on_scheduler(ran, prefix="add") - before
        assert 2 <= dask_tasks <= 500, dask_tasks
        assert pool.stats.done == 2001

    @pytest.mark.timeout(90)
    def test_a_packed_call_that_kills_its_worker_fails_alone(self, dask_cluster: DaskCluster) -> None:
        # one Dask task at a time, so no neighbour shares the worker the bad call kills
        with anypool.Pool("dask", 1, address=dask_cluster.address) as pool:
            assert pool.submit(tasks.crash_if, 1, -1).result(30) == 1  # measured: cheap
            futs = [pool.submit(tasks.crash_if, i, 150) for i in range(200)]
            outcomes = [f.exception(60) for f in futs]
        assert [i for i, e in enumerate(outcomes) if e is not None] == [150]
        assert isinstance(outcomes[150], anypool.WorkerCrashed)
        assert [f.result() for i, f in enumerate(futs) if i != 150] == [i for i in range(200) if i != 150]
        assert pool.stats.failed == 1
        assert pool.stats.done == 200
        dask_cluster.wait_for_workers(2)


class TestCallables:
    def test_a_callable_with_state_is_sent_as_it_is_at_each_submit(self, dask_cluster: DaskCluster) -> None:
        """Regression: its first pickle was reused, so a later change never reached a worker."""
        with anypool.Pool("dask", address=dask_cluster.address) as pool:
            scale = tasks.Scaler(1)
            assert [pool.submit(scale, 3).result(30), pool.submit(scale.times, 3).result(30)] == [3, 3]
            scale.k = 5
            assert [pool.submit(scale, 3).result(30), pool.submit(scale.times, 3).result(30)] == [15, 15]
            futs = [pool.submit(scale, i) for i in range(50)]  # packed several to a Dask task
            assert [f.result(30) for f in futs] == [5 * i for i in range(50)]


class TestScheduling:
    def test_the_scheduler_never_holds_more_than_the_pool_allows(self, dask_cluster: DaskCluster) -> None:
        """workers=2 on a shared cluster: at most 2 of this pool's tasks reach the scheduler at once."""
        from distributed import Client

        def ours(dask_scheduler: Any, prefix: str) -> int:
            # waiting or running; a finished one lingers until the client's release arrives
            return sum(1 for k, ts in dask_scheduler.tasks.items()
                       if str(k).startswith(prefix) and ts.state not in ("memory", "released", "forgotten"))

        peak = 0
        with Client(dask_cluster.address, set_as_default=False) as client, \
                anypool.Pool("dask", 2, address=dask_cluster.address) as pool:
            futs = [pool.submit(tasks.sleep, 0.05, i) for i in range(60)]
            while not all(f.done() for f in futs):
                peak = max(peak, client.run_on_scheduler(ours, prefix="sleep-"))
                time.sleep(0.01)
            assert [f.result() for f in futs] == list(range(60))
        assert 1 <= peak <= 2

    def test_a_timed_out_item_fails_alone_and_on_time(self, dask_cluster: DaskCluster) -> None:
        with anypool.Pool("dask", 2, address=dask_cluster.address, timeout=1.0) as pool:
            t = time.monotonic()
            got = list(pool.imap(tasks.sleep, [0.01, 4.0, 0.01, 0.01], ["a", "b", "c", "d"],
                                 return_exceptions=True))
            took = time.monotonic() - t
        assert got[0] == "a"
        assert got[2:] == ["c", "d"]
        assert isinstance(got[1], anypool.TaskTimeout)
        assert any("runs on in its worker thread" in n for n in got[1].__notes__)
        assert took < 3.5
        assert pool.stats.timed_out == 1

    def test_each_dask_worker_has_its_own_state_and_runs_the_initializer_once(
        self, dask_cluster: DaskCluster, tmp_path: Path
    ) -> None:
        inits = tmp_path / "inits"
        with anypool.Pool("dask", address=dask_cluster.address, initializer=tasks.note_pid,
                          initargs=(str(inits),)) as pool:
            calls = [f.result(30) for f in [pool.submit(tasks.count_calls) for _ in range(40)]]
            calls += list(pool.map(tasks.count_calls, range(200)))
        pids = set(dask_cluster.worker_pids().values())
        assert sorted(_wait_for_lines(inits, 2)) == sorted(pids)
        by_pid: dict[int, list[int]] = {}
        for pid, n in calls:
            by_pid.setdefault(pid, []).append(n)
        assert set(by_pid) <= pids
        for counts in by_pid.values():  # one counter per worker, shared by nobody else
            assert sorted(counts) == list(range(1, len(counts) + 1))

    def test_observers_see_each_task_start_on_its_worker(self, dask_cluster: DaskCluster) -> None:
        events: list[anypool.TaskEvent] = []
        with anypool.Pool("dask", 2, address=dask_cluster.address, observers=[events.append]) as pool:
            assert pool.submit(tasks.square, 4).result(30) == 16
        kinds = [(e.kind, e.worker) for e in events]
        assert [k for k, _ in kinds] == ["queued", "started", "finished"]
        assert kinds[1][1] in {"w0", "w1"}
        assert kinds[1][1] == kinds[2][1]


class TestShutdown:
    def test_kill_fails_what_is_on_the_cluster_at_once(self, dask_cluster: DaskCluster) -> None:
        pool = anypool.Pool("dask", 2, address=dask_cluster.address)
        running = [pool.submit(tasks.sleep, 2, i) for i in range(2)]
        queued = [pool.submit(tasks.sleep, 2, i) for i in range(4)]
        time.sleep(0.3)
        t = time.monotonic()
        pool.shutdown(kill=True)
        assert time.monotonic() - t < 3
        for f in running:
            with pytest.raises(anypool.PoolClosed, match="kill=True"):
                f.result(5)
        assert all(f.cancelled() for f in queued)

    @pytest.mark.timeout(90)
    def test_a_lost_scheduler_fails_the_running_tasks_then_breaks_the_pool(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Before, the pool also warned, with a traceback, that it could not install itself on a new
        scheduler: there was none, the client had given up and showed no scheduler id."""
        loops_before = _io_loops()
        cluster = DaskCluster(tmp_path, nworkers=1, nthreads=1)
        try:
            pool = anypool.Pool("dask", address=cluster.address, connect_timeout=2)
            running = pool.submit(tasks.sleep, 30, "never")
            queued = [pool.submit(tasks.sleep, 0.3, i) for i in range(20)]
            time.sleep(0.5)
            caplog.set_level(logging.INFO, logger="anypool")
            os.kill(cluster.scheduler.pid, signal.SIGKILL)
            with pytest.raises(anypool.WorkerCrashed, match="lost the connection to the scheduler"):
                running.result(30)
            deadline = time.monotonic() + 30
            with pytest.raises(anypool.BrokenPool, match="lost its Dask scheduler"):  # noqa: PT012
                while time.monotonic() < deadline:
                    pool.submit(tasks.square, 2).exception(30)
                    time.sleep(0.2)
            assert all(f.exception(30) is not None for f in queued)
            t = time.monotonic()
            pool.shutdown()
            assert time.monotonic() - t < 5
        finally:
            cluster.stop()
        assert _io_loops() <= loops_before, "the pool's Dask client left its event loop running"
        assert not [r.getMessage() for r in caplog.records
                    if r.name == "anypool" and "new Dask scheduler" in r.getMessage()]

    @pytest.mark.timeout(120)
    def test_after_a_scheduler_restart_the_pool_sets_up_the_new_workers_and_goes_on(
        self, tmp_path: Path
    ) -> None:
        """A new scheduler at the same address knows nothing of the pool: the pool installs itself again.

        Dask's client reconnects by itself but restores neither worker
        plugins nor event subscriptions, and the nanny's new worker has
        neither the pool's setup nor its initializer's state.
        """
        loops_before = _io_loops()
        cluster = DaskCluster(tmp_path, nworkers=1, nthreads=2, port=_free_port())
        pool = None
        try:
            pool = anypool.Pool("dask", address=cluster.address, connect_timeout=30, retries=5,
                                backoff=0, initializer=tasks.set_state, initargs=("init", "ran"))
            assert pool.submit(tasks.get_state, "init").result(30) == "ran"
            running = [pool.submit(tasks.sleep, 1, i) for i in range(3)]
            time.sleep(0.3)
            cluster.restart_scheduler()
            # cancelled by the lost connection (WorkerCrashed), then retried on the new scheduler
            assert [f.result(60) for f in running] == [0, 1, 2]
            assert all(f.attempts and f.attempts[0].outcome == "crash" for f in running)
            # the initializer ran on the new worker, and later tasks see its state
            assert pool.submit(tasks.get_state, "init").result(30) == "ran"
            assert list(pool.map(tasks.square, range(50))) == [x * x for x in range(50)]
            # again with the pool idle: its next task is the first to meet a worker without its setup
            cluster.restart_scheduler()
            cluster.wait_for_workers(1)
            assert pool.submit(tasks.get_state, "init").result(60) == "ran"
            # start events reach the pool again, so a timeout's clock starts and runs out
            timed = pool.with_options(timeout=1, retries=0).submit(tasks.sleep, 30)
            with pytest.raises(anypool.TaskTimeout):
                timed.result(20)
            assert pool.stats.failed == 1  # the timeout, nothing else
        finally:
            if pool is not None:
                pool.shutdown(kill=True)
            cluster.stop()
        assert _io_loops() <= loops_before, "the pool's Dask client left its event loop running"

    @pytest.mark.timeout(120)
    def test_after_a_scheduler_restart_no_task_runs_before_the_initializer_is_done(
        self, tmp_path: Path
    ) -> None:
        """Tasks sent before the pool reinstalls itself wait for its (slow) initializer on the new worker.

        Dask puts a plugin in the worker's table before its setup has run,
        so a task arriving meanwhile would see the pool's state still empty.
        """
        cluster = DaskCluster(tmp_path, nworkers=1, nthreads=4, port=_free_port())
        pool = None
        try:
            pool = anypool.Pool("dask", address=cluster.address, connect_timeout=30, retries=5,
                                backoff=0, initializer=tasks.slow_set_state, initargs=(1.5, "init", "ran"))
            assert pool.submit(tasks.get_state, "init").result(30) == "ran"
            cluster.restart_scheduler()
            cluster.wait_for_workers(1)
            futs = [pool.submit(tasks.get_state, "init") for _ in range(12)]
            assert [f.result(60) for f in futs] == ["ran"] * 12
        finally:
            if pool is not None:
                pool.shutdown(kill=True)
            cluster.stop()


class TestExit:
    @pytest.mark.timeout(120)
    @pytest.mark.parametrize("where", ["local", "address"])
    def test_a_pool_busy_at_exit_stops_without_a_word(
        self, where: str, request: pytest.FixtureRequest, tmp_path: Path
    ) -> None:
        """A script that leaves a dask pool with tasks on the cluster exits cleanly, nothing left behind.

        From the start of exit Dask cannot run its futures' done callbacks;
        before, each future still on the cluster made tornado log an ERROR
        with a traceback ("cannot schedule new futures after shutdown").
        """
        address = request.getfixturevalue("dask_cluster").address if where == "address" else None
        script = tmp_path / "busy_at_exit.py"
        script.write_text(textwrap.dedent(f"""
            import time
            import anypool

            def slow(x):
                time.sleep(x)
                return x

            if __name__ == "__main__":
                pool = anypool.Pool("dask", 2, address={address!r})
                print(pool.submit(slow, 0).result(60))
                futures = [pool.submit(slow, 2) for _ in range(4)]
                time.sleep(0.5)
                print("exiting", flush=True)
        """))
        # its own process group: whatever it started (the local cluster) can be found afterwards
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert proc.returncode == 0, err
        assert out.split() == ["0", "exiting"]
        assert "cannot schedule new futures" not in err, err
        assert "Traceback" not in err, err
        deadline = time.monotonic() + 15
        while True:  # every process of its group ends (the local cluster's nannies and workers)
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                raise AssertionError("the script's Dask processes outlived it")
            time.sleep(0.1)


class TestErrors:
    def test_an_unreachable_scheduler_is_a_connection_error_and_leaks_nothing(self) -> None:
        before = _io_loops()
        with pytest.raises(ConnectionError, match=r"cannot connect to the Dask scheduler at 'tcp://127.0.0.1:9'"):
            anypool.Pool("dask", address="tcp://127.0.0.1:9", connect_timeout=1)
        assert _io_loops() <= before, "the failed Dask client left its event loop running"

    @pytest.mark.timeout(30)
    def test_a_port_that_accepts_and_never_answers_is_a_connection_error_on_time(self) -> None:
        """Before, Dask waited for the scheduler's handshake without limit: connect_timeout=1 hung for ever.

        A listening socket nobody accepts from completes the TCP handshake
        and never speaks, as a dashboard's port or a firewall's does.
        """
        before = _io_loops()
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
            t0 = time.monotonic()
            with pytest.raises(ConnectionError, match=r"no answer in 2 s\. Is this the scheduler's port"):
                anypool.Pool("dask", address=address, connect_timeout=1)
            assert time.monotonic() - t0 < 5
        assert _io_loops() <= before, "the failed Dask client left its event loop running"

    @pytest.mark.timeout(30)
    def test_a_server_that_answers_otherwise_is_a_connection_error(self) -> None:
        """Before, Dask read the server's reply as a frame length and the pool raised MemoryError (3 EiB).

        The server answers at once, before reading, as some HTTP servers and
        proxies do to a request they cannot parse.
        """
        import socketserver

        class Answer(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                while self.request.recv(4096):
                    pass

        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Answer)
        server.daemon_threads = True
        serving = threading.Thread(target=server.serve_forever, daemon=True)
        serving.start()
        before = _io_loops()
        try:
            address = f"tcp://127.0.0.1:{server.server_address[1]}"
            with pytest.raises(ConnectionError, match=r"what answers there is not a Dask scheduler") as info:
                anypool.Pool("dask", address=address, connect_timeout=2)
            assert repr(address) in str(info.value)
        finally:
            server.shutdown()
            server.server_close()
            serving.join(5)
        assert _io_loops() <= before, "the failed Dask client left its event loop running"

    def test_a_malformed_address_is_a_value_error(self) -> None:
        with pytest.raises(ValueError, match="missing port number"):
            anypool.Pool("dask", address="tcp://127.0.0.1", connect_timeout=1)

    def test_options_dask_cannot_honour_are_refused(self) -> None:
        with pytest.raises(TypeError, match=r"unknown option.*'dask': secrity"):
            anypool.Pool("dask", address="tcp://127.0.0.1:9", secrity=None)
        with pytest.raises(ValueError, match=r"max_tasks_per_worker= does not apply.*--lifetime"):
            anypool.Pool("dask", address="tcp://127.0.0.1:9", max_tasks_per_worker=5)
        with pytest.raises(TypeError, match="address must be a Dask scheduler address"):
            anypool.Pool("dask", address=8786)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="connect_timeout must be a positive number"):
            anypool.Pool("dask", address="tcp://127.0.0.1:9", connect_timeout=0)

    def test_what_cannot_travel_fails_where_it_should(self, dask_cluster: DaskCluster) -> None:
        with anypool.Pool("dask", 2, address=dask_cluster.address) as pool:
            with pytest.raises(anypool.SerializationError, match="argument 0 \\(Unpicklable"):
                pool.submit(tasks.square, tasks.Unpicklable())
            with pytest.raises(TypeError, match="asquare is a coroutine function"):
                pool.submit(tasks.asquare, 2)
            got = list(pool.imap(tasks.return_lock, range(3), return_exceptions=True))
            assert all(isinstance(g, anypool.SerializationError) for g in got)
            assert "cannot be sent back from Dask worker" in str(got[0])
            # the exception object cannot be pickled: its text comes back as a TaskError
            with pytest.raises(anypool.TaskError, match="UnpicklableError: holding a lock"):
                pool.submit(tasks.raise_unpicklable).result(30)

    def test_a_module_the_workers_lack_is_named_with_the_remote_traceback(
        self, dask_cluster: DaskCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (tmp_path / "only_here.py").write_text("def double(x):\n    return 2 * x\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        import only_here  # type: ignore[import-not-found]

        with anypool.Pool("dask", 2, address=dask_cluster.address) as pool:
            fut = pool.submit(only_here.double, 2)
            with pytest.raises(ModuleNotFoundError, match="only_here") as info:
                fut.result(30)
        assert any("are the modules it needs installed there?" in n for n in info.value.__notes__)
        assert isinstance(info.value.__cause__, Exception)
        assert "only_here" in str(info.value.__cause__)

    @pytest.mark.timeout(90)
    def test_a_script_without_the_main_guard_is_told_what_to_add(self, tmp_path: Path) -> None:
        """The local cluster's workers import the main module: without the guard they cannot start."""
        script = tmp_path / "no_guard.py"
        script.write_text("import anypool\n\nwith anypool.Pool('dask', 1) as pool:\n"
                          "    pool.submit(abs, -1).result()\n")
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=80)
        assert out.returncode != 0
        assert "RuntimeError: could not start a local Dask cluster" in out.stderr
        assert 'must be under `if __name__ == "__main__":`' in out.stderr

    def test_without_distributed_the_error_says_what_to_install(self) -> None:
        code = textwrap.dedent("""
            import sys

            class Hide:
                def find_spec(self, name, path=None, target=None):
                    if name.partition(".")[0] in ("distributed", "dask"):
                        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                    return None

            sys.meta_path.insert(0, Hide())
            import anypool
            print(anypool.available_backends()["dask"])
            try:
                anypool.Pool("dask")
            except anypool.BackendUnavailable as exc:
                print(exc)
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert len(lines) == 2
        for line in lines:
            assert "backend 'dask' needs a package that is not installed (distributed)" in line
            assert "pip install 'anypool[dask]'" in line


# -- the embedded LocalCluster (no address) -----------------------------------------


def _listening(pids: list[int]) -> list[tuple[str, int]]:
    out = []
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except psutil.Error:
            continue
        out.extend((c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN)
    return out


class TestLocalCluster:
    @pytest.mark.timeout(90)
    def test_the_default_cluster_runs_tasks_on_loopback_and_closes_with_the_pool(self) -> None:
        me = psutil.Process()
        with anypool.Pool("dask", 2) as pool:
            assert "local cluster tcp://127.0.0.1:" in repr(pool)
            assert pool.workers == 2
            pids = {pool.submit(tasks.pid).result(60) for _ in range(20)}
            pids |= set(pool.map(tasks.pid, range(200)))
            assert os.getpid() not in pids
            assert 1 <= len(pids) <= 2
            assert list(pool.map(tasks.square, range(300))) == [x * x for x in range(300)]
            got = list(pool.imap(tasks.fail_on, range(6), return_exceptions=True))
            assert isinstance(got[3], ValueError)
            assert got[:3] == [0, 1, 2]
            family = [me.pid, *(p.pid for p in me.children(recursive=True) if not under_service(p))]
            sockets = _listening(family)
            workers = [p for p in me.children(recursive=True) if p.pid in pids]
        assert sockets, "the cluster listens somewhere"
        assert {ip for ip, _ in sockets} == {"127.0.0.1"}, sockets
        assert len(workers) == len(pids)
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, "the pool's cluster outlived it"

    @pytest.mark.timeout(90)
    def test_a_worker_sigkilled_mid_task_is_retried_and_replaced(self, tmp_path: Path) -> None:
        marks, inits = tmp_path / "victim", tmp_path / "inits"
        with anypool.Pool("dask", 2, retries=1, backoff=0, initializer=tasks.note_pid,
                          initargs=(str(inits),)) as pool:
            victim = pool.submit(tasks.attempt_then_sleep, str(marks), 30, "victim")
            others = list(pool.imap(tasks.sleep, [0.05] * 20, range(20)))
            (pid,) = _wait_for_lines(marks, 1)
            os.kill(pid, signal.SIGKILL)
            assert victim.result(60) == ("victim", 2)
            assert victim.attempts[0].outcome == "crash"
            assert others == list(range(20))
            # Dask's nanny starts a replacement, and the initializer runs there too
            assert pid not in _wait_for_lines(inits, 3)[2:]
            assert pool.submit(tasks.get_state, "missing").result(60) is None
        assert pool.stats.crashed == 1
        assert pool.stats.failed == 0

    @pytest.mark.timeout(120)
    def test_only_the_task_that_kills_its_worker_fails_not_those_queued_there(self) -> None:
        """Dask fails every task queued on a dead worker (allowed-failures 0): those were never run.

        One single-threaded worker: the crasher runs, the others wait on that
        worker (or at the scheduler), and only the crasher may fail, whether
        it dies after announcing its start or at once, before it could.
        """
        with anypool.Pool("dask", 1) as pool:
            crash = pool.submit(tasks.sleep_then_exit, 0.3, 3)
            after = [pool.submit(tasks.square, i) for i in range(3)]
            with pytest.raises(anypool.WorkerCrashed, match="died while running #1 sleep_then_exit"):
                crash.result(60)
            assert [f.result(60) for f in after] == [0, 1, 4]
            # ends its process at once, before its start event can leave: run again alone to tell
            crash = pool.submit(tasks.crash_if, 5, 5)
            after = [pool.submit(tasks.square, i) for i in range(3)]
            with pytest.raises(anypool.WorkerCrashed, match="crash_if"):
                crash.result(60)
            assert [f.result(60) for f in after] == [0, 1, 4]
            # a map: the batch is split until the crasher is alone; its neighbours all succeed
            got = list(pool.imap(tasks.crash_if, range(12), [5] * 12, chunksize=12,
                                 return_exceptions=True))
        assert [i for i, g in enumerate(got) if not isinstance(g, int)] == [5]
        assert isinstance(got[5], anypool.WorkerCrashed)
        s = pool.stats
        assert s.failed == 3
        assert s.crashed == 3

    @pytest.mark.timeout(90)
    def test_a_crash_on_the_worker_named_0_is_reported_under_its_name(self) -> None:
        """LocalCluster numbers its workers from 0: a crash there names dask-0, not its address."""
        with anypool.Pool("dask", 1) as pool:
            with pytest.raises(anypool.WorkerCrashed, match=r"Dask worker dask-0 \(tcp://127\.0\.0\.1:"):
                pool.submit(tasks.exit_hard).result(60)
            assert pool.submit(tasks.square, 3).result(60) == 9  # on the nanny's new dask-0
        # one worker in the statistics, not a second one under its address
        assert set(pool.stats.worker_busy) == {"dask-0"}
        assert pool.stats.crashed == 1


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    """A self-signed certificate (its own CA) and key, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=anypool-test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return {"cert": str(cert), "key": str(key)}


class TestSecurity:
    @pytest.mark.timeout(90)
    def test_a_tls_cluster_runs_tasks_and_refuses_clients_without_certificates(
        self, tls_files: dict[str, str]
    ) -> None:
        from distributed import Security

        cert, key = tls_files["cert"], tls_files["key"]
        security = Security(
            tls_ca_file=cert, tls_client_cert=cert, tls_client_key=key,
            tls_scheduler_cert=cert, tls_scheduler_key=key, tls_worker_cert=cert, tls_worker_key=key,
            require_encryption=True,
        )
        with anypool.Pool("dask", 1, security=security) as pool:
            address = repr(pool).split("local cluster ")[1].split(",")[0]
            assert address.startswith("tls://127.0.0.1:")
            assert pool.submit(tasks.square, 5).result(60) == 25
            with pytest.raises(ValueError, match="speaks TLS: pass security="):
                anypool.Pool("dask", address=address)
            with pytest.raises(ConnectionError, match="cannot connect"):
                anypool.Pool("dask", address=address.replace("tls://", "tcp://"), connect_timeout=2)
            with anypool.Pool("dask", address=address, security=security) as other:
                assert list(other.map(tasks.square, range(5))) == [0, 1, 4, 9, 16]

    def test_security_true_is_for_the_local_cluster_only(self) -> None:
        with pytest.raises(ValueError, match="security=True makes throw-away certificates"):
            anypool.Pool("dask", address="tcp://127.0.0.1:9", security=True)
