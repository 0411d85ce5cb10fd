"""The progress bar, seen where people see it: a real pseudo-terminal, a pipe.

Each test runs a small script in a fresh interpreter whose stderr is either
the slave side of a pty (what a terminal gives a program) or a pipe, and
reads what the bar drew.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

import anypool
from anypool.observers.progress import DELAY, Progress

TESTS = str(Path(__file__).resolve().parents[1])

# 40 items of 50 ms on 2 threads; every tenth fails twice (one retry), so
# 36 done, 4 failed, 4 retried: about 1.1 s, long enough for an ETA.
WORKLOAD = """
import sys, time
sys.path.insert(0, {tests!r})
import anypool

def work(x):
    time.sleep(0.05)
    if x % 10 == 0:
        raise ValueError(x)
    return x

with anypool.Pool("thread", 2, retries=1, backoff=0, progress={progress!r}) as pool:
    out = list(pool.imap(work, range(40), return_exceptions=True))
print("results", sum(1 for r in out if isinstance(r, int)), flush=True)
"""

ONE_SHOT = """
import sys, time
import anypool

def work(x):
    time.sleep(0.02)
    return x

out = {wrap}(anypool.{helper}(work, range(30), backend="thread", workers=2, progress={progress!r}))
print("results", len(out), flush=True)
"""


def run_in_pty(code: str, columns: int = 120, lines: int = 30, env: dict[str, str] | None = None,
               timeout: float = 30) -> tuple[str, str]:
    """Run ``code`` with stderr on a pty of the given size; (what the terminal showed, stdout)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave, env={**os.environ, **(env or {})})
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed its side
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        assert proc.wait(timeout=10) == 0, seen.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return seen.decode(errors="replace"), out


def run_in_pipe(code: str, env: dict[str, str] | None = None) -> tuple[str, str]:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})}, check=True)
    return proc.stderr, proc.stdout


def frames(screen: str) -> list[str]:
    """The bar's successive states (tqdm redraws with a carriage return)."""
    return [f.strip() for f in re.split(r"[\r\n]+", screen) if "anypool" in f]


class TestTerminal:
    def test_the_bar_shows_counts_and_an_eta_in_a_terminal(self) -> None:
        screen, out = run_in_pty(WORKLOAD.format(tests=TESTS, progress=True))
        assert out.strip() == "results 36"
        shown = frames(screen)
        assert len(shown) >= 3, screen
        final = shown[-1]
        assert "40/40" in final
        assert "100%" in final
        assert "done=36 failed=4 retried=4 running=0" in final
        # while it ran: the whole input as the total from the start, and a time left in the ETA
        assert any(re.search(r"\b([1-9]|[1-3]\d)/40 \[\d\d:\d\d<\d\d:\d\d,", f) for f in shown), shown
        assert not any(re.search(r"/(?!40\b)\d+ \[", f) for f in shown), "the total never wavers"

    def test_a_terminal_that_reports_no_size_still_gets_a_bar(self) -> None:
        """A fresh pty (script, docker exec, some CI) says 0x0; tqdm alone would draw nothing."""
        screen, out = run_in_pty(WORKLOAD.format(tests=TESTS, progress=True), columns=0, lines=0)
        assert out.strip() == "results 36"
        final = frames(screen)[-1]
        assert "40/40" in final
        assert "done=36 failed=4 retried=4" in final

    @pytest.mark.parametrize("helper", ["map", "imap"])
    def test_the_one_shot_helpers_take_progress_too(self, helper: str) -> None:
        screen, out = run_in_pty(ONE_SHOT.format(helper=helper, wrap="list", progress=True))
        assert out.strip() == "results 30"
        final = frames(screen)[-1]
        assert "30/30" in final
        assert "done=30 failed=0 retried=0" in final

    def test_the_environment_can_turn_the_bar_off(self) -> None:
        screen, out = run_in_pty(WORKLOAD.format(tests=TESTS, progress=True), env={"ANYPOOL_PROGRESS": "0"})
        assert out.strip() == "results 36"
        assert frames(screen) == []


