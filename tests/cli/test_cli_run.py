"""``anypool run``: inputs, placeholders, output modes, --halt, exit statuses, usage errors."""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import IO

import pytest

from cli_helpers import Cli, cli_argv, cli_env


def out_lines(r: subprocess.CompletedProcess[bytes]) -> list[str]:
    return r.stdout.decode().splitlines()


def readline_within(stream: IO[bytes], seconds: float) -> bytes:
    """One line of a child's output, failing (not hanging) if none comes in time."""
    assert select.select([stream], [], [], seconds)[0], f"no output within {seconds} s"
    return stream.readline()


def end(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            f.close()


class TestInputs:
    def test_several_groups_give_every_combination_first_slowest(self, cli: Cli) -> None:
        r = cli("run", "-k", "echo {1}-{2}", ":::", "a", "b", ":::", "1", "2", "3")
        assert out_lines(r) == ["a-1", "a-2", "a-3", "b-1", "b-2", "b-3"]

    def test_arguments_come_from_files_and_stdin(self, cli: Cli, tmp_path: Path) -> None:
        (tmp_path / "f").write_text("x\ny\n")
        assert out_lines(cli("run", "-k", "echo", "::::", "f")) == ["x", "y"]
        assert out_lines(cli("run", "-k", "-a", "f", "echo")) == ["x", "y"]
        r = cli("run", "-k", "echo {1}{2}", "::::", "f", ":::", "1", "2")
        assert out_lines(r) == ["x1", "x2", "y1", "y2"]
        assert out_lines(cli("run", "-k", "echo", stdin=b"s1\ns2")) == ["s1", "s2"]
        r = cli("run", "-k", "echo {2}{1}", "::::", "-", ":::", "z", stdin=b"p\nq\n")
        assert out_lines(r) == ["zp", "zq"]

    def test_an_unreadable_input_file_exits_255_before_any_job(self, cli: Cli, tmp_path: Path) -> None:
        r = cli("run", "touch ran", "::::", "nope.txt")
        assert r.returncode == 255
        assert b"cannot read input file 'nope.txt'" in r.stderr
        assert not (tmp_path / "ran").exists()


class TestPlaceholders:
    def test_every_replacement_string(self, cli: Cli) -> None:
        r = cli("run", "-k", "-j", "1", "echo {} {.} {/} {//} {/.} {#} {%}",
                ":::", "dir/sub/file.tar.gz", "plain")
        assert out_lines(r) == [
            "dir/sub/file.tar.gz dir/sub/file.tar file.tar.gz dir/sub file.tar 1 1",
            "plain plain plain . plain 2 1",
        ]

    def test_directory_is_dirnames_as_in_gnu_parallel(self, cli: Cli) -> None:
        """Trailing and doubled slashes: each expected value is GNU parallel's {//} and dirname(1)'s."""
        cases = {"dir/": ".", "a/b/": "a", "a//b": "a", "a/b//": "a", "/a/b.c/": "/a", "x/.": "x",
                 "/": "/", "//": "/", "//a": "/", "/a": "/", "a": ".", "": ".", "a/b/c": "a/b",
                 "///a//b///": "///a"}
        r = cli("run", "-k", "-j", "1", "--no-shell", "printf", "<%s>\\n", "{//}", ":::", *cases)
        assert out_lines(r) == [f"<{d}>" for d in cases.values()]

    def test_numbered_forms_pick_one_group(self, cli: Cli) -> None:
        r = cli("run", "echo {2/.} {1//} {1.}", ":::", "a/b.c", ":::", "x/y.z")
        assert out_lines(r) == ["y a a/b"]

    def test_without_placeholders_arguments_are_appended(self, cli: Cli) -> None:
        assert out_lines(cli("run", "-k", "echo x", ":::", "a b", ":::", "c")) == ["x a b c"]

    def test_slots_stay_within_the_job_count(self, cli: Cli) -> None:
        r = cli("run", "-j", "3", "echo {%}", ":::", *map(str, range(30)))
        assert set(out_lines(r)) <= {"1", "2", "3"}
        assert len(out_lines(r)) == 30

    def test_dry_run_prints_and_runs_nothing(self, cli: Cli, tmp_path: Path) -> None:
        r = cli("run", "--dry-run", "-k", "touch {}", ":::", "a", "b")
        assert out_lines(r) == ["touch a", "touch b"]
        assert not list(tmp_path.iterdir())

    @pytest.mark.parametrize(("jobs", "more"), [("+1", 1), ("-1", -1), ("-100", -100), ("+0", 0)])
    def test_jobs_relative_to_the_cpus(self, cli: Cli, jobs: str, more: int) -> None:
        """As GNU parallel: the CPUs plus or minus N, at least 1 (+1 ran 1 job, -1 was a usage error)."""
        slots = max(1, len(os.sched_getaffinity(0)) + more)
        r = cli("run", "-j", jobs, "sleep 0.3; echo {%}", ":::", *map(str, range(slots + 2)))
        assert r.returncode == 0, r.stderr
        assert {int(s) for s in out_lines(r)} == set(range(1, slots + 1))

    def test_percent_jobs_is_accepted(self, cli: Cli) -> None:
        r = cli("run", "-j", "200%", "-k", "echo", ":::", "1", "2")
        assert (r.returncode, out_lines(r)) == (0, ["1", "2"])


class TestOutput:
    def test_group_prints_each_jobs_output_whole(self, cli: Cli) -> None:
        script = "for i in 1 2 3 4 5; do echo {}$i; sleep 0.02; done"
        r = cli("run", "-j", "4", script, ":::", "a", "b", "c", "d")
        lines = out_lines(r)
        assert sorted(lines) == sorted(f"{c}{i}" for c in "abcd" for i in range(1, 6))
        for k in range(0, 20, 5):  # each job's five lines together, in its own order
            block = lines[k:k + 5]
            assert block == [f"{block[0][0]}{i}" for i in range(1, 6)]

    def test_line_buffer_prints_lines_as_they_come(self, cli: Cli) -> None:
        r = cli("run", "--line-buffer", "-j", "2", "sh -c {}", ":::", "echo a1; sleep 0.8; echo a2",
                "sleep 0.4; echo b1")
        assert out_lines(r) == ["a1", "b1", "a2"]
        r = cli("run", "--group", "-j", "2", "sh -c {}", ":::", "echo a1; sleep 0.8; echo a2",
                "sleep 0.4; echo b1")
        assert out_lines(r) == ["b1", "a1", "a2"]

    def test_keep_order_prints_in_input_order(self, cli: Cli) -> None:
        r = cli("run", "-k", "-j", "4", "sleep 0.{}; echo {}", ":::", "3", "2", "1", "0")
        assert out_lines(r) == ["3", "2", "1", "0"]

    def test_tag_prefixes_every_line_in_both_modes(self, cli: Cli) -> None:
        r = cli("run", "-k", "--tag", "printf 'x\\ny\\n'; echo", ":::", "a", ":::", "b")
        assert out_lines(r) == ["a\tb\tx", "a\tb\ty", "a\tb\ta b"]
        r = cli("run", "--tag", "--line-buffer", "echo hi", ":::", "t")
        assert out_lines(r) == ["t\thi t"]

    def test_bar_draws_progress_on_stderr_only(self, cli: Cli) -> None:
        r = cli("run", "--bar", "-k", "echo", ":::", "a", "b", "c")
        assert r.stdout == b"a\nb\nc\n"
        assert b"anypool:" in r.stderr
        assert b"3/3" in r.stderr
        assert cli("run", "echo", ":::", "a").stderr == b""  # not a terminal: no bar by default

    def test_stderr_of_jobs_goes_to_stderr(self, cli: Cli) -> None:
        r = cli("run", "echo out {}; echo err {} >&2", ":::", "1")
        assert r.stdout == b"out 1\n"
        assert r.stderr == b"err 1\n"

    # --dry-run prints without running anything: give it more output than any
    # pipe buffer holds, or it may finish before `head` closes the pipe
    @pytest.mark.parametrize(("mode", "jobs"), [("-j2", 2000), ("--dry-run", 40_000)])
    def test_a_closed_stdout_stops_the_run_quietly(self, tmp_path: Path, mode: str, jobs: int) -> None:
        (tmp_path / "args").write_text("".join(f"{i}\n" for i in range(jobs)))
        pipeline = f"{' '.join(cli_argv())} run {mode} echo :::: args | head -1; " \
                   "echo status ${PIPESTATUS[0]}"
        r = subprocess.run(["bash", "-c", pipeline], capture_output=True, timeout=60, cwd=tmp_path,
                           env=cli_env())
        first, status = r.stdout.decode().splitlines()
        assert first.removeprefix("echo ").isdigit()
        assert status == "status 141"
        assert b"Traceback" not in r.stderr
        assert b"Broken pipe" not in r.stderr

    def test_a_job_whose_output_was_cut_short_is_not_recorded_done(self, tmp_path: Path) -> None:
        """The reader goes away while anypool is blocked writing job 1's output to the full pipe."""
        proc = subprocess.Popen(cli_argv("run", "-j1", "--joblog", "g.db", "seq 200000; : {}",
                                         ":::", "1", "2"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=cli_env())
        assert proc.stdout is not None
        try:
            assert readline_within(proc.stdout, 30) == b"1\n"
            time.sleep(0.5)  # anypool fills the pipe and blocks in the write
            proc.stdout.close()
            assert proc.wait(30) == 141
        finally:
            end(proc)
        con = sqlite3.connect(tmp_path / "g.db")
        try:
            assert con.execute("SELECT seq FROM attempt WHERE final").fetchall() == []  # --resume reruns it
        finally:
            con.close()

    def test_a_closed_stdout_stops_a_line_buffered_run_too_and_fails_no_job(self, tmp_path: Path) -> None:
        """The lines are printed from slot threads: the closed pipe must stop the run, not fail the jobs."""
        pipeline = f"{' '.join(cli_argv())} run -j2 --line-buffer --joblog lb.db " \
                   "'seq 100000; sleep 30; : {}' ::: 1 2 3 4 | head -1; echo status ${PIPESTATUS[0]}"
        t0 = time.monotonic()
        r = subprocess.run(["bash", "-c", pipeline], capture_output=True, timeout=60, cwd=tmp_path,
                           env=cli_env())
        assert time.monotonic() - t0 < 20
        assert r.stdout.decode().splitlines() == ["1", "status 141"]
        assert b"failed" not in r.stderr
        assert b"Traceback" not in r.stderr
        con = sqlite3.connect(tmp_path / "lb.db")
        try:
            rows = con.execute("SELECT outcome, final FROM attempt").fetchall()
        finally:
            con.close()
        assert rows
        assert set(rows) == {("killed", 0)}  # not done: --resume runs them again

    @pytest.mark.parametrize("sub", [["run", "echo"], ["map", "json:loads"]])
    def test_finished_jobs_print_while_stdin_waits_for_its_next_line(self, tmp_path: Path,
                                                                     sub: list[str]) -> None:
        proc = subprocess.Popen(cli_argv(*sub), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=tmp_path, env=cli_env())
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            proc.stdin.write(b"1\n")
            proc.stdin.flush()
            assert readline_within(proc.stdout, 10) == b"1\n"  # while stdin is still open
            proc.stdin.write(b"2\n")
            proc.stdin.close()
            assert proc.wait(30) == 0
            assert proc.stdout.read() == b"2\n"
        finally:
            end(proc)

    @pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM", "halt"])
    def test_a_run_waiting_for_stdin_stops_at_once(self, tmp_path: Path, stop: str) -> None:
        """The input thread is still blocked in a read: the run must neither wait for it nor abort."""
        halt = ["--halt", "now,fail=1"] if stop == "halt" else []
        proc = subprocess.Popen(cli_argv("run", "-j1", *halt, "echo {}; exit {}"), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=cli_env())
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            proc.stdin.write(b"0\n" if stop != "halt" else b"0\n3\n")
            proc.stdin.flush()
            assert readline_within(proc.stdout, 10) == b"0\n"
            if stop != "halt":
                proc.send_signal(getattr(signal, stop))
            status = proc.wait(10)  # stdin stays open meanwhile
            err = proc.stderr.read() if proc.stderr is not None else b""
        finally:
            end(proc)
        assert status == {"SIGINT": 130, "SIGTERM": 143, "halt": 3}[stop], err
        assert b"Fatal Python error" not in err

    def test_finished_jobs_print_while_a_long_one_still_runs(self, tmp_path: Path) -> None:
        """Past the full window the main thread gathers finished jobs (a few ms); none is held back."""
        quick = ["0"] * 60  # far past the window (4 x 2 + 16), so the gathering path runs
        proc = subprocess.Popen(cli_argv("run", "-j", "2", "sleep {}; echo {#}", ":::", "60", *quick),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=cli_env())
        try:
            assert proc.stdout is not None
            seen = [proc.stdout.readline().decode().strip() for _ in quick]
            assert sorted(seen, key=int) == [str(n) for n in range(2, 62)]
            assert proc.poll() is None  # job 1 still sleeps
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
        assert proc.returncode == 128 + signal.SIGTERM


def _with_closed(fds: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """``anypool ARGS`` run by a shell with ``fds`` redirections (``>&-`` closes stdout)."""
    return subprocess.run(["sh", "-c", f'exec "$@" {fds}', "sh", *cli_argv(*args)], capture_output=True,
                          cwd=cwd, env=cli_env(), timeout=60)


class TestClosedStreams:
    """A closed stdout or stderr (``>&-``, ``2>&-``): the run goes on, as GNU parallel's,
    and what would go there is dropped (it was an AttributeError, and no job ran)."""

    def test_a_closed_stdout_drops_the_output_and_keeps_the_job_log_whole(self, tmp_path: Path) -> None:
        r = _with_closed(">&-", "run", "--joblog", "log.db", "echo out {}; echo err {} >&2", ":::", "a", "b",
                         cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert sorted(r.stderr.splitlines()) == [b"err a", b"err b"]
        con = sqlite3.connect(tmp_path / "log.db")  # not written over by the jobs' output
        try:
            assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert con.execute("SELECT count(*) FROM attempt WHERE outcome = 'ok'").fetchone() == (2,)
        finally:
            con.close()

    def test_a_closed_stderr_keeps_stdout_and_the_exit_status(self, tmp_path: Path) -> None:
        r = _with_closed("2>&-", "run", "echo out {}; echo err {} >&2; exit 3", ":::", "a", cwd=tmp_path)
        assert (r.returncode, r.stdout) == (1, b"out a\n")

    @pytest.mark.parametrize("backend", ["thread", "process"])
    def test_map_with_every_standard_stream_closed(self, tmp_path: Path, backend: str) -> None:
        r = _with_closed("<&- >&- 2>&-", "map", "--backend", backend, "json:loads", ":::", "1", "x", "y",
                         cwd=tmp_path)
        assert r.returncode == 2  # the two calls that failed


class TestExitStatus:
    def test_zero_when_all_succeed(self, cli: Cli) -> None:
        assert cli("run", "true", ":::", "1", "2").returncode == 0

    def test_the_number_of_failed_jobs(self, cli: Cli) -> None:
        assert cli("run", "exit {}", ":::", "0", "1", "2", "3").returncode == 3

    def test_101_when_more_than_100_failed(self, cli: Cli) -> None:
        assert cli("run", "-j", "8", "false", ":::", *map(str, range(101))).returncode == 101

    def test_a_missing_program_is_reported_and_counted(self, cli: Cli) -> None:
        r = cli("run", "no-such-program-xyz {}", ":::", "a")
        assert r.returncode == 1
        assert r.stderr == b"anypool: no-such-program-xyz: command not found\n"

    def test_a_command_too_long_to_run_is_reported_shortened(self, cli: Cli, tmp_path: Path) -> None:
        (tmp_path / "big").write_text("x" * 300_000 + "\n")
        r = cli("run", "echo", "::::", "big")
        assert r.returncode == 1
        assert b"Argument list too long" in r.stderr
        assert b"more characters)" in r.stderr
        assert len(r.stderr) < 1000

    def test_timeout_kills_and_fails_the_job(self, cli: Cli) -> None:
        t0 = time.monotonic()
        r = cli("run", "--timeout", "0.3", "sleep {}; echo done {}", ":::", "30", "0")
        assert r.returncode == 1
        assert out_lines(r) == ["done 0"]
        assert time.monotonic() - t0 < 15

    def test_retries_rerun_a_failing_job(self, cli: Cli, tmp_path: Path) -> None:
        cmd = "echo x >> n{}; test $(wc -l < n{}) -ge 3 && echo ok {}"
        assert cli("run", "--retries", "1", cmd, ":::", "a").returncode == 1
        r = cli("run", "--retries", "2", cmd, ":::", "b")
        assert (r.returncode, out_lines(r)) == (0, ["ok b"])


class TestHalt:
    def test_now_fail_1_kills_the_others_and_returns_the_jobs_status(self, cli: Cli) -> None:
        t0 = time.monotonic()
        r = cli("run", "-j", "3", "--halt", "now,fail=1", "sleep {}; exit 7", ":::", "0.1", "30", "30", "30")
        assert r.returncode == 7
        assert time.monotonic() - t0 < 10
        assert b"halting (--halt now,fail=1): job 1 failed" in r.stderr

    def test_with_keep_order_a_failure_behind_a_long_job_halts_at_once(self, cli: Cli) -> None:
        # counted as it ends, not when -k's order reaches it (GNU parallel too)
        t0 = time.monotonic()
        r = cli("run", "-k", "-j", "3", "--halt", "now,fail=1", "sleep {}; echo {}; exit 6",
                ":::", "30", "0.2", "0.1")
        assert time.monotonic() - t0 < 10
        assert r.returncode == 6
        assert b"halting (--halt now,fail=1): job 3 failed" in r.stderr

    @pytest.mark.parametrize("when", ["now", "soon"])
    @pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGABRT])
    def test_fail_1_after_a_job_killed_by_a_signal_returns_128_plus_n(self, cli: Cli, when: str,
                                                                    sig: int) -> None:
        r = cli("run", "--halt", f"{when},fail=1", f"kill -{int(sig)} $$; true {{}}", ":::", "a")
        assert r.returncode == 128 + sig  # as GNU parallel (and a shell) say; it was 1
        assert b"job 1 failed" in r.stderr

    def test_soon_waits_for_running_jobs_and_starts_no_new_one(self, cli: Cli) -> None:
        r = cli("run", "-j", "2", "--halt", "soon,fail=1", "sleep {}; echo {}; test {} != 0.1",
                ":::", "0.1", "0.5", "0.01", "0.01")
        assert sorted(out_lines(r)) == ["0.1", "0.5"]
        assert r.returncode == 1

    def test_soon_returns_the_triggering_jobs_status_not_a_later_failures(self, cli: Cli) -> None:
        r = cli("run", "-j", "2", "--halt", "soon,fail=1", "sleep 0.{}; exit 3{}", ":::", "2", "9")
        assert r.returncode == 32
        assert b"job 1 failed" in r.stderr

    def test_percentage_of_failures(self, cli: Cli) -> None:
        r = cli("run", "-j", "1", "--halt", "now,fail=50%", "exit {}", ":::", "0", "3", "4", "5", "0", "0")
        assert r.returncode == 50

    def test_success_halt_exits_zero(self, cli: Cli) -> None:
        r = cli("run", "-j", "1", "--halt", "now,success=1", "exit {}", ":::", "1", "0", "1", "1")
        assert r.returncode == 0

    def test_gnu_parallels_old_spellings(self, cli: Cli) -> None:
        r = cli("run", "-j", "1", "--halt=-1", "echo {}; exit {}", ":::", "1", "0", "1")
        assert (r.returncode, r.stdout) == (0, b"1\n0\n")
        r = cli("run", "-j", "1", "--halt", "2", "echo {}; exit {}", ":::", "0", "4", "1")
        assert (r.returncode, r.stdout) == (4, b"0\n4\n")


class TestUsage:
    @pytest.mark.parametrize(("args", "message"), [
        (["run", "--bogus", "x"], b"unrecognized arguments: --bogus"),
        (["run"], b"no command given"),
        (["run", ":::", "a"], b"no command given"),
        (["run", "echo {3}", ":::", "a", ":::", "b"],
         b"{3} refers to input source 3, but there are 2 input sources"),
        (["run", "-j", "0", "x"], b"at least 1 job"),
        (["run", "-j", "lots", "x"], b"invalid -j value 'lots'"),
        (["run", "--halt", "sometimes", "x"], b"invalid --halt value 'sometimes'"),
        (["run", "--timeout", "0", "x"], b"it must be above 0"),
        (["run", "--resume", "x"], b"need --joblog FILE"),
        (["run", "--results", "x"], b"needs --joblog FILE"),
        (["run", "echo", ":::+", "a"], b"not supported"),
        (["run", "echo", "::::"], b":::: needs at least one file name"),
        (["run", "--backend", "thread", "echo {%}", ":::", "a"],
         b"{%} (the job slot) needs --backend subprocess"),
        (["run", "-k", "--line-buffer", "echo", ":::", "a"], b"-k (--keep-order) and --line-buffer do not"),
        (["frobnicate"], b"invalid choice: 'frobnicate'"),
        (["run", "--backend", "nope", "echo", ":::", "a"],
         b"unknown backend 'nope'; known backends: async, auto,"),
        (["map", "--backend", "nope", "json:loads", ":::", "1"], b"unknown backend 'nope'"),
        (["run", "--address", "tcp://127.0.0.1:8786", "echo", ":::", "a"],
         b"--address names a Dask scheduler: it needs --backend dask (not subprocess)"),
        (["map", "--backend", "thread", "--address", "tcp://127.0.0.1:8786", "json:loads", ":::", "1"],
         b"it needs --backend dask (not thread)"),
    ])
    def test_usage_errors_exit_2_with_a_message(self, cli: Cli, args: list[str], message: bytes) -> None:
        r = cli(*args)
        assert r.returncode == 2
        assert message in r.stderr
        assert b"usage: anypool" in r.stderr
        assert b"Traceback" not in r.stderr

    def test_a_double_dash_ends_the_options(self, cli: Cli) -> None:
        r = cli("run", "-k", "--", "echo", "x", ":::", "a", "--tag")
        assert (r.returncode, out_lines(r)) == (0, ["x a", "x --tag"])
        r = cli("run", "--", ":::", "a")
        assert r.returncode == 2
        assert b"no command given" in r.stderr

    def test_no_subcommand_prints_help_and_exits_2(self, cli: Cli) -> None:
        r = cli()
        assert r.returncode == 2
        assert b"anypool run" in r.stderr

    @pytest.mark.parametrize("sub", [[], ["run"], ["map"], ["joblog"]])
    def test_help_reads_like_a_man_page_with_examples(self, cli: Cli, sub: list[str]) -> None:
        r = cli(*sub, "--help")
        assert r.returncode == 0
        assert b"examples:" in r.stdout

    def test_another_backend_runs_commands_too(self, cli: Cli) -> None:
        r = cli("run", "--backend", "thread", "-k", "--timeout", "5", "echo {}", ":::", "a", "b")
        assert (r.returncode, out_lines(r)) == (0, ["a", "b"])
