"""``benchmarks/faults.py`` keeps working: a reduced run against anypool and ProcessPoolExecutor.

The full comparison (every fault against three pools, several minutes) is in
``docs/faults.md``; this runs three rows of it, so the script cannot rot and
anypool's own cells keep saying what the docs claim.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "faults.py"


def _cells(table: str) -> dict[str, list[str]]:
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.timeout(90)
def test_a_reduced_comparison_runs_and_says_what_anypool_does(tmp_path: Path) -> None:
    """Three faults, two pools: the table is complete and anypool's cells are right."""
    out = tmp_path / "faults.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--faults", "kill,hang,unpicklable", "--pools", "anypool,ppe",
         "--limit", "15", "--jobs", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=80,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "| fault | anypool | ProcessPoolExecutor |"
    rows = _cells(proc.stdout.strip())
    assert len(rows) == 3
    kill = rows["worker SIGKILLed mid-task (from outside)"]
    assert "WorkerCrashed" in kill[0]
    assert "SIGKILL" in kill[0]
    assert "3/3 other tasks ok; pool still usable" in kill[0]
    assert "BrokenProcessPool" in kill[1]
    hang = rows["a task that sleeps forever, 1 s limit"]
    assert hang[0].startswith("TaskTimeout")
    assert "pool still usable" in hang[0]
    assert "HUNG" not in hang[0]
    unpicklable = rows["an unpicklable argument (a lock)"]
    assert unpicklable[0].startswith("submit raised SerializationError: argument 0 (lock")
    assert all(c and c != "no result" for row in rows.values() for c in row)
    assert "left behind" not in kill[0] + hang[0] + unpicklable[0]
    doc = out.read_text()
    assert doc.startswith("# Faults: anypool, ProcessPoolExecutor and multiprocessing.Pool")
    assert "--faults kill,hang,unpicklable" in doc
    assert proc.stdout.strip() in doc
    # the header says how anypool's workers started, as a worker saw it: the script
    # has one thread when it makes its pool, so they were forked, not served
    assert "(fork); anypool with its default: its first workers forked" in doc
    assert "replacements for dead workers from the fork server" in doc


def test_an_unknown_fault_is_a_usage_error() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--faults", "kill,meteor"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "unknown fault(s): meteor; known: kill, exit, segv" in proc.stderr
