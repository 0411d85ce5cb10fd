"""Every example in ``examples/`` (and ``make demo``) runs, says what it should, and leaves nothing behind.

Each example runs as a real ``python examples/NAME.py`` subprocess under a
hard time limit.  They run several at a time, in a module fixture, before the
first test of this module starts (so the per-test leak fixture, which looks
at this process's children, never sees another test's example); each test
then checks one example's output.  Timings checked are the ones that do not
depend on how busy the CPUs are: waits that overlap (a 1 s gather of three
1 s sleeps must not take 3 s), never CPU speed-ups.

No process may survive an example: each run carries a marker in its
environment, which every process it starts inherits (dask workers, fork
servers, setsid'ed command jobs included), and after the example exits no
process with that marker may remain for more than 5 s.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

import anypool

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PARALLEL = 4  # examples running at once; most of their time is spent waiting
MARKER = "ANYPOOL_EXAMPLE_RUN"


@dataclass
class Run:
    """What one example did."""

    name: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    left_behind: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (f"examples/{self.name}.py: exit {self.returncode} after {self.seconds:.1f} s"
                f"{' (killed: past its time limit)' if self.timed_out else ''}\n"
                f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}")


def _marked(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(MARKER) == marker:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def run_example(name: str, limit: float, where: Path = EXAMPLES, args: tuple[str, ...] = ()) -> Run:
    """Run ``NAME.py`` to its end (or kill it at ``limit`` s) and look for survivors.

    Output goes to files, not pipes: a survivor holding a pipe open would
    otherwise keep the run from ending, and be reported as a hang.
    """
    marker = f"{name}-{uuid.uuid4().hex}"
    env = {**os.environ, MARKER: marker, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, str(where / f"{name}.py"), *args], cwd=ROOT, env=env,
                                stdout=out, stderr=err, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            for p in _marked(marker):
                _kill(p)
            proc.wait()
        took = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    deadline = time.monotonic() + 5.0
    left = _marked(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _marked(marker)
    described = []
    for p in left:
        try:
            described.append(f"{p.pid} {' '.join(p.cmdline())[:150]}")
        except psutil.Error:
            described.append(str(p.pid))
        _kill(p)
    return Run(name, proc.returncode, stdout, stderr, took, timed_out, described)


def _kill(p: psutil.Process) -> None:
    try:
        p.kill()
        p.wait(5)
    except (psutil.Error, psutil.TimeoutExpired):
        pass


# -- what each example must say ----------------------------------------------------------

def number(text: str, pattern: str) -> float:
    """The float captured by ``pattern``'s first group in ``text`` (fails the test if absent)."""
    m = re.search(pattern, text)
    assert m is not None, f"no line matching {pattern!r}"
    return float(m.group(1).replace(",", ""))


def check_gather_count(r: Run) -> None:
    out = r.stdout
    assert out.splitlines()[:3] == ["One (0)", "One (1)", "One (2)"]  # all start before any ends
    assert 0.95 <= number(out, r"asyncio\.sleep\(1\): results \[0, 1, 2\] in ([\d.]+) s") < 2.0
    assert number(out, r"inside the coroutine: results \[0, 1, 2\] in ([\d.]+) s") >= 2.9
    assert "the event loop has not turned" in r.stderr
    # three threads for three sleeps: one second; the default (CPU count) threads on a
    # two-CPU machine would take two
    assert 0.95 <= number(out, r"a plain function: results \[0, 1, 2\] in ([\d.]+) s") < 1.8
    assert "auto chose for count_sync: thread: it mostly waits" in out


def check_visit_url(r: Run) -> None:
    out = r.stdout
    assert number(out, r"one after another \(2 s \+ 3 s\): ([\d.]+) s") >= 4.9
    assert 2.9 <= number(out, r"at once \(2 s and 3 s\): ([\d.]+) s") < 4.5
    assert out.count("visited https://www.example.org in 1 s") == 5
    assert 0.95 <= number(out, r"5 tasks of 1 s each, awaited together: ([\d.]+) s") < 2.5
    assert "blocking result() inside the loop refused: " in out


