"""``anypool map``: a Python function over inputs, one JSON value a line."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from cli_helpers import Cli

MODULE = '''
import asyncio, os, time

def shout(s):
    return s.upper() + "!"

def pid_of(_):
    time.sleep(0.05)
    return os.getpid()

def picky(x):
    if x == "bad":
        raise ValueError(f"cannot take {x!r}")
    return len(x)

async def nap(seconds):
    await asyncio.sleep(seconds)

async def later(s):
    await asyncio.sleep(0.01)
    return [s, s]

NOT_A_FUNCTION = 3
'''


@pytest.fixture
def module(tmp_path: Path) -> str:
    (tmp_path / "userjobs.py").write_text(MODULE)
    return "userjobs"


def values(stdout: bytes) -> list[object]:
    return [json.loads(line) for line in stdout.decode().splitlines()]


class TestMap:
    def test_results_print_as_json_lines_in_input_order(self, cli: Cli) -> None:
        r = cli("map", "json:loads", ":::", "[1, 2]", '{"a": 1}', "null", '"é"')
        assert r.returncode == 0
        assert values(r.stdout) == [[1, 2], {"a": 1}, None, "é"]
        assert "é".encode() in r.stdout

    def test_nan_and_infinities_print_as_strict_json(self, cli: Cli) -> None:
        r = cli("map", "--tag", "json:loads", ":::", "NaN", "[Infinity, -Infinity, 1.5]", '{"k": NaN}')
        assert r.returncode == 0
        strict = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
                  for line in r.stdout.decode().splitlines()]
        assert [v["result"] for v in strict] == ["nan", ["inf", "-inf", 1.5], {"k": "nan"}]

    def test_words_after_the_function_are_the_inputs(self, cli: Cli, module: str) -> None:
        assert values(cli("map", f"{module}:shout", "a", "b").stdout) == ["A!", "B!"]

    def test_json_args_and_several_groups(self, cli: Cli) -> None:
        r = cli("map", "--json-args", "operator:add", ":::", "1", "2", ":::", "10", "20")
        assert values(r.stdout) == [11, 21, 12, 22]

    def test_inputs_from_stdin(self, cli: Cli, module: str) -> None:
        r = cli("map", f"{module}:shout", stdin=b"x\ny\n")
        assert values(r.stdout) == ["X!", "Y!"]

    def test_errors_are_json_objects_and_counted_in_the_exit_status(self, cli: Cli, module: str) -> None:
        r = cli("map", f"{module}:picky", ":::", "ok", "bad", "fine", "bad")
        assert r.returncode == 2
        assert values(r.stdout) == [
            2, {"error": "ValueError", "message": "cannot take 'bad'", "input": ["bad"]},
            4, {"error": "ValueError", "message": "cannot take 'bad'", "input": ["bad"]},
        ]

    def test_tag_prints_inputs_with_results(self, cli: Cli, module: str) -> None:
        r = cli("map", "--tag", f"{module}:shout", ":::", "q")
        assert values(r.stdout) == [{"input": ["q"], "result": "Q!"}]

    def test_process_backend_runs_the_users_module_in_worker_processes(self, cli: Cli, module: str) -> None:
        r = cli("map", "--backend", "process", "-j", "2", f"{module}:pid_of", ":::", *"abcdefgh")
        assert r.returncode == 0, r.stderr
        pids = values(r.stdout)
        assert len(pids) == 8
        assert len(set(pids)) >= 1
        assert all(isinstance(p, int) for p in pids)

    def test_coroutine_functions_run_under_auto(self, cli: Cli, module: str) -> None:
        r = cli("map", f"{module}:later", ":::", "a", "b")
        assert values(r.stdout) == [["a", "a"], ["b", "b"]]

    def test_joblog_records_each_call_with_job_numbers_from_1(self, cli: Cli, tmp_path: Path,
                                                               module: str) -> None:
        r = cli("map", "--joblog", "log.db", "--results", f"{module}:picky", ":::", "ab", "bad")
        assert r.returncode == 1
        con = sqlite3.connect(tmp_path / "log.db")
        rows = con.execute("SELECT seq, args, outcome, command, stdout, error FROM attempt "
                           "ORDER BY seq").fetchall()
        con.close()
        assert rows[0] == (1, '["ab"]', "ok", f"{module}:picky", b"2", "")
        assert rows[1][:4] == (2, '["bad"]', "error", f"{module}:picky")
        assert rows[1][5] == "ValueError: cannot take 'bad'"

    def test_results_utf8_cannot_hold_print_and_are_recorded(self, cli: Cli, tmp_path: Path) -> None:
        """A file name's undecodable byte prints as that byte, a lone surrogate as JSON's escape.
        Before, the byte stopped the job log's observer (no later call was recorded) and the
        surrogate stopped the run with a UnicodeEncodeError traceback."""
        (tmp_path / "oddjobs.py").write_text(
            'import os\n\ndef f(x):\n    return {"1": os.fsdecode(b"caf\\xe9"), "2": "\\ud800"}.get(x, x)\n')
        r = cli("map", "--joblog", "log.db", "--results", "-j", "1", "oddjobs:f", ":::", "1", "2", "3")
        assert r.returncode == 0, r.stderr
        assert r.stdout == b'"caf\xe9"\n"\\ud800"\n"3"\n'
        assert json.loads(r.stdout.splitlines()[1]) == "\ud800"
        con = sqlite3.connect(tmp_path / "log.db")
        try:
            rows = con.execute("SELECT seq, stdout FROM attempt ORDER BY seq").fetchall()
        finally:
            con.close()
        assert rows == [(1, b'"caf\xe9"'), (2, b'"\\ud800"'), (3, b'"3"')]

    @pytest.mark.parametrize(("spec", "message"), [
        ("nomodule_xyz:f", b"cannot import module 'nomodule_xyz'"),
        ("json:nothing", b"module 'json' has no attribute 'nothing'"),
        ("json", b"'json' is not MODULE:FUNCTION"),
        ("userjobs:NOT_A_FUNCTION", b"userjobs:NOT_A_FUNCTION is a int, not a function"),
    ])
    def test_a_function_that_cannot_be_loaded_is_a_usage_error(self, cli: Cli, module: str, spec: str,
                                                               message: bytes) -> None:
        r = cli("map", spec, ":::", "x")
        assert r.returncode == 2
        assert message in r.stderr

    @pytest.mark.parametrize(("source", "message"), [
        ("def f(:\n", b"cannot import module 'broken': SyntaxError: "),
        ("def f(x):\n    return x\nraise RuntimeError('no config')\n",
         b"cannot import module 'broken': RuntimeError: no config (at "),
    ])
    def test_a_module_that_fails_on_import_is_a_usage_error(self, cli: Cli, tmp_path: Path, source: str,
                                                             message: bytes) -> None:
        (tmp_path / "broken.py").write_text(source)
        r = cli("map", "broken:f", ":::", "x")
        assert r.returncode == 2
        assert message in r.stderr
        assert b"Traceback" not in r.stderr

    # a process is killed at its timeout and a coroutine cancelled (a thread would run on)
    @pytest.mark.parametrize(("spec", "backend"), [("time:sleep", "process"), ("userjobs:nap", "auto")])
    def test_a_timeout_names_the_users_function(self, cli: Cli, tmp_path: Path, module: str,
                                                spec: str, backend: str) -> None:
        r = cli("map", "--backend", backend, "--timeout", "0.2", "--json-args", "--joblog", "log.db", spec,
                ":::", "30")
        assert r.returncode == 1
        message = f"task #1 {spec} ran past its timeout of 0.2 s and was stopped"
        assert values(r.stdout) == [{"error": "TaskTimeout", "message": message, "input": [30]}]
        con = sqlite3.connect(tmp_path / "log.db")
        try:
            assert con.execute("SELECT outcome, error FROM attempt").fetchall() == [
                ("timeout", f"TaskTimeout: {message}")]
        finally:
            con.close()

    def test_bad_json_input_is_reported(self, cli: Cli) -> None:
        r = cli("map", "--json-args", "json:dumps", ":::", "{oops")
        assert r.returncode == 255
        assert b"input 1 is not JSON" in r.stderr

    def test_bad_input_partway_prints_what_finished_then_stops(self, cli: Cli, tmp_path: Path) -> None:
        r = cli("map", "--json-args", "--joblog", "log.db", "operator:neg", ":::", "1", "2", "3", "bad", "5")
        assert r.returncode == 255
        assert b"input 4 is not JSON" in r.stderr
        assert values(r.stdout) == [-1, -2, -3]
        con = sqlite3.connect(tmp_path / "log.db")
        try:
            assert con.execute("SELECT seq FROM attempt ORDER BY seq").fetchall() == [(1,), (2,), (3,)]
        finally:
            con.close()
