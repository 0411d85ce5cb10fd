"""The benchmark suite's smoke run: every case runs, anypool's rows are there (speed is not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_quick_run_covers_every_case_with_anypool_rows(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=55)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.cases import CASES
    finally:
        sys.path.remove(str(ROOT))
    assert [c["name"] for c in doc["cases"]] == list(CASES)
    for case in doc["cases"]:
        rows = {r["label"]: r for r in case["rows"]}
        # the stdlib peers are always there, so every case has a reference that ran
        for row in case["rows"]:
            for run in row["runs"]:
                assert "error" not in run, (case["name"], row["label"], run)
        anypool_rows = [r for r in case["rows"] if r["group"] == "anypool"]
        assert anypool_rows, case["name"]
        for row in anypool_rows:
            run = row["runs"][0]
            if "skip" in run:  # only features built on other branches may be missing
                assert "another branch" in run["skip"], (case["name"], row["label"], run)
            else:
                assert run["seconds"] > 0, (case["name"], row["label"])
        assert case["reference"] in rows
    # the tables print, and print again from the saved JSON
    assert "### process-map" in proc.stdout
    again = subprocess.run([sys.executable, "-m", "benchmarks", "--report", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == proc.stdout.strip()


def test_unknown_case_is_a_usage_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown case(s): nope" in proc.stderr
