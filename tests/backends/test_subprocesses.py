"""The ``subprocess`` backend: real commands, real process groups, real signals."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import anypool
from anypool.backends.subprocesses import GRACE, run_command
from anypool.commands import SHELL, direct_argv, mentions_arguments, prepare

NASTY = ["a b", "it's", 'say "hi"', "x;y", "a|b", "$(touch P1)", "`touch P2`", "*", "", "-n", "--", "\\n",
         "a\nb", "$HOME", "~", "#x", "é ü 中", "{}", "'", '"']


def gone(pid: int) -> bool:
    """True once ``pid`` is no process or only a zombie waiting for init."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_for_lines(path: Path, n: int, seconds: float = 20.0) -> None:
    """Wait until the jobs have written ``n`` words (their pids) to ``path``."""
    deadline = time.monotonic() + seconds
    while not (path.exists() and len(path.read_text().split()) == n):
        assert time.monotonic() < deadline, "the jobs never started"
        time.sleep(0.05)


def wait_gone(pids: list[int], seconds: float = 5.0) -> list[int]:
    deadline = time.monotonic() + seconds
    left = [p for p in pids if not gone(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if not gone(p)]
    return left


class TestCommands:
    def test_a_shell_string_runs_in_sh_and_captures_both_streams(self) -> None:
        """A str is a shell command; stdout and stderr come back separately, as bytes."""
        with anypool.Pool("subprocess", 2) as pool:
            r = pool.submit("echo out; echo err >&2").result(30)
        assert isinstance(r, anypool.CommandResult)
        assert (r.stdout, r.stderr, r.returncode) == (b"out\n", b"err\n", 0)
        assert r.args == (SHELL, "-c", "echo out; echo err >&2")
        assert r.command == "echo out; echo err >&2"
        assert r.pid > 0
        assert r.duration >= 0
        assert abs(r.started - time.time()) < 30
        assert r.ok
        assert r.signal is None

    def test_an_argv_list_runs_without_a_shell_with_arguments_appended(self) -> None:
        """A list is an argv; submit's arguments are appended verbatim."""
        with anypool.Pool("subprocess", 2) as pool:
            r = pool.submit(["printf", "%s\\n"], *NASTY).result(30)
        assert r.stdout == "".join(s + "\n" for s in NASTY).encode()
        assert r.args[0] == "printf"

    def test_arguments_to_a_shell_string_are_never_read_by_the_shell(self, tmp_path: Path) -> None:
        """Arguments become "$@" of the script: quotes, $(...), ; and globs stay literal."""
        with anypool.Pool("subprocess", 2) as pool:
            r = pool.submit(f"cd {tmp_path} && printf '%s\\n'", *NASTY).result(30)
        assert r.stdout == "".join(s + "\n" for s in NASTY).encode()
        assert not list(tmp_path.iterdir()), "an argument was run as shell code"

    def test_a_command_that_places_positional_parameters_gets_no_extra_arguments(self) -> None:
        with anypool.Pool("subprocess", 1) as pool:
            r = pool.submit('printf "%s-%s" "$2" "$1"', "a", "b").result(30)
        assert r.stdout == b"b-a"

    def test_a_dollar_one_the_shell_does_not_expand_still_gets_the_arguments(self, tmp_path: Path) -> None:
        """awk's own $1, in single quotes (or escaped), is no reference to the script's
        arguments: they were dropped, and awk read nothing and exited 0."""
        data = tmp_path / "in.txt"
        data.write_text("b x\na y\n")
        with anypool.Pool("subprocess", 2) as pool:
            quoted = pool.submit("sort | awk '{print $1}'", data).result(30)
            escaped = pool.submit('sort | awk "{print \\$2}"', data).result(30)
            placed = pool.submit("""awk '{print $2}' "$1" | sort""", data).result(30)
        assert quoted.stdout == b"b\na\n"  # the file, appended as "$@" to awk: sort read nothing
        assert escaped.stdout == b"x\ny\n"
        assert placed.stdout == b"x\ny\n"
        assert placed.args[2] == """awk '{print $2}' "$1" | sort"""  # no "$@" appended

    @pytest.mark.parametrize(("script", "mentions"), [
        ('cp "$1" "$1.bak"', True),
        ("echo $#", True),
        ("echo ${2}", True),
        ('echo "it\'s $*"', True),  # a ' inside "..." quotes nothing
        ("awk '{print $1}'", False),
        ("echo \\$1", False),
        ('echo "\\$@"', False),
        ("echo ${#name}", False),  # a length, not $#
        ("echo $HOME", False),
    ])
    def test_which_scripts_place_their_arguments_themselves(self, script: str, mentions: bool) -> None:
        assert mentions_arguments(script) is mentions

    def test_map_over_a_command_gives_one_result_per_argument_in_order(self) -> None:
        with anypool.Pool("subprocess", 3) as pool:
            out = [r.stdout for r in pool.map("echo", range(20))]
        assert out == [f"{i}\n".encode() for i in range(20)]

    def test_numbers_paths_and_bytes_are_accepted_as_arguments(self, tmp_path: Path) -> None:
        with anypool.Pool("subprocess", 1) as pool:
            r = pool.submit(["printf", "%s|"], 1, 2.5, tmp_path, b"raw").result(30)
        assert r.stdout == f"1|2.5|{tmp_path}|raw|".encode()

    def test_keyword_arguments_and_odd_argument_types_are_refused_clearly(self) -> None:
        with anypool.Pool("subprocess", 1) as pool:
            with pytest.raises(TypeError, match="commands take no keyword arguments"):
                pool.submit("echo", x=1).result(30)
            with pytest.raises(TypeError, match="command arguments must be str"):
                pool.submit("echo", object()).result(30)
            with pytest.raises(ValueError, match="empty"):
                pool.submit("   ").result(30)

    def test_a_non_command_callable_is_refused(self) -> None:
        with anypool.Pool("subprocess", 1) as pool, pytest.raises(TypeError, match="runs commands"):
            pool.submit(len, "x").result(30)

    def test_jobs_read_stdin_from_dev_null(self) -> None:
        """A job that reads stdin ends at once instead of stealing the parent's input."""
        with anypool.Pool("subprocess", 1) as pool:
            r = pool.submit("cat").result(10)
        assert r.stdout == b""

    def test_each_job_leads_its_own_process_group_and_session(self) -> None:
        with anypool.Pool("subprocess", 1) as pool:
            r = pool.submit(["sh", "-c", "echo $$; ps -o pgid= -o sid= -p $$"]).result(30)
        pid, ids = r.stdout.decode().split("\n", 1)
        assert ids.split() == [pid, pid]

    def test_large_output_is_captured_whole(self) -> None:
        """10 MB on stdout while stderr also writes: no pipe can fill up and block the job."""
        with anypool.Pool("subprocess", 2) as pool:
            r = pool.submit([sys.executable, "-c", "import sys; sys.stdout.write('x' * 10_000_000); "
                             "sys.stderr.write('e' * 1_000_000)"]).result(60)
        assert r.stdout == b"x" * 10_000_000
        assert r.stderr == b"e" * 1_000_000

    def test_output_of_concurrent_jobs_never_mixes(self) -> None:
        code = ("import sys, time\nc = sys.argv[1]\nfor _ in range(20):\n"
                "    sys.stdout.write(c * 5000); sys.stdout.flush(); time.sleep(0.002)\n")
        with anypool.Pool("subprocess", 4) as pool:
            results = list(pool.map([sys.executable, "-c", code], "abcd"))
        for c, r in zip("abcd", results, strict=True):
            assert r.stdout == c.encode() * 100_000

    def test_auto_sends_commands_to_the_subprocess_backend(self) -> None:
        with anypool.Pool() as pool:
            assert pool.submit("echo auto").result(30).stdout == b"auto\n"
            assert pool.submit(["echo", "argv"]).result(30).stdout == b"argv\n"

    @pytest.mark.parametrize("backend", ["subprocess", "auto"])
    def test_auto_takes_the_argvs_the_subprocess_backend_takes(self, backend: str, tmp_path: Path) -> None:
        """An argv holding a path, bytes or a number ran on subprocess; auto called the
        list itself ("'list' object is not callable")."""
        (tmp_path / "f").write_text("abcdef")
        with anypool.Pool(backend) as pool:
            assert pool.submit(["cat", tmp_path / "f"]).result(30).stdout == b"abcdef"
            assert pool.submit((b"head", "-c", 3, os.fsencode(tmp_path / "f"))).result(30).stdout == b"abc"
            assert [r.stdout for r in pool.map(["printf", "%s", 2.5], "ab")] == [b"2.5a", b"2.5b"]
            with pytest.raises(TypeError, match="command arguments must be str"):
                pool.submit(["echo", object()]).result(30)
            with pytest.raises(ValueError, match="empty"):
                pool.submit([]).result(30)

    def test_command_objects_get_their_slot_number(self) -> None:
        class Cmd:
            def __anypool_command__(self, args: tuple[Any, ...], slot: int) -> list[str]:
                return ["echo", str(slot), *args]

        with anypool.Pool("subprocess", 3) as pool:
            outs = [r.stdout.split() for r in pool.map(Cmd(), range(12))]
        assert {int(o[0]) for o in outs} <= {1, 2, 3}
        assert [o[1] for o in outs] == [str(i).encode() for i in range(12)]

    def test_unknown_backend_options_are_refused(self) -> None:
        with pytest.raises(TypeError, match=r"unknown option.*on_outptu"):
            anypool.Pool("subprocess", on_outptu=print)


class TestNoShell:
    @pytest.mark.parametrize(("text", "argv"), [
        ("true", ["true"]),
        ("gzip -9 'my file'", ["gzip", "-9", "my file"]),
        ("printf-like a'b c'\"d\" e", ["printf-like", "ab cd", "e"]),
        ("/usr/bin/env A=1 x", ["/usr/bin/env", "A=1", "x"]),
        ("cp 'it'\"'\"'s' b", ["cp", "it's", "b"]),
        ("tool  --opt=1,2:3@4%5+6", ["tool", "--opt=1,2:3@4%5+6"]),
    ])
    def test_commands_without_shell_syntax_are_split_directly(self, text: str, argv: list[str]) -> None:
        assert direct_argv(text) == argv

    @pytest.mark.parametrize("text", [
        "ls *.txt", "echo hi", "printf x", "cd /tmp", "exit 3", "a;b", "a|b", "a&", "a > f", "a < f",
        "echo $HOME", "x `y`", "x $(y)", "A=1 cmd", "~/bin/x", "x # comment", 'x "$y"', "x \\n",
        "a\nb", "{ x; }", "if true", "x [ab]", "x ?", "", "  ", "''",
    ])
    def test_commands_with_shell_syntax_or_builtins_go_to_the_shell(self, text: str) -> None:
        assert direct_argv(text) is None

    def test_a_direct_command_really_starts_no_shell(self) -> None:
        with anypool.Pool("subprocess", 1) as pool:
            r = pool.submit("sh -c 'echo $PPID'").result(30)
            assert r.args[0] == "sh"
            assert int(r.stdout) == os.getpid()  # sh's parent is this process: no shell between

    def test_a_script_without_a_shebang_still_runs(self, tmp_path: Path) -> None:
        script = tmp_path / "plain"
        script.write_text("echo from-script \"$1\"\n")
        script.chmod(0o755)
        with anypool.Pool("subprocess", 1) as pool:
            assert pool.submit(f"{script} arg").result(30).stdout == b"from-script arg\n"

    def test_prepare_shows_the_command_with_quoted_arguments(self) -> None:
        spec = prepare("gzip -9", ("a b",))
        assert (spec.argv, spec.text, spec.shell) == (["gzip", "-9", "a b"], "gzip -9 'a b'", False)
        spec = prepare("x | y", ("a b",))
        assert spec.argv == [SHELL, "-c", 'x | y "$@"', "sh", "a b"]
        assert spec.shell


class TestFailures:
    def test_a_non_zero_exit_fails_with_command_failed(self) -> None:
        with anypool.Pool("subprocess", 1) as pool:
            fut = pool.submit("echo partial; echo why >&2; exit 3")
            exc = fut.exception(30)
        assert isinstance(exc, anypool.CommandFailed)
        assert isinstance(exc, subprocess.CalledProcessError)
        assert (exc.returncode, exc.stdout, exc.stderr) == (3, b"partial\n", b"why\n")
        assert exc.result.command == "echo partial; echo why >&2; exit 3"
        assert "exited with code 3" in str(exc)

    def test_death_by_a_signal_fails_and_names_the_signal(self) -> None:
        with anypool.Pool("subprocess", 1) as pool:
            exc = pool.submit("kill -9 $$").exception(30)
        assert isinstance(exc, anypool.CommandFailed)
        assert exc.returncode == -9
        assert exc.result.signal == 9
        assert "SIGKILL" in str(exc)

    def test_retries_run_a_failing_command_again(self, tmp_path: Path) -> None:
        counter = tmp_path / "n"
        cmd = f"echo x >> {counter}; test $(wc -l < {counter}) -ge 3"
        with anypool.Pool("subprocess", 1, retries=2, backoff=0) as pool:
            fut = pool.submit(cmd)
            assert fut.result(30).ok
        assert len(fut.attempts) == 2
        assert all(a.outcome == "error" for a in fut.attempts)

    @pytest.mark.parametrize("cmd", ["no-such-program-xyz --flag", ["no-such-program-xyz", "--flag"]])
    def test_a_missing_program_fails_with_a_clear_message(self, cmd: Any) -> None:
        with anypool.Pool("subprocess", 1) as pool:
            exc = pool.submit(cmd).exception(30)
        assert isinstance(exc, anypool.CommandFailed)
        assert exc.returncode == 127
        assert exc.stderr == b"anypool: no-such-program-xyz: command not found\n"
        assert "anypool: no-such-program-xyz: command not found" in exc.__notes__

    def test_a_missing_program_in_a_shell_command_fails_with_the_shells_message(self) -> None:
        with anypool.Pool("subprocess", 1) as pool:
            exc = pool.submit("true && no-such-program-xyz").exception(30)
        assert isinstance(exc, anypool.CommandFailed)
        assert exc.returncode == 127
        assert b"no-such-program-xyz" in exc.stderr
        assert b"not found" in exc.stderr

    def test_a_file_that_is_not_executable_fails_with_126(self, tmp_path: Path) -> None:
        f = tmp_path / "data"
        f.write_text("x")
        with anypool.Pool("subprocess", 1) as pool:
            exc = pool.submit([str(f)]).exception(30)
        assert isinstance(exc, anypool.CommandFailed)
        assert exc.returncode == 126
        assert b"Permission denied" in exc.stderr

    def test_command_failed_survives_pickling(self) -> None:
        with anypool.Pool("subprocess", 1) as pool:
            exc = pool.submit("echo o; exit 5").exception(30)
        back = pickle.loads(pickle.dumps(exc))
        assert isinstance(back, anypool.CommandFailed)
        assert back.result == exc.result
        assert back.returncode == 5


SPAWNER = "sleep 60 & echo $!; {trap} sleep 60"


class TestStopping:
    @pytest.mark.parametrize("trap", ["", "trap '' TERM;"], ids=["plain", "ignores-TERM"])
    def test_a_timeout_kills_the_whole_process_group(self, trap: str) -> None:
        """The job and the child it started are both gone; the task fails with TaskTimeout."""
        cmd = SPAWNER.format(trap=trap)
        t0 = time.monotonic()
        with anypool.Pool("subprocess", 1, timeout=0.5) as pool:
            exc = pool.submit(cmd).exception(30)
        took = time.monotonic() - t0
        assert isinstance(exc, anypool.TaskTimeout)
        grandchild = int(exc.result.stdout)
        assert not wait_gone([grandchild, exc.result.pid], 2.0)
        assert took < 0.5 + 2 * GRACE + 2.0
        assert exc.result.returncode in (-signal.SIGTERM, -signal.SIGKILL)
        if trap:
            assert exc.result.returncode == -signal.SIGKILL

    def test_a_timeout_fails_only_its_own_job(self) -> None:
        with anypool.Pool("subprocess", 2) as pool:
            slow = pool.with_options(timeout=0.3).submit("sleep 30")
            fast = pool.submit("sleep 0.5; echo done")
            assert isinstance(slow.exception(30), anypool.TaskTimeout)
            assert fast.result(30).stdout == b"done\n"

    def test_shutdown_kill_stops_running_groups_at_once(self, tmp_path: Path) -> None:
        marks = [tmp_path / f"m{i}" for i in range(2)]
        pool = anypool.Pool("subprocess", 2)
        futs = [pool.submit(f"sleep 60 & echo $! > {m}; echo $$ >> {m}; sleep 60") for m in marks]
        deadline = time.monotonic() + 10
        while not all(m.exists() and len(m.read_text().split()) == 2 for m in marks):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        t0 = time.monotonic()
        pool.shutdown(kill=True)
        assert time.monotonic() - t0 < GRACE + 1.0
        for f in futs:
            exc = f.exception(10)
            assert isinstance(exc, anypool.PoolClosed)
        pids = [int(p) for m in marks for p in m.read_text().split()]
        assert not wait_gone(pids, 3.0)

    def test_shutdown_kill_cancels_queued_jobs(self) -> None:
        pool = anypool.Pool("subprocess", 1)
        running = pool.submit("sleep 30")
        queued = [pool.submit("echo never") for _ in range(5)]
        time.sleep(0.2)
        pool.shutdown(kill=True)
        assert isinstance(running.exception(10), anypool.PoolClosed)
        assert all(q.cancelled() for q in queued)

    def test_ctrl_c_in_the_parent_kills_running_jobs(self, tmp_path: Path) -> None:
        """A script using a Pool gets SIGINT: it exits and takes its jobs' process groups with it."""
        pids = tmp_path / "pids"
        script = tmp_path / "user.py"
        script.write_text(textwrap.dedent(f"""
            import anypool, time
            with anypool.Pool("subprocess", 2) as pool:
                futs = [pool.submit("sleep 60 & echo $! >> {pids}; echo $$ >> {pids}; sleep 60")
                        for _ in range(2)]
                for f in futs:
                    f.result()
        """))
        proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE)
        try:
            _wait_for_lines(pids, 4)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
            proc.wait()
        assert b"KeyboardInterrupt" in err
        assert not wait_gone([int(p) for p in pids.read_text().split()], 3.0)


    @pytest.mark.parametrize("death", ["SIGKILL", "os._exit"])
    def test_jobs_outlive_no_pool_that_dies_without_a_word(self, tmp_path: Path, death: str) -> None:
        """The job guard stops the jobs (and what they started) of a pool whose process died."""
        pids = tmp_path / "pids"
        go = tmp_path / "go"  # the test has seen the guard: the script may die
        script = tmp_path / "user.py"
        script.write_text(textwrap.dedent(f"""
            import os, pathlib, time, anypool
            go = pathlib.Path({str(go)!r})
            pool = anypool.Pool("subprocess", 2)
            futs = [pool.submit("sleep 60 & echo $! >> {pids}; echo $$ >> {pids}; sleep 60")
                    for _ in range(2)]
            while not go.exists():
                time.sleep(0.02)
            if {death == "os._exit"}:
                os._exit(3)
            time.sleep(60)
        """))
        proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE)
        try:
            _wait_for_lines(pids, 4)
            # the guard is started just after the first job (jobguard.started): the
            # jobs can write their pids first
            deadline = time.monotonic() + 10
            while True:
                guards = [p for p in psutil.Process(proc.pid).children()
                          if "anypool-job-guard" in p.cmdline()]
                if guards or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            assert len(guards) == 1, "no job guard"
            time.sleep(0.5)  # until the jobs' threads have told the guard (see jobguard: the gap)
            go.touch()
            if death == "SIGKILL":
                proc.kill()
            assert proc.wait(20) == (-signal.SIGKILL if death == "SIGKILL" else 3)
        finally:
            proc.kill()
            proc.wait()
        assert not wait_gone([int(p) for p in pids.read_text().split()], 3.0), "a job outlived its pool"
        assert not wait_gone([guards[0].pid], 3.0), "the guard outlived its work"

    def test_the_guard_leaves_jobs_that_ended_alone(self, tmp_path: Path) -> None:
        """A job that ended is off the guard's list: what it left running is not stopped at exit."""
        mark = tmp_path / "bg"
        script = tmp_path / "user.py"
        script.write_text(textwrap.dedent(f"""
            import anypool
            with anypool.Pool("subprocess", 1) as pool:
                pool.submit("sleep 30 > /dev/null 2>&1 & echo $! > {mark}").result()
        """))
        subprocess.run([sys.executable, str(script)], check=True, timeout=60)
        background = int(mark.read_text())
        try:
            time.sleep(0.5)  # past the guard's batch and grace
            assert not gone(background), "the guard stopped a job that had ended"
        finally:
            os.kill(background, signal.SIGKILL)
        assert not wait_gone([background])


