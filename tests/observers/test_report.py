"""The HTML report: content, escaping, sampling and bad input (the browser test is apart)."""

from __future__ import annotations

import html
import json
import os
import random
import re
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import anypool
import tasks
from anypool.observers.joblog import JobLog
from anypool.observers.recorder import Row
from anypool.observers.report import MAX_BARS, fmt_seconds, render_report, write_report

# Everything a page could mistake for markup or code, in text, attributes and script data.
EVIL = "</script><script>document.title='pwned'</script>\"'><img src=x onerror=alert(1)>&amp;\u2028"


class _Collect(HTMLParser):
    """Every start tag with its attributes, and the text of each script element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data
        else:
            self.text.append(data)


def parse(page: str) -> _Collect:
    p = _Collect()
    p.feed(page)
    p.close()
    return p


def data_of(page: str) -> dict[str, Any]:
    p = parse(page)
    data_scripts = [s for (tag, a), s in zip([t for t in p.tags if t[0] == "script"], p.scripts, strict=False)
                    if a.get("type") == "application/json"]
    assert len(data_scripts) == 1
    return json.loads(data_scripts[0])  # type: ignore[no-any-return]


def text_of(page: str) -> str:
    """The page's visible text, one space between pieces."""
    return re.sub(r"\s+", " ", " ".join(parse(page).text))


def row(i: int, worker: str = "thread-1", start: float = 0.0, took: float = 0.01, outcome: str = "ok",
        fn: str = "mod.fn", args: str = "(1,)", error: str = "", size: int = 1, attempt: int = 1) -> Row:
    t0 = 1_700_000_000.0
    return Row(i, i, size, attempt, worker, t0 + start, t0 + start + took, outcome, fn, args, error)


class TestFromAPool:
    def test_a_pool_writes_its_timeline_with_every_attempt(self, tmp_path: Path) -> None:
        """pool.report() draws one bar per attempt, with each outcome, args and error."""
        with anypool.Pool("thread", 2, record=True) as pool:
            ok = [pool.submit(tasks.sleep, 0.01, i) for i in range(6)]
            bad = pool.submit(tasks.fail_on, EVIL, bad=EVIL)
            flaky = pool.with_options(retries=1, backoff=0).submit(tasks.fail_on, 3)
            slow = pool.with_options(timeout=0.05).submit(tasks.sleep, 0.3)
            for f in ok:
                f.result(10)
            assert isinstance(bad.exception(10), ValueError)
            assert isinstance(flaky.exception(10), ValueError)
            assert isinstance(slow.exception(10), anypool.TaskTimeout)
        out = pool.report(tmp_path / "run.html", title=f"run {EVIL}")
        assert out == str(tmp_path / "run.html")
        page = Path(out).read_text("utf-8")
        data = data_of(page)
        bars = data["bars"]
        # 6 ok + 1 error + 2 attempts of the flaky one + 1 timeout
        assert len(bars) == 10 == len(pool.timeline())
        outcomes = sorted(b[4] for b in bars)
        assert outcomes == ["error", "error", "error", "ok", "ok", "ok", "ok", "ok", "ok", "timeout"]
        evil_bars = [b for b in bars if repr(EVIL) in b[10]]
        assert len(evil_bars) == 1, "the arguments' repr reaches the hover data unchanged"
        assert evil_bars[0][11] == f"ValueError: bad item {EVIL}", "so does the error"
        assert {lane["name"] for lane in data["lanes"]} <= {"thread-1", "thread-2", "thread-3"}
        assert "Pool statistics" in page
        assert "tasks that failed for good" in page

    def test_tasks_are_counted_by_their_final_outcome_after_retries(self, tmp_path: Path) -> None:
        """Before, an attempt that failed and was retried counted its tasks as failed:
        a batch of 50 with one retried item read as 50 failed (and 51 ok), a submit
        retried once as 1 ok and 1 failed, though pool.stats said none failed."""
        marker = tmp_path / "failed-once"

        def fail_first_time(x: int) -> int:
            if x == 0 and not marker.exists():
                marker.touch()
                raise ValueError("first try")
            return x

        joblog = tmp_path / "log.db"
        with anypool.Pool("thread", 2, record=True, retries=1, backoff=0, joblog=joblog) as pool:
            assert list(pool.map(fail_first_time, range(100), chunksize=50)) == list(range(100))
            marker.unlink()
            assert pool.submit(fail_first_time, 0).result(10) == 0
            assert isinstance(pool.submit(tasks.fail_on, 3).exception(10), ValueError)
        s = pool.stats
        assert (s.done, s.failed, s.retried) == (101, 1, 3)
        for rows in (pool.timeline(), JobLog(joblog, "read").rows()):
            text = text_of(render_report(rows, stats=s))
            assert "tasks ok 101 " in text, "every task that returned a value, once"
            assert "tasks failed 1 " in text, "only fail_on(3), which failed for good"
            # per callable (the local function's long name is cut): 101 ok, 0 failed
            assert re.search(r"_retries\.<loca… \d+ 101 0 ", text)
            assert re.search(r"fail_on 2 0 1 ", text)

    def test_report_without_recording_says_how_to_turn_it_on(self, tmp_path: Path) -> None:
        with anypool.Pool("inline") as pool:
            pool.submit(abs, 1).result()
            with pytest.raises(RuntimeError, match=r"record=True"):
                pool.report(tmp_path / "x.html")
        assert not (tmp_path / "x.html").exists()

    def test_map_batches_are_one_bar_each_and_counted_as_their_items(self, tmp_path: Path) -> None:
        with anypool.Pool("thread", 2, record=True) as pool:
            assert list(pool.map(tasks.square, range(2000))) == [x * x for x in range(2000)]
            rows = pool.timeline()
        assert sum(r.size for r in rows) == 2000
        assert any(r.size > 1 for r in rows), "tiny map items travel in batches"
        page = pool.report(tmp_path / "map.html")
        data = data_of(Path(page).read_text("utf-8"))
        assert len(data["bars"]) == len(rows)
        assert sum(b[7] for b in data["bars"]) == 2000


    def test_a_job_log_draws_the_same_page(self, tmp_path: Path) -> None:
        """Rows read back from a job log (what `anypool report JOBLOG` will draw) work as they are."""
        from anypool.observers.joblog import JobLog

        log = tmp_path / "jobs.db"
        with anypool.Pool("thread", 2, joblog=log, retries=1, backoff=0) as pool:
            list(pool.imap(tasks.fail_on, range(20), return_exceptions=True))
        with JobLog(log) as jl:
            rows = jl.rows()
        assert len(rows) == 21, "20 items, one of them tried twice"
        page = Path(write_report(tmp_path / "from-log.html", rows, title="from a job log")).read_text("utf-8")
        data = data_of(page)
        assert len(data["bars"]) == 21
        assert sorted(b[4] for b in data["bars"]).count("error") == 2
        assert "Pool statistics" not in page


