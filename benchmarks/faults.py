"""The same faults against anypool, ``ProcessPoolExecutor`` and ``multiprocessing.Pool``, side by side.

Each fault runs once per pool in a child interpreter of its own, under a hard
time limit, so a pool that hangs is recorded as a hang (and killed with
everything it started) instead of hanging this script.  The child prints what
it sees as it goes (one JSON object a line), so a hang cell says what the
child was waiting for.  After each child ends, any process that carries its
environment marker (its workers, wherever they were re-parented) and is still
alive 5 s later is reported as left behind, and killed.

Every pool gets 2 worker processes and is used the way its documentation
shows (``with`` blocks; ``Future.result()`` / ``AsyncResult.get()``); the
standard pools keep their default start method (fork on Linux), anypool its
own (the first workers forked while the script has one thread, replacements
from the fork server; each run reports how its first workers started).
anypool tasks that must not be retried run with ``retries=0`` (its default);
only the 10 %-crashes row gives it ``retries=2``, which the standard pools do
not have.

Usage::

    python benchmarks/faults.py                      # every fault, every pool; prints the table
    python benchmarks/faults.py --out docs/faults.md # and writes it, with the command and date
    python benchmarks/faults.py --faults kill,hang --pools anypool,ppe --limit 20
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import ctypes
import datetime
import json
import multiprocessing
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER = "ANYPOOL_FAULTS_RUN"
POOLS = {"anypool": "anypool", "ppe": "ProcessPoolExecutor", "mp": "multiprocessing.Pool"}
WORKERS = 2
WORKERS_FORKED, WORKERS_FROM_SERVER = "forked", "fork server"  # how anypool's first workers started


# -- task functions (run in the workers) ---------------------------------------------------

def sleep_return(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


def pid_then_sleep(pidfile: str, seconds: float) -> int:
    Path(pidfile).write_text(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def exit_hard(code: int) -> None:
    os._exit(code)


def segfault() -> None:
    ctypes.string_at(0)


def sleep_forever() -> None:
    while True:
        time.sleep(1)


def crash_first_time(i: int, workdir: str) -> int:
    """Every tenth task kills its worker on its first attempt (a marker file remembers)."""
    if i % 10 == 0:
        mark = Path(workdir, f"crashed-{i}")
        if not mark.exists():
            mark.touch()
            os._exit(1)
    return i


def failing_initializer(workdir: str) -> None:
    with open(Path(workdir, "initializer-runs"), "a") as f:
        f.write(f"{os.getpid()}\n")
    raise RuntimeError("cannot connect to the database")


def big_result(size: int) -> bytes:
    return b"x" * size


def square(x: int) -> int:
    return x * x


# -- the child side: one fault against one pool ------------------------------------------

def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def note(text: str) -> None:
    emit(note=text)


def short(exc: BaseException) -> str:
    """``Type: the first line of the message``, cut to fit a table cell."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    if len(first) > 90:
        first = first[:88] + "…"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def outcome(fut: Any, timeout: float | None = None) -> tuple[str, float]:
    """How a future ended ("ok: value" or "ExcType: message") and how long waiting took."""
    t0 = time.monotonic()
    try:
        value = fut.result(timeout)
    except BaseException as exc:  # a fault row is about exactly this
        text = short(exc)
    else:
        text = f"ok: {value!r}"[:60]
    return text, time.monotonic() - t0


class MPFuture:
    """``multiprocessing.pool.AsyncResult`` seen as a future (``result(timeout)``)."""

    def __init__(self, ar: Any) -> None:
        self.ar = ar

    def result(self, timeout: float | None = None) -> Any:
        return self.ar.get(timeout)