class TestLineOutput:
    def test_on_output_receives_each_line_as_it_comes(self) -> None:
        lines: list[tuple[Any, int, bytes]] = []
        lock = threading.Lock()

        def sink(args: tuple[Any, ...], stream: int, data: bytes) -> None:
            with lock:
                lines.append((args, stream, data))

        with anypool.Pool("subprocess", 2, on_output=sink) as pool:
            r = pool.submit("printf 'a\\nb\\n'; printf 'e\\n' >&2; printf 'c'", "x").result(30)
        assert r.stdout == b"a\nb\nc"
        assert r.stderr == b"e\n"
        assert [d for a, s, d in lines if s == 1] == [b"a\n", b"b\n", b"c"]
        assert [d for a, s, d in lines if s == 2] == [b"e\n"]
        assert all(a == ("x",) for a, _, _ in lines)

    def test_a_long_line_is_handed_on_whole_in_linear_time(self) -> None:
        """128 MiB without a newline, read 64 KiB at a time: its pieces were joined again on
        every read, quadratic time (64 MiB took 26 s on the project's machine; 128 MiB,
        past the 20 s timeout below); now ~0.4 s."""
        size = 128 << 20
        lines: list[tuple[int, int, int]] = []  # stream, length, zero bytes

        def sink(args: tuple[Any, ...], stream: int, data: bytes) -> None:
            lines.append((stream, len(data), data.count(0)))

        with anypool.Pool("subprocess", 1, timeout=20, on_output=sink) as pool:
            r = pool.submit(f"head -c {size} /dev/zero; printf '\\nend'; printf 'x\\ny' >&2").result(60)
        assert len(r.stdout) == size + 4
        assert sorted(lines) == [(1, 3, 0), (1, size + 1, size), (2, 1, 0), (2, 2, 0)]

    def test_a_background_process_does_not_hold_the_slot(self) -> None:
        """With pipes, the job ends when its leader exits, even if a child keeps the pipe open."""
        with anypool.Pool("subprocess", 1, on_output=lambda *a: None) as pool:
            t0 = time.monotonic()
            r = pool.submit("sleep 30 & echo $!; echo done").result(20)
            assert time.monotonic() - t0 < 10
        os.kill(int(r.stdout.split()[0]), signal.SIGKILL)
        assert not wait_gone([int(r.stdout.split()[0])])


class TestRunCommand:
    def test_run_command_runs_one_command_in_this_thread(self) -> None:
        assert run_command("echo", "a b").stdout == b"a b\n"
        with pytest.raises(anypool.CommandFailed):
            run_command("exit 2")
        assert run_command("exit 2", check=False).returncode == 2

    def test_run_command_timeout_kills_the_group(self) -> None:
        with pytest.raises(anypool.TaskTimeout) as info:
            run_command(SPAWNER.format(trap=""), timeout=0.3)
        assert not wait_gone([int(info.value.result.stdout)], 2.0)  # type: ignore[attr-defined]
