"""``make demo``: anypool doing its main job on this machine, with timings.

Each part runs real work and prints how long it took next to the time the
same work takes one item at a time:

1. IO waits on coroutines: 1,000 requests to a slow local server at once.
2. Blocking IO on threads: the same server through plain sockets.
3. CPU-bound Python on processes, against serial and threads.
4. A coroutine fan-out: pages whose links are fetched concurrently, from
   inside ``asyncio.run`` (the pool shares the caller's event loop).
5. One ``backend="auto"`` pool given all of the above: what it chose for
   each callable, and why.
6. Faults survived: a worker SIGKILLed mid-task, the same with a retry,
   and a hung task stopped by ``timeout=``; the pool goes on each time.

The "server" is an asyncio TCP server in a process of its own, on 127.0.0.1
(a random free port), that answers each request after 0.2 s, standing in
for a slow web service.
Everything is stopped at the end: no process or thread is left.

Run: ``make demo`` (or ``python examples/demo.py``)
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anypool
from anypool.observers.recorder import Row

DELAY = 0.2  # seconds the server takes to answer a request
ROWS: list[tuple[str, str, int, float, float]] = []  # (part, backend, tasks, seconds, serial seconds)
TIMELINE: list[Row] = []  # what the recording pools ran, for the report at the end


# -- a slow local service ----------------------------------------------------------------

async def serve(delay: float) -> None:
    """The server process: answer each line after ``delay`` s; stop when stdin closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        await asyncio.sleep(delay)
        writer.write(b"ok " + line)
        try:
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # EOF: the demo ended (or died)
    server.close()


@contextmanager
def slow_server(delay: float) -> Iterator[int]:
    """Start the server in its own process (a service, not part of the demo's GIL); yield its port."""
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(delay)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield port
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- tasks ---------------------------------------------------------------------------

async def fetch(port: int, i: int) -> bytes:
    """One request over asyncio streams."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"%d\n" % i)
    await writer.drain()
    answer = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return answer


def fetch_blocking(port: int, i: int) -> bytes:
    """One request over a plain blocking socket."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"%d\n" % i)
        return s.makefile("rb").readline()


async def crawl(port: int, page: int) -> int:
    """Fetch a page, then its 10 links concurrently: 11 requests in about two round trips."""
    await fetch(port, page)
    links = await asyncio.gather(*(fetch(port, page * 100 + k) for k in range(10)))
    return len(links)


