"""The SQLite job log: rows per attempt, committed at once, readable without running code."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import anypool
from anypool.observers.joblog import JobLog, JobLogError, JobRecord, SeqSet, args_json, result_output
from anypool.observers.recorder import Row
from helpers import damage


def rec(seq: int, attempt: int = 1, outcome: str = "ok", final: bool = True, **kw: object) -> JobRecord:
    base = {"args": json.dumps([str(seq)]), "command": f"cmd {seq}", "started": 1000.0 + seq,
            "runtime": 0.5, "exitcode": 0 if outcome == "ok" else 1, "signal": None, "error": "",
            "worker": "slot-1", "stdout": b"out", "stderr": b""}
    base.update(kw)
    return JobRecord(seq, attempt, outcome=outcome, final=final, **base)  # type: ignore[arg-type]


class TestStorage:
    def test_the_log_is_sqlite_in_wal_mode_with_one_row_per_attempt(self, tmp_path: Path) -> None:
        path = tmp_path / "log.db"
        with JobLog(path) as log:
            log.begin_run({"command": "x"})
            log.record(rec(1, 1, "error", final=False))
            log.record(rec(1, 2))
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = db.execute("SELECT seq, attempt, outcome, final, command FROM attempt ORDER BY id").fetchall()
        assert rows == [(1, 1, "error", 0, "cmd 1"), (1, 2, "ok", 1, "cmd 1")]
        db.close()

    def test_each_record_is_visible_to_another_reader_at_once(self, tmp_path: Path) -> None:
        path = tmp_path / "log.db"
        with JobLog(path) as log:
            log.begin_run({})
            log.record(rec(7))
            with JobLog(path, "read") as reader:
                assert [r.seq for r in reader.records()] == [7]

    def test_records_survive_a_kill_9_of_the_writer(self, tmp_path: Path) -> None:
        """A process records 50 attempts then SIGKILLs itself: all 50 are in the log."""
        path = tmp_path / "log.db"
        code = textwrap.dedent(f"""
            import os, signal, json
            from anypool.observers.joblog import JobLog, JobRecord
            log = JobLog({str(path)!r})
            log.begin_run({{}})
            for i in range(1, 51):
                log.record(JobRecord(i, 1, json.dumps([str(i)]), "c", 0.0, 0.1, 0, None, "ok", True, "", "w"))
            os.kill(os.getpid(), signal.SIGKILL)
        """)
        proc = subprocess.run([sys.executable, "-c", code], timeout=60)
        assert proc.returncode == -9
        with JobLog(path, "read") as log:
            assert sorted(log.done_seqs()) == list(range(1, 51))

    def test_output_is_kept_only_when_asked(self, tmp_path: Path) -> None:
        with JobLog(tmp_path / "a.db") as log:
            log.record(rec(1))
            assert next(log.records()).stdout is None
        with JobLog(tmp_path / "b.db", results=True) as log:
            log.record(rec(1, stdout=b"\xff\x00raw"))
            assert next(log.records()).stdout == b"\xff\x00raw"

    def test_new_mode_starts_an_existing_log_afresh(self, tmp_path: Path) -> None:
        path = tmp_path / "log.db"
        with JobLog(path) as log:
            log.record(rec(1))
        with JobLog(path, "new") as log:
            assert list(log.records()) == []

    def test_text_that_is_not_utf8_is_stored_readably(self, tmp_path: Path) -> None:
        """Arguments decoded from odd file-name bytes (surrogates) still store."""
        odd = os.fsdecode(b"file-\xff")
        with JobLog(tmp_path / "log.db") as log:
            log.record(rec(1, command=f"cat {odd}", args=json.dumps([odd])))
            r = next(log.records())
        assert r.command == "cat file-\\xff"
        assert json.loads(r.args) == [odd]

    def test_a_run_over_file_names_that_are_not_utf8_is_recorded(self, tmp_path: Path) -> None:
        """Before, begin_run stored the command line and the input description as strict
        UTF-8: a non-UTF-8 file name among them refused the whole run."""
        odd, other = os.fsdecode(b"caf\xe9.txt"), os.fsdecode(b"caf\xe8.txt")
        description = {"command": f"cat {odd} {{}}"}
        with JobLog(tmp_path / "log.db") as log:
            log.begin_run(description, argv=["anypool", "run", "cat", odd])
            [run] = log.runs()
            assert json.loads(run["argv"]) == ["anypool", "run", "cat", "caf\\xe9.txt"]  # as commands show
            assert json.loads(run["input"]) == description  # JSON's own escape: the same data
            log.begin_run(description, resume=True)  # the fingerprint still matches
            with pytest.raises(JobLogError, match="written for other input"):
                log.begin_run({"command": f"cat {other} {{}}"}, resume=True)


class TestOddValues:
    """A value a task returns, raises or takes never costs the log its row (or its later rows)."""

    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    class Unsayable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str")

    def test_results_are_kept_as_utf8_json_whatever_they_hold(self) -> None:
        assert result_output("caf\u00e9") == '"café"'.encode()
        # a file name's byte: JSON's escape of its surrogate (a raw byte made the line not UTF-8)
        assert result_output(os.fsdecode(b"\xff")) == b'"\\udcff"'
        assert os.fsencode(json.loads(result_output(os.fsdecode(b"\xff")))) == b"\xff"
        assert result_output("\ud800") == b'"\\ud800"'  # UTF-8 has no lone surrogates
        assert json.loads(result_output({(1, 2): 3})) == {"(1, 2)": 3}  # JSON has no tuple keys
        assert json.loads(result_output(self.Unprintable())) == "<Unprintable object: repr() failed>"
        assert json.loads(args_json(self.Unprintable())) == "<Unprintable object: repr() failed>"

    def test_a_pool_records_every_attempt_whatever_its_value(self, tmp_path: Path) -> None:
        """Before, the first of these stopped the job log's observer: a result with an
        undecodable byte (os.listdir's file names) failed its strict UTF-8 encoding, and
        the observer was removed, so no later attempt was recorded."""
        odd: list[Any] = [os.fsdecode(b"file-\xff"), "\ud800", {(1, 2): 3}, self.Unprintable()]

        def task(i: int) -> Any:
            if i == len(odd):
                raise self.Unsayable()
            return odd[i] if i < len(odd) else i

        path = tmp_path / "log.db"
        with anypool.Pool("thread", 1, joblog=path) as pool:
            for i in range(len(odd) + 2):
                pool.submit(task, i).exception(30)
            assert len(list(pool.imap(task, range(len(odd) + 2), chunksize=1, return_exceptions=True))) == 6
        with JobLog(path, "read") as log:
            recs = list(log.records())
        assert len(recs) == 2 * (len(odd) + 2)
        errors = [r.error for r in recs if r.outcome == "error"]
        assert errors == ["Unsayable: <str() raised RuntimeError>"] * 2


class TestReading:
    def test_done_failed_and_succeeded_follow_the_latest_final_attempt(self, tmp_path: Path) -> None:
        with JobLog(tmp_path / "log.db") as log:
            log.record_many([
                rec(1),                                    # ok
                rec(2, 1, "error", final=False), rec(2, 2, "error"),  # failed after a retry
                rec(3, 1, "timeout"),                      # failed
                rec(4, 1, "killed", final=False),          # interrupted: not done
                rec(5, 1, "error"), rec(5, 2, "ok"),      # failed, then succeeded on --resume-failed
                rec(6, 1, "error", final=False),           # retry pending when the run died
            ])
            assert list(log.done_seqs()) == [1, 2, 3, 5]
            assert list(log.failed_seqs()) == [2, 3]
            assert list(log.succeeded_seqs()) == [1, 5]
            assert log.last_attempt(5) == 2
            assert log.last_attempt(99) == 0

    def test_job_0_is_a_job_like_any_other(self, tmp_path: Path) -> None:
        """A pool's job log numbers map items from 0; before, finals() and the seq sets
        built on it (and last_attempts()) started after job 0, so it never read as done."""
        path = tmp_path / "log.db"
        with anypool.Pool("thread", 1, joblog=path) as pool:
            assert list(pool.map(abs, [0, -1, -2])) == [0, 1, 2]
        with JobLog(path, "read") as log:
            assert [s for s, _, _ in log.finals()] == [0, 1, 2]
            assert list(log.done_seqs()) == list(log.succeeded_seqs()) == [0, 1, 2]
            assert list(log.last_attempts()) == [(0, 1), (1, 1), (2, 1)]
            assert [s for s, _, _ in log.finals(after=0)] == [1, 2]
        with JobLog(tmp_path / "failed.db") as log:
            log.record_many([rec(0, 1, "error"), rec(1)])
            assert list(log.failed_seqs()) == [0]

    def test_finals_and_records_page_through_long_logs(self, tmp_path: Path) -> None:
        with JobLog(tmp_path / "log.db") as log:
            log.record_many(rec(i) for i in range(5000, 0, -1))
            assert [s for s, _, _ in log.finals()] == list(range(1, 5001))
            assert [r.seq for r in log.records(by_seq=True)] == list(range(1, 5001))
            assert [r.seq for r in log.records()] == list(range(5000, 0, -1))

    def test_rows_are_the_shared_report_rows(self, tmp_path: Path) -> None:
        with JobLog(tmp_path / "log.db") as log:
            log.record(rec(2, 1, "error", error="CommandFailed: boom"))
            log.record(rec(1))
            rows = log.rows()
        assert all(isinstance(r, Row) for r in rows)
        assert [(r.seq, r.outcome, r.error, r.ended - r.started) for r in rows] == [
            (1, "ok", "", 0.5), (2, "error", "CommandFailed: boom", 0.5)]

    def test_read_mode_never_creates_a_file(self, tmp_path: Path) -> None:
        with pytest.raises(JobLogError, match="no such job log"):
            JobLog(tmp_path / "missing.db", "read")
        assert not (tmp_path / "missing.db").exists()


class TestRefusals:
    def test_a_file_that_is_not_a_database_is_refused(self, tmp_path: Path) -> None:
        f = tmp_path / "notes.txt"
        f.write_text("my precious notes\n" * 100)
        with pytest.raises(JobLogError, match="not an anypool job log"):
            JobLog(f)
        assert f.read_text() == "my precious notes\n" * 100

    def test_another_sqlite_database_is_refused_untouched(self, tmp_path: Path) -> None:
        f = tmp_path / "app.db"
        db = sqlite3.connect(f)
        db.execute("CREATE TABLE users (name TEXT)")
        db.commit()
        db.close()
        with pytest.raises(JobLogError, match="is not an anypool job log"):
            JobLog(f, "new")
        db = sqlite3.connect(f)
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["users"]
        db.close()

    def test_a_newer_format_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "log.db"
        JobLog(path).close()
        db = sqlite3.connect(path)
        db.execute("PRAGMA user_version = 99")
        db.commit()
        db.close()
        with pytest.raises(JobLogError, match="newer anypool"):
            JobLog(path)

    def test_resume_refuses_a_log_written_for_other_input(self, tmp_path: Path) -> None:
        path = tmp_path / "log.db"
        with JobLog(path) as log:
            log.begin_run({"command": "gzip {}"})
        with JobLog(path) as log:
            log.begin_run({"command": "gzip {}"}, resume=True)  # same input: fine
            with pytest.raises(JobLogError) as info:
                log.begin_run({"command": "rm {}"}, resume=True)
        msg = str(info.value)
        assert "written for other input" in msg
        assert '"gzip {}"' in msg
        assert '"rm {}"' in msg


# Run in a child: a file size limit makes SQLite's writes fail (SIGXFSZ is ignored by Python).
WRITE_PAST_A_SIZE_LIMIT = """
import resource, sys
from anypool.observers.joblog import JobLog, JobLogError, JobRecord
log = JobLog(sys.argv[1], results=True)
log.begin_run({})
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
rec = lambda i: JobRecord(i, 1, "[]", "c", 0.0, 0.1, 0, None, "ok", True, "", "w", b"x" * 20_000)
i = 1
try:
    while i < 100:
        log.record(rec(i))
        i += 1
except JobLogError as exc:
    print(i, exc)
try:
    log.record_many([rec(100), rec(101)])
except JobLogError as exc:
    print("again:", exc)
log.close()
"""


class TestFailures:
    """SQLite failing under a log that opened fine: a JobLogError naming the file, never sqlite3's own."""

    def test_a_log_damaged_past_its_header_raises_job_log_errors_as_it_is_read(self, tmp_path: Path) -> None:
        path = tmp_path / "log.db"
        with JobLog(path) as log:
            log.record_many(rec(i) for i in range(1, 3001))
        damage(path, range(20, 40))
        with JobLog(path, "read") as log:  # the header is fine: it opens
            for read in (lambda: list(log.records()), lambda: list(log.finals()), log.rows,
                         lambda: list(log.last_attempts()), log.done_seqs):
                with pytest.raises(JobLogError, match=r"log.db: cannot read the job log: .*malformed"):
                    read()

    def test_a_write_that_fails_raises_a_job_log_error_and_keeps_what_was_committed(
            self, tmp_path: Path) -> None:
        """Before, the failed COMMIT raised sqlite3.OperationalError (anypool run: a traceback)."""
        path = tmp_path / "log.db"
        r = subprocess.run([sys.executable, "-c", WRITE_PAST_A_SIZE_LIMIT, str(path)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        first, again = r.stdout.splitlines()
        failed_at, message = first.split(" ", 1)
        assert 2 < int(failed_at) < 100
        assert message.startswith(f"{path}: cannot write the job log: ")
        assert again.startswith("again: ")  # each write fails alone: the connection is still usable
        with JobLog(path, "read") as log:  # every record before the failure, none after
            assert list(log.done_seqs()) == list(range(1, int(failed_at)))


class TestOneWriter:
    """Two writers at once would mix their runs (a second 'new' one empties the first's rows)."""

    def test_a_second_writer_is_refused_while_readers_go_on(self, tmp_path: Path) -> None:
        path = tmp_path / "log.db"
        with JobLog(path) as log:
            log.record(rec(1))
            for mode in ("append", "new"):
                with pytest.raises(JobLogError, match=rf"log.db is being written by another anypool \(pid "
                                                      rf"{os.getpid()} on "):
                    JobLog(path, mode)
            with JobLog(path, "read") as reader:
                assert [r.seq for r in reader.records()] == [1]
            log.record(rec(2))
        assert not (tmp_path / "log.db-lock").exists()  # nothing left beside the log
        with JobLog(path) as log:  # free again
            assert list(log.done_seqs()) == [1, 2]

    def test_the_lock_dies_with_its_process_even_by_kill_9(self, tmp_path: Path) -> None:
        path = tmp_path / "log.db"
        code = (f"from anypool.observers.joblog import JobLog; log = JobLog({str(path)!r}); "
                "print('open', flush=True); import time; time.sleep(60)")
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"open\n"
            with pytest.raises(JobLogError, match=f"pid {proc.pid} on"):
                JobLog(path)
        finally:
            proc.kill()
            proc.wait()
        assert (tmp_path / "log.db-lock").exists()  # left behind, but nobody holds it
        with JobLog(path, "new") as log:
            log.record(rec(1))

    def test_a_forked_child_does_not_keep_the_lock(self, tmp_path: Path) -> None:
        """A "fork" worker shares its parent's descriptors: it closes the lock's copy at once,
        so when the writer dies, a child of it still running does not keep the log locked."""
        path = tmp_path / "log.db"
        code = textwrap.dedent(f"""
            import os, time
            from anypool.observers.joblog import JobLog
            log = JobLog({str(path)!r})
            child = os.fork()
            if child == 0:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 1)  # not holding the test's pipes open
                os.dup2(null, 2)
                time.sleep(30)
                os._exit(0)
            print(child, flush=True)
            os._exit(0)  # the writer dies without closing the log; its child runs on
        """)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
        child = int(r.stdout)
        try:
            assert (tmp_path / "log.db-lock").exists()
            JobLog(path).close()
        finally:
            os.kill(child, signal.SIGKILL)


class TestSeqSet:
    @settings(max_examples=60, deadline=None)
    @given(st.sets(st.integers(0, 300)), st.integers(-5, 305))
    def test_it_behaves_like_a_set_of_ints(self, values: set[int], probe: int) -> None:
        s = SeqSet(values)
        assert (probe in s) == (probe in values)
        assert len(s) == len(values)
        assert list(s) == sorted(values)
        assert set(SeqSet.from_ascending(sorted(values))) == values

    def test_it_keeps_ranges_not_numbers(self) -> None:
        s = SeqSet.from_ascending(range(1, 1_000_001))
        assert s.ranges == [(1, 1_000_000)]
        assert len(s) == 1_000_000
        assert 500_000 in s
        assert 0 not in s


def _cycle() -> list[Any]:
    a: list[Any] = [1]
    a.append(a)
    return a


def _deep(n: int) -> list[Any]:
    v: list[Any] = []
    for _ in range(n):
        v = [v]
    return v


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class TestResultOutput:
    """What a job log keeps of a Python result, and what ``anypool map`` prints: strict JSON."""

    @pytest.mark.parametrize(("value", "expected"), [
        ([1, "é", None, True, 1.5], [1, "é", None, True, 1.5]),
        ({"k": float("nan"), "l": [float("inf"), -float("inf")]}, {"k": "nan", "l": ["inf", "-inf"]}),
        ({(1, 2): "a", 3: "b", None: "c", True: "d", 2.5: "e"},
         {"(1, 2)": "a", "3": "b", "null": "c", "true": "d", "2.5": "e"}),
        ({1, 2}, "{1, 2}"),
        (_cycle(), [1, "[...]"]),
        ({"d": {"x": 1}}, {"d": {"x": 1}}),
        (10**5000, hex(10**5000)),
        ([10**5000, (1, 2)], [hex(10**5000), [1, 2]]),
        (_BadRepr(), "<_BadRepr object: repr() failed>"),
        ([_BadRepr(), float("nan")], ["<_BadRepr object: repr() failed>", "nan"]),
        ("caf\udce9", "caf\udce9"),
        (_deep(100_000), "<list object: repr() failed>"),
    ], ids=["plain", "nan", "keys", "set", "cycle", "nested", "huge-int", "huge-int-inside", "bad-repr",
            "bad-repr-inside", "surrogate", "too-deep"])
    def test_what_json_cannot_hold_is_written_as_text(self, value: Any, expected: Any) -> None:
        data = result_output(value)
        text = data.decode("utf-8")  # valid UTF-8, lone surrogates escaped
        assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON")) == expected

    def test_a_dict_met_again_inside_itself(self) -> None:
        d: dict[str, Any] = {"a": 1}
        d["self"] = d
        assert json.loads(result_output(d)) == {"a": 1, "self": "{...}"}


class TestPoolJoblog:
    def test_pool_joblog_records_every_attempt_of_commands(self, tmp_path: Path) -> None:
        path = tmp_path / "log.db"
        counter = tmp_path / "n"
        with anypool.Pool("subprocess", 2, joblog=path, retries=1, backoff=0) as pool:
            ok = pool.submit("echo fine")
            flaky = pool.submit(f"echo x >> {counter}; test $(wc -l < {counter}) -ge 2")
            dead = pool.submit("kill -9 $$")
            ok.result(30)
            flaky.result(30)
            dead.exception(30)
        with JobLog(path, "read") as log:
            recs = sorted(log.records(), key=lambda r: (r.command, r.attempt))
        by_cmd = {(r.command, r.attempt): r for r in recs}
        assert by_cmd[("echo fine", 1)].outcome == "ok"
        assert by_cmd[("echo fine", 1)].exitcode == 0
        flaky_cmd = f"echo x >> {counter}; test $(wc -l < {counter}) -ge 2"
        assert (by_cmd[(flaky_cmd, 1)].outcome, by_cmd[(flaky_cmd, 1)].final) == ("error", False)
        assert (by_cmd[(flaky_cmd, 2)].outcome, by_cmd[(flaky_cmd, 2)].final) == ("ok", True)
        killed = [r for r in recs if r.command == "kill -9 $$"]
        assert [(r.signal, r.exitcode, r.outcome) for r in killed] == [(9, None, "error")] * 2
        assert all(r.worker.startswith("slot-") for r in recs)

    def test_pool_joblog_records_python_tasks_on_any_backend(self, tmp_path: Path) -> None:
        path = tmp_path / "log.db"
        with anypool.Pool("thread", 2, joblog=path) as pool:
            assert list(pool.map(len, ["ab", "abc"])) == [2, 3]
            assert isinstance(pool.submit(int, "x").exception(30), ValueError)
        with JobLog(path, "read") as log:
            recs = list(log.records(by_seq=True))
        assert sorted((r.args, r.outcome) for r in recs) == [
            ('"ab"', "ok"), ('"abc"', "ok"), ('["x"]', "error")]
        err = next(r for r in recs if r.outcome == "error")
        assert err.error.startswith("ValueError: invalid literal")
        assert err.command == "int"

    def test_a_retried_batch_item_keeps_its_error_and_the_good_items_are_final(self, tmp_path: Path) -> None:
        """Before, the whole batch's rows took the batch's ``final`` (False while any item
        was retried), so items 1-3 never read as done, and item 0's error text was lost."""
        path = tmp_path / "log.db"
        marker = tmp_path / "failed-once"

        def fail_first_time(x: int) -> int:
            if x == 0 and not marker.exists():
                marker.touch()
                raise ValueError("first try")
            return x

        with anypool.Pool("thread", 1, joblog=path, retries=1, backoff=0) as pool:
            assert list(pool.map(fail_first_time, range(4), chunksize=4)) == [0, 1, 2, 3]
        with JobLog(path, "read") as log:
            got = sorted((r.seq, r.attempt, r.outcome, r.final, r.error) for r in log.records())
            assert got == [(0, 1, "error", False, "ValueError: first try"), (0, 2, "ok", True, ""),
                           (1, 1, "ok", True, ""), (2, 1, "ok", True, ""), (3, 1, "ok", True, "")]
            assert list(log.done_seqs()) == [0, 1, 2, 3]

    @pytest.mark.parametrize("backend", ["process", "subprocess", "async"])
    def test_shutdown_kill_records_the_running_tasks_as_killed(self, tmp_path: Path, backend: str) -> None:
        """Each killed attempt is a row on its worker (not final: a resumed run does it again);
        what never started has none; and the futures are settled when shutdown returns."""
        import tasks

        def start(pool: anypool.Pool, mark: Path) -> anypool.Future[Any]:
            if backend == "subprocess":
                return pool.submit(f"touch {mark}; sleep 30")
            if backend == "async":
                return pool.submit(tasks.amark_then_sleep, str(mark), 30)
            return pool.submit(tasks.mark_then_sleep, str(mark), 30)

        recs = _kill_two_running(anypool.Pool(backend, 2, joblog=tmp_path / "log.db"), start, tmp_path)
        assert sorted((r.outcome, r.final) for r in recs) == [("killed", False)] * 2
        assert all(r.worker and r.worker != "-" for r in recs)

    def test_shutdown_kill_on_auto_waits_for_jobs_that_take_their_grace(self, tmp_path: Path) -> None:
        """Jobs that ignore SIGTERM die 0.25 s later, by SIGKILL: their rows still reach the log."""
        recs = _kill_two_running(anypool.Pool("auto", 2, joblog=tmp_path / "log.db"),
                                 lambda pool, mark: pool.submit(f"trap '' TERM; touch {mark}; sleep 30"),
                                 tmp_path)
        assert sorted((r.outcome, r.final, r.signal) for r in recs) == [("killed", False, 9)] * 2


def _kill_two_running(pool: anypool.Pool, start: Callable[[anypool.Pool, Path], anypool.Future[Any]],
                      tmp_path: Path) -> list[JobRecord]:
    """Start three tasks that create a file as they begin, on a pool of two; once two run,
    ``shutdown(kill=True)``; check every future is settled then; the job log's records."""
    import time

    marks = [tmp_path / f"started-{i}" for i in range(3)]
    futs = [start(pool, m) for m in marks]
    deadline = time.monotonic() + 20
    while sum(m.exists() for m in marks) < 2:
        assert time.monotonic() < deadline, "the tasks never started"
        time.sleep(0.02)
    pool.shutdown(kill=True)
    assert all(f.done() for f in futs)
    with JobLog(tmp_path / "log.db", "read") as log:
        return list(log.records())