class Pool:
    """One submit/close interface over the three pools, each used as its docs show."""

    def __init__(self, kind: str, **options: Any) -> None:
        self.kind = kind
        init, initargs = options.pop("initializer", None), options.pop("initargs", ())
        if kind == "anypool":
            import anypool

            self.pool: Any = anypool.Pool("process", WORKERS, initializer=init, initargs=initargs, **options)
        elif kind == "ppe":
            self.pool = cf.ProcessPoolExecutor(WORKERS, initializer=init, initargs=initargs)
        else:
            self.pool = multiprocessing.Pool(WORKERS, initializer=init, initargs=initargs)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.kind == "mp":
            return MPFuture(self.pool.apply_async(fn, args))
        return self.pool.submit(fn, *args)

    def submit_with_timeout(self, seconds: float, fn: Callable[..., Any], *args: Any) -> Any:
        if self.kind == "anypool":
            return self.pool.with_options(timeout=seconds).submit(fn, *args)
        return self.submit(fn, *args)  # no per-task timeout: only result(timeout=) below

    def warm(self) -> None:
        """Start the workers before the fault, so start-up is not part of it."""
        for f in [self.submit(square, i) for i in range(2 * WORKERS)]:
            f.result(30)
        if self.kind == "anypool":
            # The header of docs/faults.md says how anypool started its workers:
            # what one of them sees, not what the script assumes.  A worker
            # forked from the script has it as parent; one from the fork server
            # has the server.  The first workers all start the same way.
            parent = self.submit(os.getppid).result(30)
            emit(workers_started=WORKERS_FORKED if parent == os.getpid() else WORKERS_FROM_SERVER)

    def close(self) -> None:
        """What leaving the pool's ``with`` block does."""
        if self.kind == "mp":
            self.pool.terminate()
            self.pool.join()
        else:
            self.pool.shutdown(wait=True)


def wrap_up(pool: Pool) -> None:
    """After the fault: does a new task run?  Then leave the pool as its ``with`` block would."""
    note("submitting a new task after the fault")
    try:
        fut = pool.submit(square, 7)
    except BaseException as exc:
        emit(after=f"submit raised {short(exc)}")
    else:
        emit(after=outcome(fut)[0])
    note("leaving the with block")
    t0 = time.monotonic()
    pool.close()
    emit(closed=time.monotonic() - t0)


def crash_row(kind: str, workdir: str, how: str) -> None:
    """Three sleeping tasks and one whose worker dies: what does each future say?"""
    pool = Pool(kind)
    pool.warm()
    t0 = time.monotonic()
    if how == "kill":
        pidfile = str(Path(workdir, "victim.pid"))
        victim = pool.submit(pid_then_sleep, pidfile, 3.0)
        others = [pool.submit(sleep_return, 1.0, i) for i in range(3)]
        while not Path(pidfile).exists() or not Path(pidfile).read_text():
            time.sleep(0.01)
        time.sleep(0.1)
        os.kill(int(Path(pidfile).read_text()), signal.SIGKILL)
        t0 = time.monotonic()
    else:
        victim = pool.submit(exit_hard, 3) if how == "exit" else pool.submit(segfault)
        others = [pool.submit(sleep_return, 1.0, i) for i in range(3)]
    note("waiting for the crashed task's result")
    text, _ = outcome(victim)
    emit(victim=text, seconds=time.monotonic() - t0)
    note("waiting for the 3 other tasks")
    emit(others=[outcome(f)[0] for f in others])
    wrap_up(pool)


def scenario_kill(kind: str, workdir: str) -> None:
    crash_row(kind, workdir, "kill")


def scenario_exit(kind: str, workdir: str) -> None:
    crash_row(kind, workdir, "exit")


def scenario_segv(kind: str, workdir: str) -> None:
    crash_row(kind, workdir, "segv")


def scenario_hang(kind: str, workdir: str) -> None:
    """A task that never returns, given 1 s."""
    pool = Pool(kind)
    pool.warm()
    t0 = time.monotonic()
    fut = pool.submit_with_timeout(1.0, sleep_forever)
    note("waiting for the hung task (1 s limit)")
    text, _ = outcome(fut, None if pool.kind == "anypool" else 1.0)
    emit(victim=text, seconds=time.monotonic() - t0)
    wrap_up(pool)