class TestEscaping:
    def test_user_text_never_becomes_markup(self) -> None:
        rows = [row(1, worker=f"w{EVIL}", fn=f"fn{EVIL}", args=EVIL, error=f"E: {EVIL}", outcome="error")]
        page = render_report(rows, title=EVIL)
        p = parse(page)
        tags = [t for t, _ in p.tags]
        assert tags.count("script") == 2, "only the page's own data and code scripts"
        assert "img" not in tags
        assert not any(k.startswith("on") for _, attrs in p.tags for k in attrs)
        assert page.lower().count("</script") == 2
        assert "<title>" + html.escape(EVIL, quote=True) + "</title>" in page

    def test_text_in_attributes_round_trips_exactly(self) -> None:
        """A title="..." attribute holding user text parses back to the very same text."""
        rows = [row(1, worker=f"w{EVIL}", fn=f"fn{EVIL}")]
        p = parse(render_report(rows))
        titles = [a["title"] for _, a in p.tags if "title" in a]
        assert f"fn{EVIL}" in titles
        assert f"w{EVIL}" in titles

    def test_script_data_round_trips_and_cannot_close_its_element(self) -> None:
        rows = [row(1, args=EVIL, error=EVIL, fn=EVIL, outcome="error")]
        page = render_report(rows)
        raw = page.split('id="anypool-data">', 1)[1].split("</script>", 1)[0]
        assert "<" not in raw
        assert ">" not in raw
        assert "\u2028" not in raw
        data = json.loads(raw)
        (bar,) = data["bars"]
        assert bar[10] == EVIL
        assert bar[11] == EVIL
        assert data["fns"][bar[9]] == EVIL

    def test_the_page_loads_nothing_from_anywhere(self) -> None:
        page = render_report([row(1, args="http://example.org/x.js")])
        p = parse(page)
        for tag, attrs in p.tags:
            assert "src" not in attrs, (tag, attrs)
            assert tag != "link"
        assert "default-src 'none'" in page


class TestSampling:
    def test_small_runs_draw_every_attempt(self) -> None:
        rows = [row(i, start=i * 0.01) for i in range(300)]
        page = render_report(rows)
        assert len(data_of(page)["bars"]) == 300
        assert "draws all" in page
        assert ">300</span> of" in page

    def test_a_hundred_thousand_rows_are_sampled_and_the_page_says_so(self) -> None:
        rng = random.Random(5)
        rows = []
        for i in range(100_000):
            outcome = "error" if i % 1000 == 0 else "ok"
            rows.append(row(i, worker=f"thread-{i % 4 + 1}", start=i * 0.001, took=rng.uniform(0, 0.002),
                            outcome=outcome, error="boom" if outcome != "ok" else ""))
        t = time.perf_counter()
        page = render_report(rows)
        took = time.perf_counter() - t
        data = data_of(page)
        assert len(data["bars"]) == MAX_BARS
        assert sum(1 for b in data["bars"] if b[4] == "error") == 100, "every failure is kept"
        assert data["sampled"] is True
        assert all(len(lane["density"]) > 0 for lane in data["lanes"])
        text = text_of(page)
        assert "Sampled timeline" in text
        assert "5,000 of 100,000 attempts" in text
        assert "every failed attempt (100)" in text
        # the tables count all rows, not the sample
        assert "100,000" in text
        assert "99,900" in text
        assert len(page) < 3_000_000, "the file stays small"
        assert took < 30, f"rendering 100k rows took {took:.1f} s"

    def test_failures_are_capped_at_a_fifth_of_the_bars(self) -> None:
        rows = [row(i, start=i * 0.001, outcome="error" if i % 2 else "ok") for i in range(20_000)]
        data = data_of(render_report(rows, max_bars=1000))
        outcomes = [b[4] for b in data["bars"]]
        assert len(outcomes) == 1000
        assert outcomes.count("error") == 200

    def test_a_sampled_recorder_is_said_on_the_page(self) -> None:
        page = render_report([row(1)], sampled=True)
        assert "The recorder kept a sample" in page
        assert "The recorder kept a sample" not in render_report([row(1)])