class TestPipe:
    def test_no_bar_when_stderr_is_a_pipe(self) -> None:
        err, out = run_in_pipe(WORKLOAD.format(tests=TESTS, progress=True))
        assert out.strip() == "results 36"
        assert "anypool" not in err
        assert "%" not in err

    def test_always_forces_the_bar_onto_a_pipe(self) -> None:
        err, out = run_in_pipe(WORKLOAD.format(tests=TESTS, progress="always"))
        assert out.strip() == "results 36"
        assert "done=36 failed=4 retried=4 running=0" in frames(err)[-1]

    def test_an_imap_left_early_shows_its_items_cancelled_not_failed(self) -> None:
        """Before, the bar said failed=N for the items dropped when the loop broke off."""
        code = """
import time
import anypool

def work(x):
    time.sleep(0.05)
    return x

with anypool.Pool("thread", 2, progress="always") as pool:
    it = pool.imap(work, range(30))
    out = [next(it) for _ in range(12)]
    it.close()
print("results", len(out), flush=True)
"""
        err, out = run_in_pipe(code)
        assert out.strip() == "results 12"
        final = frames(err)[-1]
        assert "failed=0" in final, final
        assert re.search(r"running=0 cancelled=[1-9]", final), final

    def test_a_late_bar_ends_on_the_runs_average_rate(self) -> None:
        """The bar appears after DELAY; before, its final rate left out the tasks done
        by then (300 tasks of 5 ms on 2 threads: 285 task/s on the bar, 385/s in stats)."""
        code = """
import time
import anypool

def work(x):
    time.sleep(0.005)
    return x

with anypool.Pool("thread", 2, progress="always") as pool:
    list(pool.map(work, range(300), chunksize=1))
print(pool.stats.throughput, flush=True)
"""
        err, out = run_in_pipe(code)
        final = frames(err)[-1]
        assert "300/300" in final, final
        match = re.search(r"([\d.]+)task/s", final)
        assert match, final
        assert float(match.group(1)) == pytest.approx(float(out), rel=0.1), final

    def test_false_never_draws(self) -> None:
        screen, _ = run_in_pty(ONE_SHOT.format(helper="map", wrap="list", progress=False))
        assert frames(screen) == []


    def test_a_stderr_whose_reader_left_stops_the_bar_not_the_program(self) -> None:
        """Regression: the failed draw left tqdm's write lock taken; the bar's close, then
        tqdm's monitor thread at exit, waited for it for ever."""
        code = WORKLOAD.format(tests=TESTS, progress="always") + (
            "import tqdm\n"
            "print('own bar', sum(tqdm.tqdm(range(3), file=sys.stdout, disable=True)), flush=True)\n")
        for _ in range(2):
            proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                assert proc.stderr is not None
                assert proc.stdout is not None
                assert proc.stderr.read(1)  # the first bar's first byte, then nobody reads
                proc.stderr.close()
                out, _ = proc.communicate(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert out.decode().split("\n")[:2] == ["results 36", "own bar 3"]

    def test_the_bar_leaves_the_start_method_to_the_program(self) -> None:
        """tqdm's own first bar takes a multiprocessing lock, which fixes the start method."""
        code = ("import multiprocessing, sys, time, anypool, tqdm\n"
                "with anypool.Pool('thread', 2, progress='always') as pool:\n"
                "    print('results', sum(pool.map(abs, range(1000))))\n"
                "    time.sleep(2 * DELAY)\n"
                "print('mp imported', 'multiprocessing.synchronize' in sys.modules)\n"
                "multiprocessing.set_start_method('spawn')\n"
                "print('start method', multiprocessing.get_start_method())\n"
                "bar = tqdm.tqdm(range(3), file=sys.stderr)\n"  # the program's own bar still works
                "print('own bar', sum(bar))\n")
        err, out = run_in_pipe(code.replace("DELAY", repr(DELAY)))
        assert out.split("\n")[:4] == ["results 499500", "mp imported False", "start method spawn",
                                       "own bar 3"], out
        assert "1000/1000" in err


class TestInProcess:
    def test_a_bad_progress_value_is_refused_before_anything_starts(self) -> None:
        with pytest.raises(ValueError, match=r"progress must be True, False or 'always', not 'yes'"):
            anypool.Pool("thread", progress="yes")

    def test_a_run_shorter_than_the_delay_draws_nothing_and_never_imports_tqdm(self) -> None:
        code = ("import sys, anypool\n"
                "with anypool.Pool('thread', 2, progress='always') as pool:\n"
                "    print('results', sum(pool.map(abs, range(1000))))\n"
                "print('tqdm imported', any(m.startswith('tqdm') for m in sys.modules))\n")
        err, out = run_in_pipe(code)
        assert out.split("\n")[:2] == ["results 499500", "tqdm imported False"], out
        assert err == ""

    def test_the_bar_thread_ends_with_the_pool(self, capsys: pytest.CaptureFixture[str]) -> None:
        with anypool.Pool("thread", 2, progress="always") as pool:
            pool.submit(time.sleep, 2 * DELAY).result()
            pool.submit(abs, -1).result()
            bar = pool._progress
            assert isinstance(bar, Progress)
            assert bar._thread.is_alive()
        assert not bar._thread.is_alive()
        assert "2/2" in capsys.readouterr().err

    def test_a_map_closed_early_no_longer_counts_in_the_total(
            self, capsys: pytest.CaptureFixture[str]) -> None:
        with anypool.Pool("thread", 2, progress="always") as pool:
            it = pool.imap(abs, range(100_000))
            assert next(it) == 0
            bar = pool._progress
            assert bar is not None
            bar.refresh()
            assert bar._bar.total == 100_000
            it.close()
            bar.refresh()
            assert bar._bar.total == pool.stats.submitted < 100_000
        capsys.readouterr()


class TestJupyter:
    @pytest.mark.timeout(60)
    def test_a_notebook_kernel_gets_a_widget_with_the_counts(self) -> None:
        """progress=True in a real IPython kernel: stderr is no terminal there, yet the bar shows."""
        pytest.importorskip("ipykernel")
        pytest.importorskip("ipywidgets")
        from jupyter_client.manager import start_new_kernel

        km, kc = start_new_kernel(kernel_name="python3", startup_timeout=30)
        try:
            code = ("import anypool, time\n"
                    "r = anypool.map(time.sleep, [0.05] * 20, backend='thread', workers=2, progress=True)\n"
                    "print('results', len(r))")
            msg_id = kc.execute(code)
            shown: list[str] = []
            widget = False
            while True:
                msg = kc.get_iopub_msg(timeout=30)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind == "status" and content["execution_state"] == "idle":
                    break
                if kind == "display_data":
                    widget = widget or "application/vnd.jupyter.widget-view+json" in content["data"]
                if kind == "comm_msg":
                    value = content["data"].get("state", {}).get("value")
                    if isinstance(value, str):
                        shown.append(value.replace("\u2007", " "))
                if kind == "stream":
                    shown.append(content["text"])
                if kind == "error":
                    pytest.fail("\n".join(content["traceback"]))
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
        assert widget, "tqdm.auto drew a notebook widget"
        assert "results 20\n" in shown
        assert any("20/20" in s and "done=20 failed=0 retried=0 running=0" in s for s in shown), shown