def crunch(n: int) -> int:
    """Pure-Python arithmetic: holds the GIL all the time."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def digest(buf: bytes) -> str:
    """sha256 releases the GIL while it hashes a big buffer."""
    return hashlib.sha256(buf).hexdigest()


def risky(i: int, marker: str) -> int:
    """Task 3 SIGKILLs its own worker the first time it runs (as the OOM killer would)."""
    if i == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.05)
    return i * i


def hang() -> None:
    """A task stuck forever (a lost lock, a dead peer)."""
    while True:
        time.sleep(1)


# -- the parts -------------------------------------------------------------------------

def heading(text: str) -> None:
    print(f"\n== {text}")


def row(part: str, backend: str, tasks: int, seconds: float, serial: float) -> None:
    ROWS.append((part, backend, tasks, seconds, serial))
    print(f"   {tasks:,} tasks in {seconds:.2f} s (one at a time: {serial:.1f} s, {serial / seconds:.0f}x)")


def io_on_async(port: int) -> None:
    heading("1. IO waits on coroutines: 1,000 requests to the slow server, all at once")
    t0 = time.perf_counter()
    with anypool.Pool("async") as pool:
        answers = list(pool.map(fetch, [port] * 1000, range(1000)))
    assert all(a.startswith(b"ok ") for a in answers)
    row("IO waits", "async", 1000, time.perf_counter() - t0, 1000 * DELAY)


def io_on_threads(port: int) -> None:
    heading("2. Blocking IO on threads: 200 requests through plain sockets, 100 threads")
    t0 = time.perf_counter()
    with anypool.Pool("thread", workers=100) as pool:
        answers = list(pool.map(fetch_blocking, [port] * 200, range(200)))
    assert all(a.startswith(b"ok ") for a in answers)
    row("blocking IO", "thread", 200, time.perf_counter() - t0, 200 * DELAY)


def cpu_on_processes() -> None:
    heading("3. CPU-bound Python: 8 tasks, serial vs threads vs processes (best of 2 rounds)")
    n = 1_500_000
    expected = [crunch(n) for _ in range(2)] * 4
    best = {"serial": float("inf"), "thread": float("inf"), "process": float("inf")}
    with anypool.Pool("thread") as threads, anypool.Pool("process") as processes:
        for pool in (threads, processes):
            list(pool.map(abs, range(pool.workers), chunksize=1))  # workers up before the clock
        for _ in range(2):  # interleaved, so a burst of load elsewhere hits all three alike
            t0 = time.perf_counter()
            assert [crunch(n) for _ in range(8)] == expected
            best["serial"] = min(best["serial"], time.perf_counter() - t0)
            for name, pool in (("thread", threads), ("process", processes)):
                t0 = time.perf_counter()
                assert list(pool.map(crunch, [n] * 8, chunksize=1)) == expected
                best[name] = min(best[name], time.perf_counter() - t0)
    serial = best["serial"]
    print(f"   serial: {serial:.2f} s")
    for name, plural, pool in (("thread", "threads", threads), ("process", "processes", processes)):
        print(f"   {pool.workers} {plural}: {best[name]:.2f} s ({serial / best[name]:.2f}x serial)")
    ROWS.append(("CPU-bound", "process", 8, best["process"], serial))


def coroutine_fan_out(port: int) -> None:
    heading("4. Coroutine fan-out from inside asyncio.run: 100 pages, each fetching 10 links")

    async def main() -> None:
        async with anypool.Pool("async") as pool:  # attaches to this running loop
            t0 = time.perf_counter()
            links = 0
            async for n in pool.imap_unordered(crawl, [port] * 100, range(100)):
                links += n
            took = time.perf_counter() - t0
        print(f"   {links:,} links fetched; the loop stayed free for other coroutines meanwhile")
        row("fan-out", "async (caller's loop)", 100 * 11, took, 100 * 11 * DELAY)

    asyncio.run(main())


def auto_choices(port: int) -> None:
    heading("5. One backend='auto' pool, five kinds of callable: what it chose for each, and why")
    big = os.urandom(1 << 20) * 8
    kinds: list[tuple[str, Callable[[anypool.Pool], list[Any]]]] = [
        ("fetch", lambda pool: list(pool.map(fetch, [port] * 500, range(500)))),
        ("fetch_blocking", lambda pool: list(pool.map(fetch_blocking, [port] * 10, range(10)))),
        ("crunch", lambda pool: list(pool.map(crunch, [1_500_000] * 8, chunksize=1))),
        ("digest", lambda pool: list(pool.map(digest, [big] * 16, chunksize=1))),
        ("len", lambda pool: list(pool.map(len, ["tiny"] * 20_000))),
    ]
    # workers= would apply to every backend the pool uses (8 would cap the
    # coroutines at 8 too), so the defaults are kept: 10,000 coroutines,
    # one thread or process per CPU.
    with anypool.Pool(record=True) as pool:
        for name, run in kinds:  # one kind at a time, so each is measured on its own
            t0 = time.perf_counter()
            n = len(run(pool))
            choice = pool.stats.choices[name]
            print(f"   {name:<15} {n:>6,} tasks in {time.perf_counter() - t0:5.2f} s -> {choice}")
    print("\n   print(pool.stats):")
    print("   " + str(pool.stats).replace("\n", "\n   "))
    TIMELINE.extend(r._replace(worker=f"5 auto/{r.worker}") for r in pool.timeline())


def faults() -> None:
    heading("6. Faults survived: a worker SIGKILLed mid-task, a retry, a hung task under timeout=")
    with tempfile.TemporaryDirectory() as tmp, anypool.Pool("process", workers=2, record=True) as pool:
        t0 = time.perf_counter()
        futures = [pool.submit(risky, i, os.path.join(tmp, "once")) for i in range(8)]
        for i, f in enumerate(futures):
            try:
                f.result()
            except anypool.WorkerCrashed as exc:
                print(f"   task {i}: WorkerCrashed: {exc}")
        ok = sum(1 for f in futures if f.exception() is None)
        print(f"   the other {ok} tasks finished: {[f.result() for f in futures if f.exception() is None]} "
              f"({time.perf_counter() - t0:.2f} s)")

        os.unlink(os.path.join(tmp, "once"))
        t0 = time.perf_counter()
        retried = [pool.with_options(retries=1).submit(risky, i, os.path.join(tmp, "once")) for i in range(8)]
        print(f"   again with retries=1: {[f.result() for f in retried]} "
              f"(task 3 crashed once, ran again; {time.perf_counter() - t0:.2f} s)")

        t0 = time.perf_counter()
        try:
            pool.with_options(timeout=1).submit(hang).result()
        except anypool.TaskTimeout as exc:
            print(f"   hung task: TaskTimeout after {time.perf_counter() - t0:.2f} s: {exc}")
        print(f"   the pool still works: {pool.submit(crunch, 1000).result()}")
        stats = pool.stats
        TIMELINE.extend(r._replace(worker=f"6 faults/{r.worker}") for r in pool.timeline())
    print(f"   pool stats: {stats.done} done, {stats.failed} failed, {stats.crashed} crashed, "
          f"{stats.retried} retried, {stats.timed_out} timed out")


def summary(started: float) -> None:
    heading("Timings by model")
    print(f"   {'part':<12} {'backend':<22} {'tasks':>6} {'wall':>8} {'one at a time':>14} {'speed-up':>9}")
    for part, backend, tasks, seconds, serial in ROWS:
        print(f"   {part:<12} {backend:<22} {tasks:>6,} {seconds:>7.2f}s {serial:>13.1f}s "
              f"{serial / seconds:>8.1f}x")
    print(f"\nThe whole demo took {time.perf_counter() - started:.1f} s.")


def main() -> None:
    started = time.perf_counter()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"anypool {anypool.__version__} on Python {platform.python_version()}, {platform.system()}, "
          f"{cpus} CPU(s); pid {os.getpid()}")
    if hasattr(os, "getloadavg"):
        load = os.getloadavg()[0]
        busy = load > 0.5 * (cpus or 1)
        print(f"load average {load:.1f}" + (" (other programs are using the CPUs: CPU speed-ups "
                                            "will be lower)" if busy else ""))
    with slow_server(DELAY) as port:
        print(f"slow server on 127.0.0.1:{port}, answering each request after {DELAY} s")
        io_on_async(port)
        io_on_threads(port)
        cpu_on_processes()
        coroutine_fan_out(port)
        auto_choices(port)
    faults()
    summary(started)
    report()


def report() -> None:
    """The timeline of sections 5 and 6, one lane per worker, as a self-contained HTML file."""
    from anypool.observers.report import write_report

    folder = Path(__file__).resolve().parents[1] / "artifacts"
    folder.mkdir(exist_ok=True)  # gitignored, and `make clean` removes it
    path = write_report(folder / "demo-report.html", TIMELINE,
                        title="make demo: sections 5 (auto) and 6 (faults)")
    print(f"\nA timeline of sections 5 and 6 (every attempt, coloured by outcome): {path}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        asyncio.run(serve(float(sys.argv[2])))
    else:
        main()