class TestContent:
    def test_utilisation_and_throughput_from_known_rows(self) -> None:
        """Two workers over 10 s: one busy 5 s, the other 10 s; 30 tasks ok in 10 s."""
        rows = [row(i, worker="thread-1", start=i * 1.0, took=0.5) for i in range(10)]
        rows += [row(100 + i, worker="thread-2", start=i * 0.5, took=0.5) for i in range(20)]
        rows[-1] = rows[-1]._replace(outcome="crash", error="WorkerCrashed: killed by SIGKILL")
        text = text_of(render_report(rows))
        assert "span 10 s" in text
        assert "thread-1 10 10 0 5 s 50.0%" in text
        assert "thread-2 20 20 1 10 s 100.0%" in text
        assert "2.9 tasks/s" in text  # 29 ok over 10 s
        assert "crash 1" in text

    def test_a_job_logs_killed_attempts_have_their_own_colour(self) -> None:
        text = text_of(render_report([row(1), row(2, outcome="killed"), row(3, outcome="weird")]))
        assert "killed 1" in text
        assert "other 1" in text
        assert "killed" not in text_of(render_report([row(1)]))

    def test_histogram_counts_every_task(self) -> None:
        rows = [row(i, took=0.001 * (1 + i % 10), size=1 + i % 3) for i in range(500)]
        page = render_report(rows)
        counts = [int(c.replace(",", "")) for c in re.findall(r": ([\d,]+) tasks</title>", page)]
        assert sum(counts) == sum(r.size for r in rows)

    def test_overlapping_attempts_stack_in_their_lane(self) -> None:
        rows = [row(i, worker="loop", start=0.0, took=1.0) for i in range(3)]
        data = data_of(render_report(rows))
        assert data["lanes"][0]["depth"] == 3
        assert data["lanes"][0]["peak"] == 3
        assert sorted(b[1] for b in data["bars"]) == [0, 1, 2]

    def test_lanes_sort_naturally(self) -> None:
        rows = [row(i, worker=w) for i, w in enumerate(["thread-10", "-", "thread-2", "probe"])]
        data = data_of(render_report(rows))
        assert [lane["name"] for lane in data["lanes"]] == ["probe", "thread-2", "thread-10", "-"]

    def test_an_empty_run_still_makes_a_page(self, tmp_path: Path) -> None:
        out = write_report(tmp_path / "empty.html", [])
        page = Path(out).read_text("utf-8")
        assert "No attempts were recorded." in page
        assert data_of(page)["bars"] == []

    def test_plain_tuples_are_rows_too(self) -> None:
        """A job log hands over tuples of Row's fields; the report takes them as they are."""
        page = render_report([tuple(row(1, fn="echo hi"))])  # type: ignore[list-item]
        assert data_of(page)["fns"] == ["echo hi"]

    @pytest.mark.parametrize(("seconds", "text"), [
        (0, "0 s"), (25e-6, "25 µs"), (0.0123, "12.3 ms"), (4.56, "4.56 s"), (185, "3 min 5 s"),
        (7500, "2 h 5 min"),
    ])
    def test_durations_read_well(self, seconds: float, text: str) -> None:
        assert fmt_seconds(seconds) == text


class TestBadInput:
    def test_a_row_of_the_wrong_shape_is_named(self) -> None:
        with pytest.raises(TypeError, match=r"row 1 is not an anypool Row"):
            render_report([row(1), (1, 2, 3)])  # type: ignore[list-item]

    def test_times_must_be_numbers(self) -> None:
        with pytest.raises(TypeError, match=r"row 0: started and ended must be numbers"):
            render_report([row(1)._replace(started="noon")])

    def test_max_bars_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match=r"max_bars must be an int >= 1, not 0"):
            render_report([row(1)], max_bars=0)

    def test_a_missing_folder_fails_and_leaves_nothing(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError):
            write_report(tmp_path / "no" / "such" / "run.html", [row(1)])
        assert os.listdir(tmp_path) == []

    def test_rewriting_replaces_the_file_whole(self, tmp_path: Path) -> None:
        target = tmp_path / "run.html"
        target.write_text("old")
        write_report(target, [row(1)])
        assert target.read_text("utf-8").startswith("<!DOCTYPE html>")
        assert sorted(os.listdir(tmp_path)) == ["run.html"]