def scenario_crash10(kind: str, workdir: str) -> None:
    """1,000 tasks; every tenth kills its worker the first time it runs."""
    pool = Pool(kind, retries=2, backoff=0.0) if kind == "anypool" else Pool(kind)
    pool.warm()
    t0 = time.monotonic()
    counts: dict[str, int] = {}
    futures = []
    for i in range(1000):
        try:
            futures.append(pool.submit(crash_first_time, i, workdir))
        except BaseException as exc:
            key = f"refused at submit ({type(exc).__name__})"
            counts[key] = counts.get(key, 0) + 1
    for i, f in enumerate(futures):
        if i % 100 == 0:
            note(f"waiting for result {i} of {len(futures)} ({counts})")
        text, _ = outcome(f)
        key = "ok" if text.startswith("ok") else text.split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    emit(counts=counts, seconds=time.monotonic() - t0)
    note("leaving the with block")
    pool.close()


def scenario_init(kind: str, workdir: str) -> None:
    """The worker initializer raises."""
    t0 = time.monotonic()
    try:
        pool = Pool(kind, initializer=failing_initializer, initargs=(workdir,))
        futures = [pool.submit(square, i) for i in range(4)]
    except BaseException as exc:
        emit(victim=f"creating the pool or submitting raised {short(exc)}", seconds=time.monotonic() - t0)
        return
    note("waiting for 4 tasks")
    emit(victim=outcome(futures[0])[0], others=[outcome(f)[0] for f in futures[1:]],
         seconds=time.monotonic() - t0)
    wrap_up(pool)


def scenario_unpicklable(kind: str, workdir: str) -> None:
    """An argument that cannot be pickled (a lock)."""
    pool = Pool(kind)
    pool.warm()
    t0 = time.monotonic()
    try:
        fut = pool.submit(square, threading.Lock())
    except BaseException as exc:
        emit(victim=f"submit raised {short(exc)}", seconds=time.monotonic() - t0)
    else:
        note("waiting for the task with the lock argument")
        emit(victim=outcome(fut)[0], seconds=time.monotonic() - t0)
    wrap_up(pool)


def scenario_bigresult(kind: str, workdir: str) -> None:
    """A task returning 200 MB."""
    pool = Pool(kind)
    pool.warm()
    t0 = time.monotonic()
    fut = pool.submit(big_result, 200_000_000)
    note("waiting for the 200 MB result")
    try:
        size = len(fut.result())
        text = f"ok: {size / 1e6:.0f} MB"
    except BaseException as exc:
        text = short(exc)
    emit(victim=text, seconds=time.monotonic() - t0)
    wrap_up(pool)


def scenario_signal(kind: str, workdir: str) -> None:
    """Run 4 long tasks in a ``with`` block and say when they are running; the parent signals us."""
    pool = Pool(kind)
    with pool.pool:  # each pool's own context manager
        pool.warm()
        futures = [pool.submit(sleep_return, 60, i) for i in range(4)]
        time.sleep(0.5)
        emit(ready=True)
        note("waiting for 4 tasks of 60 s")
        try:
            for f in futures:
                f.result()
        finally:
            note("leaving the with block")


SCENARIOS: dict[str, Callable[[str, str], None]] = {
    "kill": scenario_kill,
    "exit": scenario_exit,
    "segv": scenario_segv,
    "hang": scenario_hang,
    "crash10": scenario_crash10,
    "sigint": scenario_signal,
    "ctrl-c": scenario_signal,
    "sigterm": scenario_signal,
    "parent-kill": scenario_signal,
    "init": scenario_init,
    "unpicklable": scenario_unpicklable,
    "bigresult": scenario_bigresult,
}


def child(fault: str, kind: str, workdir: str) -> None:
    SCENARIOS[fault](kind, workdir)
    emit(done=True)