def check_joblib_parallel(r: Run) -> None:
    assert "40 results in" in r.stdout
    assert "same as a plain loop: True" in r.stdout
    assert "Pool.submit one call at a time: same results: True; auto chose thread:" in r.stdout


def check_thread_loop(r: Run) -> None:
    out = r.stdout
    assert "thread anypool-thread-1 >>> " in out
    assert "thread anypool-thread-2 >>> " in out
    assert number(out, r"joined: 10 steps in ([\d.]+) s") < 1.9  # one after another: 2.0 s


def check_gil_threads_vs_processes(r: Run) -> None:
    out = r.stdout
    for label in ("serial", "2 threads", "2 processes", "auto"):
        assert re.search(rf"^  {label}\s+[\d.]+ s$", out, re.M), label
    assert re.search(r"auto chose (process|thread): ", out)  # for crunch: depends on the CPUs
    assert "auto chose thread: CPU-bound but releases the GIL" in out  # for sha256


def check_many_coroutines(r: Run) -> None:
    out = r.stdout
    assert number(out, r"10,000 coroutines waiting 1 s each: ([\d.]+) s for 10,000 results") < 5.0
    assert number(out, r"1,000 threads waiting 1 s each: ([\d.]+) s for 1,000 results") < 5.0


def check_producer_consumer(r: Run) -> None:
    out = r.stdout
    assert "[CONSUMER] Consumer is consuming 3\n[PRODUCER] Consumer return: 200 ok" in out
    assert "[PRODUCER] Consumer return: 200 ok (300)" in out
    assert number(out, r"never more than (\d+) ahead") <= 16  # buffersize=8 bounds it


def check_jumping_range(r: Run) -> None:
    out = r.stdout
    assert "the seed's next/send/next/send: 0 2 3 2" in out
    assert number(out, r"walks \[0, 2, 4\] \(x5\) in ([\d.]+) s") < 1.5  # one after another: 3.0 s
    assert "auto chose async: coroutines that mostly wait" in out  # timed on the loop, kept there


def check_executor_dropin(r: Run) -> None:
    assert r.stdout.count("same output: True") == 2


def check_rename_ext(r: Run) -> None:
    out = r.stdout
    assert out.count("200 .csv and 0 .txt files") == 4
    loop = number(out, r"a loop with 5 ms per file: (\d+) ms")
    pool = number(out, r"anypool.map with 5 ms per file, 20 threads: (\d+) ms")
    assert pool < loop / 2


def check_stream_blocks(r: Run) -> None:
    out = r.stdout
    assert "same total: True" in out
    assert "'399999," in out
    assert "(399999, " in out
    assert "(400,000 lines parsed, 3 kept)" in out


def check_process_start_join(r: Run) -> None:
    assert "(not ours: True); the second task reused it: True" in r.stdout


def check_pool_apply_async(r: Run) -> None:
    out = r.stdout
    assert out.count("Run task ") == 5
    assert "4 worker processes ran 5 tasks" in out
    started = number(out, r"task 4 started at \+([\d.]+) s")
    freed = number(out, r"when the first of the others ended \(\+([\d.]+) s\)")
    assert abs(started - freed) < 0.5


def check_queue_ipc(r: Run) -> None:
    out = r.stdout
    assert all(f"Get {v} (made in process" in out for v in "ABC")
    assert "a plain multiprocessing.Queue is refused at submit" in out
    assert "reader got ['A', 'B', 'C'] and returned by itself" in out
    assert "writer and reader in two processes: True" in out


def check_bank_balance(r: Run) -> None:
    out = r.stdout
    assert "two threads with the lock: balance = 0" in out
    assert re.search(r"has balance 5000, worker \d+ has 8000, this process still has 0", out)


