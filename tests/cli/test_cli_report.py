"""``anypool report JOBLOG``: the run's timeline, drawn from the job log a real run wrote."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cli_helpers import Cli

EVIL = "</script><img src=x onerror=alert(1)>"


def _data(page: str) -> dict[str, object]:
    m = re.search(r'<script type="application/json"[^>]*>(.*?)</script>', page, re.S)
    assert m, "the page embeds its data"
    return json.loads(m.group(1))  # type: ignore[no-any-return]


def test_a_run_then_its_report(cli: Cli, tmp_path: Path) -> None:
    """Every attempt of the run is a bar; a hostile argument is text, never markup."""
    run = cli("run", "--joblog", "jobs.db", "--retries", "1", "test {} != bad", ":::", "a", "bad", EVIL)
    assert run.returncode == 1, run.stderr
    rep = cli("report", "jobs.db", "-o", "run.html")
    assert rep.returncode == 0, rep.stderr
    assert b"attempts drawn in" in rep.stdout
    page = (tmp_path / "run.html").read_text("utf-8")
    bars = _data(page)["bars"]
    assert isinstance(bars, list)
    assert len(bars) == 4  # a, the evil one, and "bad" tried twice
    assert sorted(b[4] for b in bars).count("error") == 2
    assert "<img src=x" not in page


def test_the_default_output_sits_beside_the_job_log(cli: Cli, tmp_path: Path) -> None:
    assert cli("run", "--joblog", "jobs.db", "true", ":::", "1").returncode == 0
    assert cli("report", "jobs.db").returncode == 0
    assert (tmp_path / "jobs.html").is_file()


def test_a_file_that_is_not_a_job_log_is_refused(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    r = cli("report", "notes.txt")
    assert r.returncode == 255
    assert b"anypool report:" in r.stderr
    assert b"Traceback" not in r.stderr
    assert (tmp_path / "notes.txt").read_text() == "hello\n"
    missing = cli("report", "nope.db")
    assert missing.returncode == 255
    assert b"Traceback" not in missing.stderr
