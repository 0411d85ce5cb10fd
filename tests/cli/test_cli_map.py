"""``anypool map``: a Python function over inputs, one JSON value a line."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from cli_helpers import Cli, cli_argv, cli_env, wait_for

MODULE = '''
import asyncio, os, subprocess, sys, time

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

def hold(x):
    """q: returns at once; f: fails once the file go exists; others: sleep a minute."""
    if x == "q":
        return x
    open(f"started-{x}", "w").close()
    if x == "f":
        while not os.path.exists("go"):
            time.sleep(0.01)
        raise ValueError("f failed")
    time.sleep(60)
    return x

def noisy(x):
    print("print", x)
    sys.stdout.write("partial " + x)
    os.write(1, b"fd\\n")
    subprocess.run(["echo", "child", x])
    return x

class BadStr(Exception):
    def __str__(self):
        raise RuntimeError("no str")

def unjsonable(kind):
    if kind == "keys":
        return {(1, 2): "a"}
    if kind == "big":
        return 10 ** 5000
    if kind == "cycle":
        loop = []
        loop.append(loop)
        return loop
    raise BadStr()

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

    # each crashed the whole run with a traceback and printed nothing (on process, the
    # exception whose __str__ raises crashed the worker too)
    @pytest.mark.parametrize("backend", ["thread", "process"])
    def test_values_json_cannot_hold_and_unprintable_errors_are_printed_as_text(
            self, cli: Cli, tmp_path: Path, module: str, backend: str) -> None:
        r = cli("map", "--backend", backend, "--joblog", "log.db", "--results", f"{module}:unjsonable",
                ":::", "keys", "big", "cycle", "badstr")
        assert r.returncode == 1, r.stderr
        assert b"Traceback" not in r.stderr
        lines = r.stdout.splitlines()
        assert [json.loads(line) for line in lines] == [
            {"(1, 2)": "a"}, hex(10**5000), ["[...]"],
            {"error": "BadStr", "message": "<str() raised RuntimeError>", "input": ["badstr"]}]
        con = sqlite3.connect(tmp_path / "log.db")
        try:
            rows = con.execute("SELECT outcome, stdout, error FROM attempt ORDER BY seq").fetchall()
        finally:
            con.close()
        assert rows == [("ok", line, "") for line in lines[:3]] + [
            ("error", None, "BadStr: <str() raised RuntimeError>")]

    def test_undecodable_input_echoed_back_is_valid_utf8_json(self, cli: Cli) -> None:
        r = cli("map", "builtins:str", stdin=b"caf\xe9\n")
        assert r.returncode == 0
        assert r.stdout == b'"caf\\udce9"\n'
        assert json.loads(r.stdout.decode("utf-8")) == "caf\udce9"  # the byte, by surrogateescape

    # what the function prints went between the results
    @pytest.mark.parametrize("backend", ["thread", "process", "auto"])
    def test_what_the_function_prints_goes_to_stderr(self, cli: Cli, module: str, backend: str) -> None:
        r = cli("map", "--backend", backend, "-j", "2", f"{module}:noisy", ":::", "a", "b")
        assert r.returncode == 0, r.stderr
        assert r.stdout == b'"a"\n"b"\n'
        for x in "ab":
            for noise in (f"print {x}\n", f"partial {x}", f"child {x}\n"):
                assert noise.encode() in r.stderr
        assert r.stderr.count(b"fd\n") == 2

    @pytest.mark.parametrize("backend", ["thread", "process"])
    def test_a_closed_stdout_stops_the_run_quietly(self, tmp_path: Path, backend: str) -> None:
        """The results have a descriptor of their own (see the test above): closed, it stops the run."""
        (tmp_path / "args").write_text("".join(f"{i}\n" for i in range(100_000)))
        pipeline = f"{' '.join(cli_argv())} map --backend {backend} builtins:str :::: args | head -1; " \
                   "echo status ${PIPESTATUS[0]}"
        r = subprocess.run(["bash", "-c", pipeline], capture_output=True, timeout=60, cwd=tmp_path,
                           env=cli_env())
        assert r.stdout.decode().splitlines() == ['"0"', "status 141"]
        assert r.stderr == b""

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
        """A file name's undecodable byte and a lone surrogate print as JSON's escapes, so every
        line is UTF-8 (the byte once printed as itself, which no strict parser reads).
        Before, the byte stopped the job log's observer (no later call was recorded) and the
        surrogate stopped the run with a UnicodeEncodeError traceback."""
        (tmp_path / "oddjobs.py").write_text(
            'import os\n\ndef f(x):\n    return {"1": os.fsdecode(b"caf\\xe9"), "2": "\\ud800"}.get(x, x)\n')
        r = cli("map", "--joblog", "log.db", "--results", "-j", "1", "oddjobs:f", ":::", "1", "2", "3")
        assert r.returncode == 0, r.stderr
        assert r.stdout == b'"caf\\udce9"\n"\\ud800"\n"3"\n'
        assert [json.loads(line.decode("utf-8")) for line in r.stdout.splitlines()] == [
            "caf\udce9", "\ud800", "3"]
        con = sqlite3.connect(tmp_path / "log.db")
        try:
            rows = con.execute("SELECT seq, stdout FROM attempt ORDER BY seq").fetchall()
        finally:
            con.close()
        assert rows == [(1, b'"caf\\udce9"'), (2, b'"\\ud800"'), (3, b'"3"')]

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


class TestStopping:
    """Ctrl-C, SIGTERM and --halt now end the run at once, even where a call cannot be stopped.

    A Python call on a thread runs on (nothing can stop it): the run abandons
    it, records it killed, never prints what it returns, and exits.
    """

    @pytest.mark.parametrize("backend", ["thread", "auto"])
    @pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM", "halt"])
    def test_calls_on_threads_are_abandoned_and_the_run_ends_at_once(
            self, tmp_path: Path, module: str, backend: str, stop: str) -> None:
        args = ["q", "a", "b", "f"] if stop == "halt" else ["q", "a", "b"]
        halt = ["--halt", "now,fail=1"] if stop == "halt" else []
        proc = subprocess.Popen(cli_argv("map", "-j", str(len(args)), "--backend", backend, *halt,
                                         "--joblog", "log.db", f"{module}:hold", ":::", *args),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=cli_env())
        assert proc.stdout is not None
        try:
            started = [tmp_path / f"started-{x}" for x in args if x != "q"]
            wait_for(lambda: all(p.exists() for p in started), what="the calls to start")
            assert proc.stdout.readline() == b'"q"\n'  # a finished call: printed, not abandoned
            t0 = time.monotonic()
            if stop == "halt":
                (tmp_path / "go").touch()
            else:
                proc.send_signal(getattr(signal, stop))
            out, err = proc.communicate(timeout=30)
            took = time.monotonic() - t0
        finally:
            proc.kill()
            proc.wait()
        assert took < 3, f"the run took {took:.1f} s to end: it waited for the calls"
        assert proc.returncode == {"SIGINT": 130, "SIGTERM": 143, "halt": 1}[stop], err
        failed = {"error": "ValueError", "message": "f failed", "input": ["f"]}
        assert values(out) == ([failed] if stop == "halt" else [])
        con = sqlite3.connect(tmp_path / "log.db")
        try:
            rows = con.execute("SELECT seq, outcome, final FROM attempt ORDER BY seq").fetchall()
        finally:
            con.close()
        assert rows[:3] == [(1, "ok", 1), (2, "killed", 0), (3, "killed", 0)]
        if stop == "SIGINT":
            assert b"interrupted; 2 running job(s) killed" in err
        if stop == "halt":
            assert b"halting (--halt now,fail=1): job 4 failed; killing the running jobs" in err
