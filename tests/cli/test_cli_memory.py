"""Input is streamed: 100,000 arguments cost the command line no more memory than 10,000."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from cli_helpers import cli_argv, cli_env

MIB = 1 << 20


def peak_rss(tmp_path: Path, args: list[str], items: int) -> int:
    """Run the CLI over ``items`` lines written into a FIFO by a generator; return its peak RSS."""
    fifo = tmp_path / f"in-{items}"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "w") as f:
            f.writelines(f"item-{i:09d}\n" for i in range(items))

    writer = threading.Thread(target=feed)
    proc = subprocess.Popen(cli_argv(*args, "::::", str(fifo)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path, env=cli_env())
    writer.start()
    lines = 0
    assert proc.stdout is not None
    for _ in proc.stdout:
        lines += 1
    err = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    writer.join()
    assert proc.returncode == 0, err
    assert lines == items
    return usage.ru_maxrss * 1024  # kilobytes on Linux


@pytest.mark.timeout(120)
def test_run_reads_100k_arguments_with_flat_memory(tmp_path: Path) -> None:
    """The input path of anypool run (every command rendered, printed by --dry-run)."""
    args = ["run", "--dry-run", "-k", "convert {} {.}.png"]
    small = peak_rss(tmp_path, args, 10_000)
    big = peak_rss(tmp_path, args, 100_000)
    print(f"peak RSS: 10k args {small / MIB:.1f} MiB, 100k args {big / MIB:.1f} MiB")
    # a list of 100k such strings alone would add ~7 MiB
    assert big - small < 3 * MIB


@pytest.mark.timeout(120)
def test_jobs_flow_through_the_pool_with_flat_memory(tmp_path: Path) -> None:
    """Every argument submitted, run and printed: the bounded window keeps memory flat."""
    args = ["map", "--backend", "inline", "builtins:len"]
    small = peak_rss(tmp_path, args, 3_000)
    big = peak_rss(tmp_path, args, 30_000)
    print(f"peak RSS: 3k jobs {small / MIB:.1f} MiB, 30k jobs {big / MIB:.1f} MiB")
    assert big - small < 2 * MIB