def check_thread_local(r: Run) -> None:
    out = r.stdout
    alice = re.search(r"Hello, Alice \(in (anypool-thread-\d)\)", out)
    bob = re.search(r"Hello, Bob \(in (anypool-thread-\d)\)", out)
    assert alice
    assert bob
    assert alice.group(1) != bob.group(1)
    assert "thread: 40 inserts through 2 per-worker connections" in out
    assert "process: 40 inserts through 2 per-worker connections" in out
    assert "can only be used in that same thread" in out


def check_subprocess_call(r: Run) -> None:
    out = r.stdout
    assert "$ uname -s\nLinux\nExit code: 0" in out
    assert "exit\npython.org\nset q=mx\nExit code: 0" in out  # the input, sorted
    assert "a failing command raises CommandFailed: exit code 2" in out
    assert number(out, r"4 x sleep 0\.5 at once \(workers=4\): exit codes \[0, 0, 0, 0\], ([\d.]+) s") < 1.5
    assert number(out, r"and was stopped after ([\d.]+) s") < 2.0


def check_master_worker_dask(r: Run) -> None:
    out = r.stdout
    assert "2 worker processes ran them" in out
    assert "a task's error comes back as itself: ValueError" in out
    assert "cluster stopped in" in out


def check_process_async(r: Run) -> None:
    out = r.stdout
    assert "2000 requests of 50 ms, each followed by a ~1 ms parse" in out
    for label in ("process+async", "async (one event loop)", "process ("):
        assert re.search(rf"^  {re.escape(label)}.* tasks in +[\d.]+ s", out, re.M), label
    # ratios depend on the CPUs: only that they are printed
    assert re.search(r"process\+async is [\d.]+x async alone and \d+x process alone", out)


def check_demo(r: Run) -> None:
    out = r.stdout
    assert number(out, r"1,000 tasks in ([\d.]+) s \(one at a time: 200") < 10
    assert number(out, r"200 tasks in ([\d.]+) s \(one at a time: 40") < 10
    assert number(out, r"1,100 tasks in ([\d.]+) s \(one at a time: 220") < 20
    assert re.search(r"fetch +500 tasks .* -> async: ", out)
    assert re.search(r"fetch_blocking +10 tasks .* -> thread: it mostly waits", out)
    assert re.search(r"crunch +8 tasks .* -> (process|thread): ", out)  # depends on the CPUs
    assert re.search(r"digest +16 tasks .* -> thread: ", out)
    assert re.search(r"len +20,000 tasks .* -> thread: ", out)
    assert "print(pool.stats):" in out
    assert "backend           auto" in out
    assert "task 3: WorkerCrashed: " in out
    assert "SIGKILL" in out
    assert "the other 7 tasks finished: [0, 1, 4, 16, 25, 36, 49]" in out
    assert "again with retries=1: [0, 1, 4, 9, 16, 25, 36, 49]" in out
    assert 0.9 <= number(out, r"hung task: TaskTimeout after ([\d.]+) s") < 2.5
    assert "the pool still works: 2001" in out
    assert number(out, r"The whole demo took ([\d.]+) s") <= 60
    report = re.search(r"every attempt, coloured by outcome\): (\S+demo-report\.html)", out)
    assert report, "the demo ends by saying where its report is"
    page = Path(report.group(1)).read_text("utf-8")
    assert "6 faults/process-" in page  # the lanes of the faults section
    assert '"crash"' in page
    assert '"timeout"' in page


# name: (check, time limit in seconds, the backend it needs beyond the core's)
CASES: dict[str, tuple[Callable[[Run], None], float, str | None]] = {
    "process_async": (check_process_async, 90, None),
    "demo": (check_demo, 120, None),
    "visit_url": (check_visit_url, 60, None),
    "master_worker_dask": (check_master_worker_dask, 90, "dask"),
    "gather_count": (check_gather_count, 60, None),
    "many_coroutines": (check_many_coroutines, 60, None),
    "executor_dropin": (check_executor_dropin, 60, None),
    "stream_blocks": (check_stream_blocks, 60, None),
    "gil_threads_vs_processes": (check_gil_threads_vs_processes, 60, None),
    "pool_apply_async": (check_pool_apply_async, 60, None),
    "queue_ipc": (check_queue_ipc, 60, None),
    "rename_ext": (check_rename_ext, 60, None),
    "bank_balance": (check_bank_balance, 60, None),
    "subprocess_call": (check_subprocess_call, 60, "subprocess"),
    "thread_local": (check_thread_local, 60, None),
    "thread_loop": (check_thread_loop, 60, None),
    "process_start_join": (check_process_start_join, 60, None),
    "joblib_parallel": (check_joblib_parallel, 60, None),
    "jumping_range": (check_jumping_range, 60, None),
    "producer_consumer": (check_producer_consumer, 60, None),
}


