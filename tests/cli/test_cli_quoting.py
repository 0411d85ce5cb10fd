"""Arguments reach commands byte for byte and are never run as shell code."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_helpers import Cli

NASTY = ["a b", "it's", 'say "hi"', "x;y", "a|b", "a&&b", "$(touch P1)", "`touch P2`", "$(touch P3", "*",
         "?", "[ab]", "", "-n", "-e", "--", "\\n", "\\", "$HOME", "${HOME}", "~", "~root", "#x", "é ü 中",
         "{}", "{1}", "'", '"', "'\"'", "\t", " lead", "trail ", "!", ">out", "<in", "a=b", "x\ry"]

PRINTF = "printf '%s\\n' {}"

# anything an argv can hold (no NUL), but not the separators ::: and ::::
ARG = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40).filter(
    lambda s: s not in (":::", "::::", ":::+", "::::+"))
LINE = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00\n"), max_size=40)
HYPO = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def lines(values: list[str], end: str = "\n") -> bytes:
    return "".join(v + end for v in values).encode()


def no_files_made(d: Path) -> None:
    assert sorted(p.name for p in d.iterdir()) == [], "an argument ran as shell code"


class TestQuoting:
    def test_nasty_arguments_after_colons_come_back_literally(self, cli: Cli, tmp_path: Path) -> None:
        r = cli("run", "-k", PRINTF, ":::", *NASTY)
        assert r.returncode == 0, r.stderr
        assert r.stdout == lines(NASTY)
        no_files_made(tmp_path)

    def test_nasty_arguments_from_stdin_come_back_literally(self, cli: Cli, tmp_path: Path) -> None:
        r = cli("run", "-k", PRINTF, stdin=lines(NASTY))
        assert r.returncode == 0, r.stderr
        assert r.stdout == lines(NASTY)
        no_files_made(tmp_path)

    @HYPO
    @given(st.lists(ARG, min_size=1, max_size=20))
    def test_any_strings_after_colons_come_back_byte_for_byte(self, cli: Cli, values: list[str]) -> None:
        r = cli("run", "-k", "-j", "4", PRINTF, ":::", *values)
        assert r.returncode == 0, r.stderr
        assert r.stdout == lines(values)

    @HYPO
    @given(st.lists(LINE, min_size=1, max_size=20))
    def test_any_lines_from_stdin_come_back_byte_for_byte(self, cli: Cli, values: list[str]) -> None:
        r = cli("run", "-k", "-j", "4", PRINTF, stdin=lines(values))
        assert r.returncode == 0, r.stderr
        assert r.stdout == lines(values)

    @HYPO
    @given(st.lists(ARG, min_size=1, max_size=20))
    def test_any_strings_with_newlines_through_nul_separated_stdin(self, cli: Cli, values: list[str]) -> None:
        r = cli("run", "-k", "-0", "printf '%s\\0' {}", stdin=lines(values, "\0"))
        assert r.returncode == 0, r.stderr
        assert r.stdout == lines(values, "\0")

    def test_bytes_that_are_not_utf8_pass_through_unchanged(self, cli: Cli) -> None:
        raw = b"caf\xe9 \xff\xfe\n"
        r = cli("run", PRINTF, stdin=raw)
        assert r.stdout == raw
        r = cli("run", PRINTF, ":::", os.fsdecode(b"\xff-x"))
        assert r.stdout == b"\xff-x\n"

    def test_a_leading_placeholder_is_quoted_too(self, cli: Cli, tmp_path: Path) -> None:
        """Stricter than GNU parallel: '{}' as the command does not run the argument as shell code."""
        r = cli("run", "{}", ":::", "touch P4")
        assert r.returncode == 1
        assert b"not found" in r.stderr
        no_files_made(tmp_path)

    def test_no_shell_runs_an_argv_without_any_shell(self, cli: Cli, tmp_path: Path) -> None:
        r = cli("run", "-k", "--no-shell", "printf", "%s\\n", "{}", ":::", *NASTY)
        assert r.stdout == lines(NASTY)
        r = cli("run", "--no-shell", "printf '[%s]' {.}", ":::", "$(touch P5).txt")
        assert r.stdout == b"[$(touch P5)]"
        no_files_made(tmp_path)

    def test_dry_run_shows_the_quoting(self, cli: Cli) -> None:
        r = cli("run", "--dry-run", "-k", "echo {}", ":::", "a b", "it's", "$(x)")
        assert r.stdout.decode().splitlines() == ["echo 'a b'", "echo 'it'\"'\"'s'", "echo '$(x)'"]
