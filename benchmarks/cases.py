"""The cases: what is measured, against which peers, and the targets from the benchmark issue.

Each contender is a function of the case's parameters that sets up what it
needs (data, a cluster), then times creating its pool, running the work and
shutting the pool down (``harness.timed``), in a child process of its own.
Peers are imported inside their contender, so one that is not installed
skips its row ("not installed") and nothing else.  ``workers`` is the CPU
count unless a case says otherwise.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import itertools
import math
import multiprocessing
import os
import pickle
import random
import shutil
import subprocess
import sys
from typing import Any

from benchmarks import work
from benchmarks.harness import Case, Measure, Params, Skip, Target, timed

CASES: dict[str, Case] = {}


def case(c: Case) -> Case:
    CASES[c.name] = c
    return c


def _chunk(n: int, w: int) -> int:
    """The "tuned" chunk size: a quarter of a fair share per worker (what Pool.map picks)."""
    return max(1, math.ceil(n / (4 * w)))


def _anypool_backend(name: str) -> None:
    import anypool

    reason = anypool.available_backends().get(name, f"backend {name!r} is not registered")
    if name not in anypool.available_backends() or reason:
        raise Skip(f"anypool's {name} backend is not available here ({reason}); "
                   "it is built on another branch")


# -- 1. tiny tasks on threads -------------------------------------------------------------------

THREADS_MAP = case(Case(
    "threads-map", "100k no-op tasks on threads, map", "ThreadPool.map",
    full={"n": 100_000}, quick={"n": 5_000},
    targets=[
        Target("anypool map ≥ 1.0x ThreadPool.map (auto-batching)", "anypool map", ("ThreadPool.map",), 1.0),
        Target("auto ≥ 0.9x the best anypool backend", "anypool map, auto", ("anypool map",), 0.9, auto=True),
    ]))


@THREADS_MAP.contender("serial loop", "baseline")
def _(p: Params) -> Measure:
    return timed(lambda: list(map(work.noop, range(p["n"]))), p["n"])


@THREADS_MAP.contender("anypool map", "anypool")
def _(p: Params) -> Measure:
    import anypool

    def go() -> None:
        with anypool.Pool("thread", p["workers"]) as pool:
            list(pool.map(work.noop, range(p["n"])))
    return timed(go, p["n"])


@THREADS_MAP.contender("anypool map, auto", "anypool")
def _(p: Params) -> Measure:
    import anypool

    def go() -> None:
        with anypool.Pool("auto", p["workers"]) as pool:
            list(pool.map(work.noop, range(p["n"])))
    return timed(go, p["n"])


@THREADS_MAP.contender("ThreadPool.map")
def _(p: Params) -> Measure:
    from multiprocessing.pool import ThreadPool

    def go() -> None:
        with ThreadPool(p["workers"]) as pool:
            pool.map(work.noop, range(p["n"]))
    return timed(go, p["n"])


@THREADS_MAP.contender("ThreadPoolExecutor.map")
def _(p: Params) -> Measure:
    def go() -> None:
        with cf.ThreadPoolExecutor(p["workers"]) as ex:
            list(ex.map(work.noop, range(p["n"])))
    return timed(go, p["n"])


@THREADS_MAP.contender("mpire threading")
def _(p: Params) -> Measure:
    from mpire import WorkerPool

    def go() -> None:
        with WorkerPool(n_jobs=p["workers"], start_method="threading") as pool:
            pool.map(work.noop, range(p["n"]), progress_bar=False)
    return timed(go, p["n"])


@THREADS_MAP.contender("joblib threading")
def _(p: Params) -> Measure:
    from joblib import Parallel, delayed

    def go() -> None:
        Parallel(n_jobs=p["workers"], prefer="threads")(delayed(work.noop)(i) for i in range(p["n"]))
    return timed(go, p["n"])


THREADS_SUBMIT = case(Case(
    "threads-submit", "100k no-op tasks on threads, one submit each", "ThreadPoolExecutor.submit",
    full={"n": 100_000}, quick={"n": 5_000},
    targets=[Target("anypool submit ≥ 1.5x ThreadPoolExecutor.submit", "anypool submit",
                    ("ThreadPoolExecutor.submit",), 1.5)]))


@THREADS_SUBMIT.contender("anypool submit", "anypool")
def _(p: Params) -> Measure:
    import anypool

    def go() -> None:
        with anypool.Pool("thread", p["workers"]) as pool:
            futs = [pool.submit(work.noop, i) for i in range(p["n"])]
            for f in futs:
                f.result()
    return timed(go, p["n"])


@THREADS_SUBMIT.contender("ThreadPoolExecutor.submit")
def _(p: Params) -> Measure:
    def go() -> None:
        with cf.ThreadPoolExecutor(p["workers"]) as ex:
            futs = [ex.submit(work.noop, i) for i in range(p["n"])]
            for f in futs:
                f.result()
    return timed(go, p["n"])


@THREADS_SUBMIT.contender("ThreadPool.apply_async")
def _(p: Params) -> Measure:
    from multiprocessing.pool import ThreadPool

    def go() -> None:
        with ThreadPool(p["workers"]) as pool:
            rs = [pool.apply_async(work.noop, (i,)) for i in range(p["n"])]
            for r in rs:
                r.get()
    return timed(go, p["n"])


# -- 2. tiny tasks on processes ---------------------------------------------------------------

PROCESS_MAP = case(Case(
    "process-map", "200k x*x on processes, map", "Pool.map",
    full={"n": 200_000, "n_unchunked": 20_000}, quick={"n": 5_000, "n_unchunked": 500},
    targets=[
        Target("anypool map ≥ 1.0x multiprocessing Pool.map (no chunksize given)", "anypool map",
               ("Pool.map",), 1.0),
        Target("the same, fork server already running (for the record)",
               "anypool map, fork server already running", ("Pool.map",), 1.0),
        Target("auto ≥ 0.9x the best anypool backend", "anypool map, auto",
               ("anypool map", "anypool map, thread"), 0.9, auto=True),
    ]))


@PROCESS_MAP.contender("serial loop", "baseline")
def _(p: Params) -> Measure:
    return timed(lambda: list(map(work.square, range(p["n"]))), p["n"])


def _anypool_map(backend: str, fn: Any, n: int, w: int, **kw: Any) -> Measure:
    import anypool

    def go() -> None:
        with anypool.Pool(backend, w, **kw) as pool:
            list(pool.map(fn, range(n)))
    return timed(go, n)


@PROCESS_MAP.contender("anypool map", "anypool")
def _(p: Params) -> Measure:
    return _anypool_map("process", work.square, p["n"], p["workers"])


@PROCESS_MAP.contender("anypool map, fork server already running", "anypool",
                       note="its one-time start is outside the timing")
def _(p: Params) -> Measure:
    import anypool

    with anypool.Pool("process", 1) as warm:  # starts the fork server, which later pools reuse
        warm.submit(abs, 1).result()
    return _anypool_map("process", work.square, p["n"], p["workers"])


@PROCESS_MAP.contender("anypool map, start_method=fork", "anypool")
def _(p: Params) -> Measure:
    return _anypool_map("process", work.square, p["n"], p["workers"], start_method="fork")


@PROCESS_MAP.contender("anypool map, start_method=spawn", "anypool")
def _(p: Params) -> Measure:
    return _anypool_map("process", work.square, p["n"], p["workers"], start_method="spawn")


@PROCESS_MAP.contender("anypool map, thread", "anypool")
def _(p: Params) -> Measure:
    return _anypool_map("thread", work.square, p["n"], p["workers"])


@PROCESS_MAP.contender("anypool map, auto", "anypool")
def _(p: Params) -> Measure:
    return _anypool_map("auto", work.square, p["n"], p["workers"])


@PROCESS_MAP.contender("Pool.map")
def _(p: Params) -> Measure:
    def go() -> None:
        with multiprocessing.Pool(p["workers"]) as pool:
            pool.map(work.square, range(p["n"]))
    return timed(go, p["n"])


@PROCESS_MAP.contender("ProcessPoolExecutor.map, chunksize=1", note="fewer items")
def _(p: Params) -> Measure:
    n = p["n_unchunked"]

    def go() -> None:
        with cf.ProcessPoolExecutor(p["workers"]) as ex:
            list(ex.map(work.square, range(n)))
    return timed(go, n)


@PROCESS_MAP.contender("ProcessPoolExecutor.map, tuned chunksize")
def _(p: Params) -> Measure:
    def go() -> None:
        with cf.ProcessPoolExecutor(p["workers"]) as ex:
            list(ex.map(work.square, range(p["n"]), chunksize=_chunk(p["n"], p["workers"])))
    return timed(go, p["n"])


@PROCESS_MAP.contender("loky, tuned chunksize")
def _(p: Params) -> Measure:
    from loky import get_reusable_executor

    def go() -> None:
        ex = get_reusable_executor(max_workers=p["workers"])
        list(ex.map(work.square, range(p["n"]), chunksize=_chunk(p["n"], p["workers"])))
        ex.shutdown(wait=True)
    return timed(go, p["n"])


@PROCESS_MAP.contender("joblib (loky, auto batching)")
def _(p: Params) -> Measure:
    from joblib import Parallel, delayed

    def go() -> None:
        Parallel(n_jobs=p["workers"])(delayed(work.square)(i) for i in range(p["n"]))
    return timed(go, p["n"])


@PROCESS_MAP.contender("mpire")
def _(p: Params) -> Measure:
    from mpire import WorkerPool

    def go() -> None:
        with WorkerPool(n_jobs=p["workers"]) as pool:
            pool.map(work.square, range(p["n"]), progress_bar=False)
    return timed(go, p["n"])


@PROCESS_MAP.contender("pebble, tuned chunksize")
def _(p: Params) -> Measure:
    from pebble import ProcessPool

    def go() -> None:
        with ProcessPool(max_workers=p["workers"]) as pool:
            list(pool.map(work.square, range(p["n"]), chunksize=_chunk(p["n"], p["workers"])).result())
    return timed(go, p["n"])


PROCESS_SUBMIT = case(Case(
    "process-submit", "x*x on processes, one submit each", "ProcessPoolExecutor.submit",
    full={"n": 20_000}, quick={"n": 500},
    targets=[Target("anypool submit one by one ≥ 3x ProcessPoolExecutor.submit", "anypool submit",
                    ("ProcessPoolExecutor.submit",), 3.0)]))


@PROCESS_SUBMIT.contender("anypool submit", "anypool")
def _(p: Params) -> Measure:
    import anypool

    def go() -> None:
        with anypool.Pool("process", p["workers"]) as pool:
            futs = [pool.submit(work.square, i) for i in range(p["n"])]
            for f in futs:
                f.result()
    return timed(go, p["n"])


@PROCESS_SUBMIT.contender("ProcessPoolExecutor.submit")
def _(p: Params) -> Measure:
    def go() -> None:
        with cf.ProcessPoolExecutor(p["workers"]) as ex:
            futs = [ex.submit(work.square, i) for i in range(p["n"])]
            for f in futs:
                f.result()
    return timed(go, p["n"])


@PROCESS_SUBMIT.contender("loky submit")
def _(p: Params) -> Measure:
    from loky import get_reusable_executor

    def go() -> None:
        ex = get_reusable_executor(max_workers=p["workers"])
        futs = [ex.submit(work.square, i) for i in range(p["n"])]
        for f in futs:
            f.result()
        ex.shutdown(wait=True)
    return timed(go, p["n"])


@PROCESS_SUBMIT.contender("pebble submit")
def _(p: Params) -> Measure:
    from pebble import ProcessPool

    def go() -> None:
        with ProcessPool(max_workers=p["workers"]) as pool:
            futs = [pool.submit(work.square, None, i) for i in range(p["n"])]
            for f in futs:
                f.result()
    return timed(go, p["n"])


# -- 3. CPU scaling -------------------------------------------------------------------------------

CPU = case(Case(
    "cpu-scaling", "CPU-bound pure Python, 64 tasks: speed-up over a serial loop", "serial loop",
    full={"tasks": 64, "loops": 1_000_000}, quick={"tasks": 8, "loops": 100_000},
    targets=[
        Target("anypool process map speed-up ≥ 0.95 x cores", "anypool map", ("serial loop",),
               lambda w: 0.95 * w),
        Target("auto ≥ 0.9x the best anypool backend", "anypool map, auto",
               ("anypool map", "anypool submit"), 0.9, auto=True),
    ], unit="tasks"))


@CPU.contender("serial loop", "baseline")
def _(p: Params) -> Measure:
    return timed(lambda: [work.burn(p["loops"]) for _ in range(p["tasks"])], p["tasks"])


def _cpu_anypool(p: Params, backend: str, submit: bool = False) -> Measure:
    import anypool

    def go() -> None:
        with anypool.Pool(backend, p["workers"]) as pool:
            if submit:
                for f in [pool.submit(work.burn, p["loops"]) for _ in range(p["tasks"])]:
                    f.result()
            else:
                list(pool.map(work.burn, [p["loops"]] * p["tasks"]))
    return timed(go, p["tasks"])


@CPU.contender("anypool map", "anypool")
def _(p: Params) -> Measure:
    return _cpu_anypool(p, "process")


@CPU.contender("anypool submit", "anypool")
def _(p: Params) -> Measure:
    return _cpu_anypool(p, "process", submit=True)


@CPU.contender("anypool map, auto", "anypool")
def _(p: Params) -> Measure:
    return _cpu_anypool(p, "auto")


@CPU.contender("ProcessPoolExecutor.map")
def _(p: Params) -> Measure:
    def go() -> None:
        with cf.ProcessPoolExecutor(p["workers"]) as ex:
            list(ex.map(work.burn, [p["loops"]] * p["tasks"]))
    return timed(go, p["tasks"])


@CPU.contender("Pool.map")
def _(p: Params) -> Measure:
    def go() -> None:
        with multiprocessing.Pool(p["workers"]) as pool:
            pool.map(work.burn, [p["loops"]] * p["tasks"])
    return timed(go, p["tasks"])


@CPU.contender("loky")
def _(p: Params) -> Measure:
    from loky import get_reusable_executor

    def go() -> None:
        ex = get_reusable_executor(max_workers=p["workers"])
        list(ex.map(work.burn, [p["loops"]] * p["tasks"]))
        ex.shutdown(wait=True)
    return timed(go, p["tasks"])


@CPU.contender("joblib")
def _(p: Params) -> Measure:
    from joblib import Parallel, delayed

    def go() -> None:
        Parallel(n_jobs=p["workers"])(delayed(work.burn)(p["loops"]) for _ in range(p["tasks"]))
    return timed(go, p["tasks"])


@CPU.contender("mpire")
def _(p: Params) -> Measure:
    from mpire import WorkerPool

    def go() -> None:
        with WorkerPool(n_jobs=p["workers"]) as pool:
            pool.map(work.burn, [p["loops"]] * p["tasks"], progress_bar=False)
    return timed(go, p["tasks"])


@CPU.contender("pebble")
def _(p: Params) -> Measure:
    from pebble import ProcessPool

    def go() -> None:
        with ProcessPool(max_workers=p["workers"]) as pool:
            list(pool.map(work.burn, [p["loops"]] * p["tasks"]).result())
    return timed(go, p["tasks"])


# -- 4. GIL-releasing work ----------------------------------------------------------------------

SHA = case(Case(
    "sha256", "sha256 over 8 MiB buffers (the GIL is released): speed-up over serial", "serial loop",
    full={"buffers": 32, "size": 8 << 20}, quick={"buffers": 4, "size": 1 << 20},
    targets=[Target("auto ≥ 0.95x the best anypool backend", "anypool map, auto",
                    ("anypool map, thread", "anypool map, process"), 0.95, auto=True)],
    unit="buffers"))


def _buffers(p: Params) -> list[bytes]:
    return [random.Random(i).randbytes(p["size"]) for i in range(p["buffers"])]


@SHA.contender("serial loop", "baseline")
def _(p: Params) -> Measure:
    bufs = _buffers(p)
    return timed(lambda: [work.sha(b) for b in bufs], len(bufs))


def _sha_anypool(p: Params, backend: str, share: bool = False) -> Measure:
    import anypool

    bufs: list[Any] = _buffers(p)
    if share:
        bufs = [pickle.PickleBuffer(anypool.share(b)) for b in bufs]

    def go() -> None:
        with anypool.Pool(backend, p["workers"]) as pool:
            list(pool.map(work.sha, bufs))
    return timed(go, len(bufs))


@SHA.contender("anypool map, auto", "anypool")
def _(p: Params) -> Measure:
    return _sha_anypool(p, "auto")


@SHA.contender("anypool map, thread", "anypool")
def _(p: Params) -> Measure:
    return _sha_anypool(p, "thread")


@SHA.contender("anypool map, process", "anypool")
def _(p: Params) -> Measure:
    return _sha_anypool(p, "process")


@SHA.contender("anypool map, process, share()d buffers", "anypool", note="buffers shared before timing")
def _(p: Params) -> Measure:
    return _sha_anypool(p, "process", share=True)


@SHA.contender("ThreadPoolExecutor.map")
def _(p: Params) -> Measure:
    bufs = _buffers(p)

    def go() -> None:
        with cf.ThreadPoolExecutor(p["workers"]) as ex:
            list(ex.map(work.sha, bufs))
    return timed(go, len(bufs))


@SHA.contender("ProcessPoolExecutor.map")
def _(p: Params) -> Measure:
    bufs = _buffers(p)

    def go() -> None:
        with cf.ProcessPoolExecutor(p["workers"]) as ex:
            list(ex.map(work.sha, bufs))
    return timed(go, len(bufs))


# -- 5. many IO waits ---------------------------------------------------------------------------

SLEEPS = case(Case(
    "asyncio-sleep", "100k x asyncio.sleep(0.05): time and memory per task", "asyncio.gather",
    full={"n": 100_000, "sleep": 0.05}, quick={"n": 2_000, "sleep": 0.05},
    targets=[
        Target("anypool ≤ 1.25x gather's time", "anypool submit+await, in the caller's loop",
               ("asyncio.gather",), 0.8),
        Target("≤ 1 KB extra memory a task", "anypool submit+await, in the caller's loop",
               ("asyncio.gather",), 1000, kind="mem_extra"),
        Target("anypool map ≤ 1.25x gather's time", "anypool map, workers=n", ("asyncio.gather",), 0.8),
        Target("auto ≥ 0.9x the best anypool backend", "anypool map, auto, workers=n",
               ("anypool map, workers=n",), 0.9, auto=True),
    ]))


@SLEEPS.contender("asyncio.gather")
def _(p: Params) -> Measure:
    async def main() -> None:
        await asyncio.gather(*(work.nap(p["sleep"]) for _ in range(p["n"])))
    return timed(lambda: asyncio.run(main()), p["n"], memory=True)


@SLEEPS.contender("uvloop gather")
def _(p: Params) -> Measure:
    import uvloop

    async def main() -> None:
        await asyncio.gather(*(work.nap(p["sleep"]) for _ in range(p["n"])))
    return timed(lambda: uvloop.run(main()), p["n"], memory=True)


@SLEEPS.contender("anypool submit+await, in the caller's loop", "anypool")
def _(p: Params) -> Measure:
    import anypool

    async def main() -> None:
        async with anypool.Pool("async", p["n"]) as pool:
            await asyncio.gather(*(pool.submit(work.nap, p["sleep"]) for _ in range(p["n"])))
    return timed(lambda: asyncio.run(main()), p["n"], memory=True)


@SLEEPS.contender("anypool map, workers=n", "anypool")
def _(p: Params) -> Measure:
    import anypool

    def go() -> None:
        with anypool.Pool("async", p["n"]) as pool:
            list(pool.map(work.nap, itertools.repeat(p["sleep"], p["n"])))
    return timed(go, p["n"], memory=True)


@SLEEPS.contender("anypool map, auto, workers=n", "anypool")
def _(p: Params) -> Measure:
    import anypool

    def go() -> None:
        with anypool.Pool("auto", p["n"]) as pool:
            list(pool.map(work.nap, itertools.repeat(p["sleep"], p["n"])))
    return timed(go, p["n"], memory=True)


@SLEEPS.contender("anypool map, default workers (10,000 at once)", "anypool")
def _(p: Params) -> Measure:
    import anypool

    def go() -> None:
        with anypool.Pool("async") as pool:
            list(pool.map(work.nap, itertools.repeat(p["sleep"], p["n"])))
    return timed(go, p["n"], memory=True)


# -- 6. large arrays to processes ---------------------------------------------------------------

ARRAYS = case(Case(
    "arrays", "1 GiB of numpy arrays sent to process tasks (each task sums one)",
    "ProcessPoolExecutor.map (pickling)",
    full={"arrays": 16, "size": 64 << 20}, quick={"arrays": 4, "size": 2 << 20},
    targets=[
        Target("≥ 20x pickling (arrays made with anypool.share)", "anypool map, share()d arrays",
               ("ProcessPoolExecutor.map (pickling)",), 20.0),
        Target("automatic shared memory vs pickling (no target; for the record)", "anypool map",
               ("ProcessPoolExecutor.map (pickling)",), 1.0),
    ], unit="arrays"))


def _arrays(p: Params, oob: bool = False) -> list[Any]:
    """numpy arrays when numpy is installed; else bytearrays (as out-of-band buffers with ``oob``)."""
    try:
        import numpy as np
    except ImportError:
        raw = [bytearray(random.Random(i).randbytes(p["size"])) for i in range(p["arrays"])]
        return [pickle.PickleBuffer(b) for b in raw] if oob else raw
    return [np.random.default_rng(i).random(p["size"] // 8) for i in range(p["arrays"])]


def _payload_note() -> str:
    try:
        import numpy  # noqa: F401
    except ImportError:
        return "numpy not installed: bytearrays as PickleBuffers"
    return ""


@ARRAYS.contender("sum in the parent, no pool", "baseline")
def _(p: Params) -> Measure:
    arrays = _arrays(p)
    m = timed(lambda: [work.checksum(a) for a in arrays], len(arrays))
    return {**m, "note": _payload_note()}


@ARRAYS.contender("ProcessPoolExecutor.map (pickling)")
def _(p: Params) -> Measure:
    arrays = _arrays(p)

    def go() -> None:
        with cf.ProcessPoolExecutor(p["workers"]) as ex:
            list(ex.map(work.checksum, arrays))
    return timed(go, len(arrays))


@ARRAYS.contender("anypool map", "anypool", note="automatic: one copy into shared memory")
def _(p: Params) -> Measure:
    import anypool

    arrays = _arrays(p, oob=True)

    def go() -> None:
        with anypool.Pool("process", p["workers"]) as pool:
            list(pool.map(work.checksum, arrays))
    return {**timed(go, len(arrays)), "note": _payload_note()}


@ARRAYS.contender("anypool map, share()d arrays", "anypool",
                  note="arrays put in shared memory before timing, as mpire's exist before its fork")
def _(p: Params) -> Measure:
    import anypool

    arrays = [anypool.share(a) for a in _arrays(p)]
    args = [pickle.PickleBuffer(a) if isinstance(a, memoryview) else a for a in arrays]

    def go() -> None:
        with anypool.Pool("process", p["workers"]) as pool:
            list(pool.map(work.checksum, args))
    return timed(go, len(arrays))


@ARRAYS.contender("joblib (auto memmap)")
def _(p: Params) -> Measure:
    import numpy  # noqa: F401  (memmapping is for numpy arrays)
    from joblib import Parallel, delayed
    arrays = _arrays(p)

    def go() -> None:
        Parallel(n_jobs=p["workers"])(delayed(work.checksum)(a) for a in arrays)
    return timed(go, len(arrays))


@ARRAYS.contender("mpire shared_objects (fork, copy-on-write)")
def _(p: Params) -> Measure:
    import numpy  # noqa: F401
    from mpire import WorkerPool
    arrays = _arrays(p)

    def go() -> None:
        with WorkerPool(n_jobs=p["workers"], shared_objects=arrays, start_method="fork") as pool:
            pool.map(work.checksum_shared, range(len(arrays)), progress_bar=False)
    return timed(go, len(arrays))


# -- 7. shell commands ----------------------------------------------------------------------------

SHELL = case(Case(
    "shell", "1,000 x `true`, 2 at a time", "GNU parallel",
    full={"n": 1_000, "jobs": 2}, quick={"n": 20, "jobs": 2},
    targets=[
        Target("anypool run ≥ 4x GNU parallel's jobs/s", "anypool run -j 2", ("GNU parallel",), 4.0),
        Target("anypool run ≥ 0.8x xargs", "anypool run -j 2", ("xargs -P 2 -n 1",), 0.8),
    ], unit="jobs"))


def _anypool_cli() -> str:
    exe = shutil.which("anypool", path=os.path.dirname(sys.executable)) or shutil.which("anypool")
    if exe is None:
        raise Skip("no `anypool` command installed")
    try:
        ok = subprocess.run([exe, "run", "--help"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        raise Skip(f"`{exe} run --help` failed: that `anypool` command is broken or has no `run`")
    return exe


@SHELL.contender("anypool run -j 2", "anypool")
def _(p: Params) -> Measure:
    exe = _anypool_cli()
    argv = [exe, "run", "-j", str(p["jobs"]), "true", ":::", *map(str, range(p["n"]))]
    return timed(lambda: subprocess.run(argv, check=True, stdout=subprocess.DEVNULL), p["n"])


@SHELL.contender("GNU parallel")
def _(p: Params) -> Measure:
    if shutil.which("parallel") is None:
        raise Skip("GNU parallel is not installed (apt-get install parallel)")
    argv = ["parallel", "--will-cite", "-j", str(p["jobs"]), "true", ":::", *map(str, range(p["n"]))]
    return timed(lambda: subprocess.run(argv, check=True, stdout=subprocess.DEVNULL), p["n"])


@SHELL.contender("xargs -P 2 -n 1")
def _(p: Params) -> Measure:
    data = "\n".join(map(str, range(p["n"])))
    argv = ["xargs", "-P", str(p["jobs"]), "-n", "1", "true"]
    return timed(lambda: subprocess.run(argv, input=data, text=True, check=True), p["n"])


@SHELL.contender("threads + subprocess.run (vfork)", "baseline")
def _(p: Params) -> Measure:
    def go() -> None:
        with cf.ThreadPoolExecutor(p["jobs"]) as ex:
            list(ex.map(lambda i: subprocess.run(["true", str(i)]), range(p["n"])))
    return timed(go, p["n"])


@SHELL.contender("threads + subprocess.run, close_fds=False (posix_spawn)", "baseline")
def _(p: Params) -> Measure:
    def go() -> None:
        with cf.ThreadPoolExecutor(p["jobs"]) as ex:
            list(ex.map(lambda i: subprocess.run(["/bin/true", str(i)], close_fds=False), range(p["n"])))
    return timed(go, p["n"])


@SHELL.contender("asyncio subprocesses, 2 at a time", "baseline")
def _(p: Params) -> Measure:
    async def main() -> None:
        sem = asyncio.Semaphore(p["jobs"])

        async def one(i: int) -> None:
            async with sem:
                proc = await asyncio.create_subprocess_exec("true", str(i))
                await proc.wait()
        await asyncio.gather(*(one(i) for i in range(p["n"])))
    return timed(lambda: asyncio.run(main()), p["n"])


# -- 8. streaming a long generator -----------------------------------------------------------------

IMAP = case(Case(
    "imap", "a 2M-item generator through imap (x*x on processes): throughput and memory",
    "Pool.imap, chunksize=1000",
    full={"n": 2_000_000}, quick={"n": 10_000},
    targets=[
        Target("memory growth ≤ 10 MiB (flat)", "anypool imap", (), 10 * 2**20, kind="mem_growth"),
        Target("throughput ≥ 1.0x Pool.imap", "anypool imap", ("Pool.imap, chunksize=1000",), 1.0),
        Target("auto ≥ 0.9x the best anypool backend", "anypool imap, auto",
               ("anypool imap", "anypool imap, thread"), 0.9, auto=True),
    ], unit="items"))


def _consume(it: Any) -> None:
    for _ in it:
        pass


def _imap_anypool(p: Params, backend: str) -> Measure:
    import anypool

    def go() -> None:
        with anypool.Pool(backend, p["workers"]) as pool:
            _consume(pool.imap(work.square, (i for i in range(p["n"]))))
    return timed(go, p["n"], memory=True)


@IMAP.contender("anypool imap", "anypool")
def _(p: Params) -> Measure:
    return _imap_anypool(p, "process")


@IMAP.contender("anypool imap, thread", "anypool")
def _(p: Params) -> Measure:
    return _imap_anypool(p, "thread")


@IMAP.contender("anypool imap, auto", "anypool")
def _(p: Params) -> Measure:
    return _imap_anypool(p, "auto")


@IMAP.contender("Pool.imap, chunksize=1000")
def _(p: Params) -> Measure:
    def go() -> None:
        with multiprocessing.Pool(p["workers"]) as pool:
            _consume(pool.imap(work.square, (i for i in range(p["n"])), chunksize=1000))
    return timed(go, p["n"], memory=True)


@IMAP.contender("ProcessPoolExecutor.map, chunksize=1000")
def _(p: Params) -> Measure:
    def go() -> None:
        with cf.ProcessPoolExecutor(p["workers"]) as ex:
            _consume(ex.map(work.square, (i for i in range(p["n"])), chunksize=1000))
    return timed(go, p["n"], memory=True)


# -- 9. what watching costs -------------------------------------------------------------------------

OBSERVE = case(Case(
    "observe", "progress bar + event recording on 100k no-op thread tasks", "map, plain",
    full={"n": 100_000}, quick={"n": 5_000},
    targets=[
        Target("map with progress + recording ≤ 5% slower", "map, progress + record", ("map, plain",), 0.95),
        Target("submit with progress + recording ≤ 5% slower", "submit, progress + record",
               ("submit, plain",), 0.95),
        Target("the same for map, tqdm already imported (for the record)",
               "map, progress + record, tqdm loaded", ("map, plain",), 0.95),
        Target("the same for submit, tqdm already imported (for the record)",
               "submit, progress + record, tqdm loaded", ("submit, plain",), 0.95),
    ]))


def _observe(p: Params, submit: bool, watched: bool, tqdm_loaded: bool = False) -> Measure:
    import anypool

    if tqdm_loaded:
        # its import (~35 ms, most of it tqdm asking importlib.metadata for its own
        # version) is paid once a process; this row shows what watching costs a task
        import tqdm.std  # noqa: F401

    kw: dict[str, Any] = {"progress": "always", "record": True} if watched else {}
    pools = []

    def go() -> None:
        with anypool.Pool("thread", p["workers"], **kw) as pool:
            pools.append(pool)
            if submit:
                for f in [pool.submit(work.noop, i) for i in range(p["n"])]:
                    f.result()
            else:
                list(pool.map(work.noop, range(p["n"])))
    measure = timed(go, p["n"])
    if watched:
        # read after timing: what is timed is watching a run; reading 100k rows
        # of timeline back (~0.05-0.15 s here, most of it the garbage collector)
        # is a separate, once-a-run cost
        assert sum(row.size for row in pools[0].timeline()) == p["n"]
    return measure


@OBSERVE.contender("map, plain", "anypool")
def _(p: Params) -> Measure:
    return _observe(p, False, False)


@OBSERVE.contender("map, progress + record", "anypool")
def _(p: Params) -> Measure:
    return _observe(p, False, True)


@OBSERVE.contender("map, progress + record, tqdm loaded", "anypool",
                   note="tqdm imported before timing, as in any program that already uses it")
def _(p: Params) -> Measure:
    return _observe(p, False, True, tqdm_loaded=True)


@OBSERVE.contender("submit, plain", "anypool")
def _(p: Params) -> Measure:
    return _observe(p, True, False)


@OBSERVE.contender("submit, progress + record", "anypool")
def _(p: Params) -> Measure:
    return _observe(p, True, True)


@OBSERVE.contender("submit, progress + record, tqdm loaded", "anypool",
                   note="tqdm imported before timing")
def _(p: Params) -> Measure:
    return _observe(p, True, True, tqdm_loaded=True)


# -- 10. IO waits that also need CPU ------------------------------------------------------------------

MIXED = case(Case(
    "process+async", "10,000 simulated network waits, each followed by a CPU-heavy parse", "anypool async",
    full={"n": 10_000, "wait": 0.02, "work": 10_000, "n_process": 500},
    quick={"n": 100, "wait": 0.02, "work": 2_000, "n_process": 20},
    targets=[
        Target("process+async ≥ 1.0x async alone", "anypool process+async", ("anypool async",), 1.0),
        Target("process+async ≥ 1.0x process alone", "anypool process+async", ("anypool process",), 1.0),
        Target("auto ≥ 0.9x the best anypool backend", "anypool map, auto",
               ("anypool process+async", "anypool async", "anypool process"), 0.9, auto=True),
    ]))


def _mixed(p: Params, backend: str, fn: Any, n: int) -> Measure:
    import anypool

    call = functools.partial(fn, p["wait"], p["work"])

    def go() -> None:
        with anypool.Pool(backend, p["workers"] if "process" in backend else None) as pool:
            list(pool.map(call, range(n)))
    return timed(go, n)


@MIXED.contender("anypool process+async", "anypool")
def _(p: Params) -> Measure:
    return _mixed(p, "process+async", work.fetch_parse, p["n"])


@MIXED.contender("anypool async", "anypool")
def _(p: Params) -> Measure:
    return _mixed(p, "async", work.fetch_parse, p["n"])


@MIXED.contender("anypool process", "anypool", note="sync version, fewer items")
def _(p: Params) -> Measure:
    return _mixed(p, "process", work.fetch_parse_sync, p["n_process"])


@MIXED.contender("anypool map, auto", "anypool")
def _(p: Params) -> Measure:
    return _mixed(p, "auto", work.fetch_parse, p["n"])


@MIXED.contender("aiomultiprocess", note="childconcurrency=1000, like anypool's default")
def _(p: Params) -> Measure:
    import aiomultiprocess

    async def main() -> None:
        async with aiomultiprocess.Pool(processes=p["workers"], childconcurrency=1000) as pool:
            await pool.starmap(work.fetch_parse, [(p["wait"], p["work"], i) for i in range(p["n"])])
    return timed(lambda: asyncio.run(main()), p["n"])


@MIXED.contender("asyncio.gather", "baseline")
def _(p: Params) -> Measure:
    async def main() -> None:
        await asyncio.gather(*(work.fetch_parse(p["wait"], p["work"], i) for i in range(p["n"])))
    return timed(lambda: asyncio.run(main()), p["n"])


# -- 11. a Dask cluster ------------------------------------------------------------------------------

DASK = case(Case(
    "dask", "per-task overhead on a local Dask cluster (x*x; cluster started before timing; "
    "quick runs use a threads-only cluster)",
    "client.map",
    full={"n": 2_000, "processes": True}, quick={"n": 50, "processes": False},
    targets=[Target("anypool dask map ≥ 0.9x client.map", "anypool map, dask", ("client.map",), 0.9)]))


class _Cluster:
    def __init__(self, w: int, processes: bool) -> None:
        from distributed import Client, LocalCluster

        # threads-only clusters talk in-process (inproc://) and take no host
        where = {"host": "127.0.0.1"} if processes else {}
        self.cluster = LocalCluster(n_workers=w, threads_per_worker=1, processes=processes,
                                    dashboard_address="127.0.0.1:0", **where)
        self.client = Client(self.cluster)
        self.client.submit(work.square, 1).result()

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


_clusters: dict[int, _Cluster] = {}


def _with_cluster(p: Params, run: Any) -> Measure:
    """Run ``run(cluster)`` on a cluster started outside the timing (one per child process)."""
    cluster = _clusters.get(p["workers"])
    if cluster is None:
        import atexit

        cluster = _clusters[p["workers"]] = _Cluster(p["workers"], p["processes"])
        atexit.register(cluster.close)
    return run(cluster)  # type: ignore[no-any-return]


@DASK.contender("client.map")
def _(p: Params) -> Measure:
    def run(c: _Cluster) -> Measure:
        return timed(lambda: c.client.gather(c.client.map(work.square, range(p["n"]))), p["n"])
    return _with_cluster(p, run)


@DASK.contender("client.submit, one each")
def _(p: Params) -> Measure:
    def run(c: _Cluster) -> Measure:
        return timed(lambda: c.client.gather([c.client.submit(work.square, i) for i in range(p["n"])]),
                     p["n"])
    return _with_cluster(p, run)


@DASK.contender("anypool map, dask", "anypool")
def _(p: Params) -> Measure:
    _anypool_backend("dask")
    import anypool

    def run(c: _Cluster) -> Measure:
        def go() -> None:
            with anypool.Pool("dask", address=c.cluster.scheduler_address) as pool:
                list(pool.map(work.square, range(p["n"])))
        return timed(go, p["n"])
    return _with_cluster(p, run)


@DASK.contender("anypool submit, dask", "anypool")
def _(p: Params) -> Measure:
    _anypool_backend("dask")
    import anypool

    def run(c: _Cluster) -> Measure:
        def go() -> None:
            with anypool.Pool("dask", address=c.cluster.scheduler_address) as pool:
                for f in [pool.submit(work.square, i) for i in range(p["n"])]:
                    f.result()
        return timed(go, p["n"])
    return _with_cluster(p, run)