ARGS = {"process_async": ("2000",)}  # 2,000 requests instead of 10,000: the same comparison, faster


def _missing(backend: str | None) -> str | None:
    return None if backend is None else anypool.available_backends().get(backend, f"no backend {backend!r}")


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest) -> dict[str, Run]:
    """Run every selected example, several at a time, before this module's first test."""
    wanted = [item.callspec.params["name"] for item in request.session.items
              if isinstance(item, pytest.Function) and item.module is request.module
              and hasattr(item, "callspec")]
    todo = [n for n in CASES if n in wanted and _missing(CASES[n][2]) is None]  # longest first
    with ThreadPoolExecutor(PARALLEL) as ex:
        futures = {n: ex.submit(run_example, n, CASES[n][1], EXAMPLES, ARGS.get(n, ())) for n in todo}
        return {n: f.result() for n, f in futures.items()}


def test_a_process_left_behind_is_found_and_killed(tmp_path: Path) -> None:
    """The survivor check sees a process that left the example's session, and kills it."""
    (tmp_path / "leaky.py").write_text(
        "import subprocess\n"
        "subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
        "print('bye')\n"
    )
    r = run_example("leaky", 30, tmp_path)
    assert r.returncode == 0
    assert len(r.left_behind) == 1
    assert "sleep 60" in r.left_behind[0]
    pid = int(r.left_behind[0].split()[0])
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # killed


def test_an_example_past_its_limit_is_killed(tmp_path: Path) -> None:
    """An example still running at its time limit is killed with everything it started."""
    (tmp_path / "stuck.py").write_text(
        "import subprocess, time\n"
        "subprocess.Popen(['sleep', '60'])\n"
        "time.sleep(60)\n"
    )
    t0 = time.monotonic()
    r = run_example("stuck", 1, tmp_path)
    assert r.timed_out
    assert time.monotonic() - t0 < 10
    assert r.left_behind == []  # the whole session went with it


def test_every_example_file_is_checked() -> None:
    """A new file in examples/ needs a case here."""
    assert sorted(p.stem for p in EXAMPLES.glob("*.py")) == sorted(CASES)


def test_docs_examples_names_every_example_and_waits_for_no_backend_that_exists() -> None:
    """docs/examples.md lists every file, and says none needs a backend anypool already has."""
    doc = (ROOT / "docs" / "examples.md").read_text("utf-8")
    assert [p.name for p in sorted(EXAMPLES.glob("*.py")) if f"`{p.name}`" not in doc] == []
    known = anypool.available_backends()
    stale = [m.group(0) for m in re.finditer(r"needs the `([\w+]+)` backend[^)]*", doc)
             if m.group(1) in known]
    assert stale == []


@pytest.mark.timeout(400)  # the first test waits for the whole batch
@pytest.mark.parametrize("name", list(CASES))
def test_example(name: str, runs: dict[str, Run]) -> None:
    """The example exits 0 within its limit, prints its key lines, and leaves no process."""
    check, _, backend = CASES[name]
    missing = _missing(backend)
    if missing is not None:
        pytest.skip(f"needs the {backend} backend: {missing}")
    r = runs[name]
    assert not r.timed_out, r.describe()
    assert r.returncode == 0, r.describe()
    assert not r.left_behind, f"processes left behind by {name}: {r.left_behind}"
    try:
        check(r)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{r.describe()}") from exc