# -- the parent side: run, watch, describe --------------------------------------------------

FAULTS: dict[str, str] = {
    "kill": "worker SIGKILLed mid-task (from outside)",
    "exit": "`os._exit(3)` in a task",
    "segv": "segfault in a task (`ctypes.string_at(0)`)",
    "hang": "a task that sleeps forever, 1 s limit",
    "crash10": "1,000 tasks, every 10th kills its worker once",
    "sigint": "SIGINT to the script (`kill -INT`)",
    "ctrl-c": "Ctrl-C (SIGINT to the process group)",
    "sigterm": "SIGTERM to the script",
    "parent-kill": "the script SIGKILLed",
    "init": "the worker initializer raises",
    "unpicklable": "an unpicklable argument (a lock)",
    "bigresult": "a 200 MB result",
}
SIGNALS = {"sigint": signal.SIGINT, "ctrl-c": signal.SIGINT, "sigterm": signal.SIGTERM,
           "parent-kill": signal.SIGKILL}


def marked(marker: str) -> list[Any]:
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(MARKER) == marker:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def kill_all(procs: list[Any]) -> None:
    import psutil

    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def run_one(fault: str, kind: str, limit: float) -> dict[str, Any]:
    """Run one fault against one pool in a child; return what it reported and what it left."""
    marker = uuid.uuid4().hex
    with tempfile.TemporaryDirectory() as workdir, tempfile.TemporaryFile("w+") as err:
        env = {**os.environ, MARKER: marker, "PYTHONUNBUFFERED": "1"}
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, __file__, "--child", fault, kind, workdir], env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
        events: list[dict[str, Any]] = []
        reader = threading.Thread(target=_read_events, args=(proc, events), daemon=True)
        reader.start()
        rec: dict[str, Any] = {"fault": fault, "kind": kind}
        sig = SIGNALS.get(fault)
        if sig is not None:
            _deliver(proc, events, fault, sig, limit, rec)
        try:
            proc.wait(max(0.1, limit - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            rec["hung"] = True
            os.killpg(proc.pid, signal.SIGKILL)
            kill_all(marked(marker))
            proc.wait()
        rec["seconds"] = time.monotonic() - t0
        rec["returncode"] = proc.returncode
        reader.join(5)
        if fault == "parent-kill":
            rec["orphans_gone_after"] = _wait_gone(marker, 10.0)
        deadline = time.monotonic() + 5.0
        left = marked(marker)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = marked(marker)
        rec["left"] = len(left)
        kill_all(left)
        init_runs = Path(workdir, "initializer-runs")
        if init_runs.exists():
            rec["initializer_runs"] = len(init_runs.read_text().splitlines())
        err.seek(0)
        rec["stderr"] = err.read()[-2000:]
    rec["events"] = events
    return rec


def _read_events(proc: subprocess.Popen[str], events: list[dict[str, Any]]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            events.append(json.loads(line))
        except ValueError:
            events.append({"stdout": line.rstrip()})


def _deliver(proc: subprocess.Popen[str], events: list[dict[str, Any]], fault: str, sig: int,
             limit: float, rec: dict[str, Any]) -> None:
    deadline = time.monotonic() + limit
    while not any("ready" in e for e in events):
        if time.monotonic() > deadline or proc.poll() is not None:
            rec["not_ready"] = True
            return
        time.sleep(0.02)
    rec["signalled_at"] = time.monotonic()
    if fault == "ctrl-c":
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)
    try:
        proc.wait(limit)
        rec["exit_after"] = time.monotonic() - rec["signalled_at"]
    except subprocess.TimeoutExpired:
        pass


def _wait_gone(marker: str, limit: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if not marked(marker):
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def describe(rec: dict[str, Any], limit: float) -> str:
    """One table cell: what happened and how long it took."""
    ev: dict[str, Any] = {}
    notes = []
    for e in rec["events"]:
        ev.update(e)
        if "note" in e:
            notes.append(e["note"])
    parts = []
    fault = rec["fault"]
    if fault in SIGNALS:
        parts.append(_describe_signal(rec))
    elif fault == "crash10":
        if "counts" in ev:
            counts = ", ".join(f"{n} {k}" for k, n in sorted(ev["counts"].items(), key=lambda kv: -kv[1]))
            parts.append(f"{counts} in {ev['seconds']:.1f} s")
    else:
        if "victim" in ev:
            parts.append(f"{ev['victim']} after {ev['seconds']:.2f} s")
        if "others" in ev:
            others = ev["others"]
            ok = sum(1 for o in others if o.startswith("ok"))
            bad = sorted({o.split(":")[0] for o in others if not o.startswith("ok")})
            parts.append(f"{ok}/{len(others)} other tasks ok" + (f" ({', '.join(bad)})" if bad else ""))
        if "after" in ev:
            after = ev["after"]
            parts.append("pool still usable" if after.startswith("ok") else f"then: {after}")
        if "closed" in ev and fault == "hang":
            parts.append(f"with-block exit took {ev['closed']:.1f} s")
    if rec.get("hung") and fault not in SIGNALS:
        waiting = notes[-1] if notes else "starting"
        parts.append(f"**HUNG** {waiting} (killed at {limit:.0f} s)")
    elif fault not in SIGNALS and rec["returncode"] != 0:
        parts.append(f"script died ({_exit_text(rec['returncode'])})")
    if "initializer_runs" in rec:
        parts.append(f"initializer ran {rec['initializer_runs']} times")
    if rec["left"]:
        parts.append(f"**{rec['left']} processes left behind**")
    return "; ".join(parts) or "no result"


def _describe_signal(rec: dict[str, Any]) -> str:
    if rec.get("not_ready"):
        return "the script never got its workers running"
    if rec["fault"] == "parent-kill":
        gone = rec.get("orphans_gone_after")
        return (f"workers gone {gone:.1f} s after the script died" if gone is not None
                else "**workers still running 10 s after the script died**")
    after = rec.get("exit_after")
    if after is None:
        return "**did not exit**: still running at the limit after the signal (killed then)"
    text = f"exited in {after:.1f} s ({_exit_text(rec['returncode'])})"
    if "KeyboardInterrupt" in rec["stderr"]:
        text += ", KeyboardInterrupt"
    return text


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit {code}"


def table(results: dict[tuple[str, str], dict[str, Any]], faults: list[str], pools: list[str],
          limit: float) -> str:
    head = "| fault | " + " | ".join(POOLS[p] for p in pools) + " |"
    rule = "|---|" + "---|" * len(pools)
    rows = [head, rule]
    for f in faults:
        cells = [describe(results[(f, p)], limit).replace("|", "\\|") for p in pools]
        rows.append(f"| {FAULTS[f]} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _anypool_start(results: dict[tuple[str, str], dict[str, Any]]) -> str:
    """How the anypool pools started their workers, as their runs reported it (for the header)."""
    seen = {e["workers_started"] for rec in results.values() for e in rec["events"] if "workers_started" in e}
    if seen == {WORKERS_FORKED}:
        return ("anypool with its default: its first workers forked (the script has one thread\n"
                "when it makes the pool), replacements for dead workers from the fork server")
    if seen == {WORKERS_FROM_SERVER}:
        return "anypool with its default: every worker from the fork server"
    return "anypool with its default (fork while the script has one thread, else the fork server)"


def document(md: str, argv: list[str], seconds: float, results: dict[tuple[str, str], dict[str, Any]]) -> str:
    import anypool

    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"""# Faults: anypool, ProcessPoolExecutor and multiprocessing.Pool side by side

Produced by `python benchmarks/faults.py {shlex.join(argv)}` on {when}, in {seconds:.0f} s:
Python {platform.python_version()} on {platform.system()} ({cpus} CPUs), anypool {anypool.__version__};
2 workers per pool; the standard pools with their default start method
({multiprocessing.get_start_method()}); {_anypool_start(results)}.

Each cell is one run of the fault in a fresh interpreter under a hard limit;
**HUNG** means that run was still waiting at the limit and was killed (the
cell says what it was waiting for).  "Left behind" counts the run's processes
still alive 5 s after it ended.  Timings are wall-clock seconds on a shared
machine: read them as orders of magnitude.

{md}

How each row is run (the code is in `benchmarks/faults.py`):

- **crash rows** (SIGKILL, `os._exit`, segfault): once the workers are up, the
  task that dies is submitted, then three tasks sleeping 1 s; the cell gives what
  the dying task's future raised (and how long after the death), what the other
  three futures gave, and whether a task submitted afterwards runs.  SIGKILL comes
  from the script itself, by pid, once the victim task has started, as the OOM
  killer's would.
- **hang**: anypool gets `with_options(timeout=1)`; the standard pools have no
  per-task timeout, so the script waits with `result(timeout=1)` / `get(1)`, as
  their docs suggest, then leaves the `with` block.
- **1,000 tasks, every 10th kills its worker once**: anypool with `retries=2`
  (the retry then succeeds); the standard pools have no retries.  The cell counts
  how the 1,000 futures ended (or that `submit` itself refused them).
- **signals**: the script runs 4 tasks of 60 s in a `with` block; once they run,
  the signal goes to the script's pid (`kill -INT`, `kill -TERM`, `kill -KILL`) or,
  for Ctrl-C, to its whole process group as a terminal does.  The cell says how
  fast it exited; for SIGKILL, how long its workers outlived it.  "Did not exit"
  means it was still running at the limit: leaving the `with` block waits for
  the running 60 s tasks.
- **initializer**: a pool whose initializer raises gets 4 tasks; the cell counts
  how often the initializer ran before the run ended.
- **unpicklable argument**: `submit(fn, threading.Lock())`.
- **200 MB result**: one task returns `b"x" * 200_000_000`.
"""


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["--child"]:
        child(*args_list[1:4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma-separated, from: {', '.join(FAULTS)} (default: all)")
    parser.add_argument("--pools", default=",".join(POOLS),
                        help="comma-separated, from: anypool, ppe, mp (default: all)")
    parser.add_argument("--limit", type=float, default=20.0,
                        help="seconds one run may take before it counts as hung (default: 20)")
    parser.add_argument("--jobs", type=int, default=3, help="runs at the same time (default: 3)")
    parser.add_argument("--out", type=Path, help="also write the table, with how it was made, here")
    parser.add_argument("--json", type=Path, help="also write every run's raw record here")
    args = parser.parse_args(args_list)
    faults = [f for f in args.faults.split(",") if f]
    pools = [p for p in args.pools.split(",") if p]
    for name, known in (("fault", FAULTS), ("pool", POOLS)):
        bad = [x for x in (faults if name == "fault" else pools) if x not in known]
        if bad:
            parser.error(f"unknown {name}(s): {', '.join(bad)}; known: {', '.join(known)}")
    t0 = time.monotonic()
    jobs = [(f, p) for f in faults for p in pools]
    with cf.ThreadPoolExecutor(max(1, args.jobs)) as ex:
        futures = {job: ex.submit(run_one, *job, args.limit) for job in jobs}
        results = {}
        for job, fut in futures.items():
            results[job] = fut.result()
            print(f"  {job[0]:<12} {POOLS[job[1]]:<20} {describe(results[job], args.limit)}",
                  file=sys.stderr, flush=True)
    md = table(results, faults, pools, args.limit)
    print(md)
    if args.out:
        args.out.write_text(document(md, args_list, time.monotonic() - t0, results))
        print(f"written to {args.out}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps([results[j] for j in jobs], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
