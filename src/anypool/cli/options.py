"""Option types and the options ``anypool run`` and ``anypool map`` share."""

from __future__ import annotations

import argparse
import math
import re

from ..backends.base import default_workers
from .halt import Halt, parse_halt

__all__ = ["add_common", "jobs_count", "nonnegative_int", "positive_seconds"]


def jobs_count(text: str) -> int:
    """``-j``: a number of jobs, a percentage of the CPUs (``200%``), or the CPUs plus or minus N.

    As GNU parallel: ``+2`` is two more than the CPUs, ``-1`` one fewer, and
    at least 1.

    Raises:
        argparse.ArgumentTypeError: none of these forms, or under 1 job.
    """
    m = re.fullmatch(r"([+-])(\d+)", text.strip())
    if m:
        n = int(m.group(2))
        return max(1, default_workers() + (n if m.group(1) == "+" else -n))
    m = re.fullmatch(r"(\d+(?:\.\d+)?)%", text.strip())
    if m:
        pct = float(m.group(1))
        if pct <= 0:
            raise argparse.ArgumentTypeError(f"invalid -j value {text!r}: the percentage must be above 0")
        return max(1, math.floor(default_workers() * pct / 100))
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid -j value {text!r}: give a number of jobs (4), a percentage of the CPUs (200%), "
            "or the CPUs plus or minus a number (+2, -1)"
        ) from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"invalid -j value {text!r}: at least 1 job must run at a time")
    return n


def positive_seconds(text: str) -> float:
    """``--timeout``: seconds, above 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not v > 0 or math.isinf(v):
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}: it must be above 0")
    return v


def nonnegative_int(text: str) -> int:
    """``--retries``: 0 or more."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: give a whole number") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: it cannot be negative")
    return v


def halt_policy(text: str) -> Halt:
    try:
        return parse_halt(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_common(p: argparse.ArgumentParser, *, default_backend: str, resume: bool = True) -> None:
    """The options both subcommands take (``resume``: with ``--resume`` and ``--resume-failed``)."""
    g = p.add_argument_group("running")
    g.add_argument("-j", "--jobs", type=jobs_count, metavar="N", default=None,
                   help="run N jobs at a time, N%% of the CPUs (200%%), or the CPUs plus or minus N "
                        "(+2, -1); default: one per CPU")
    g.add_argument("--timeout", type=positive_seconds, metavar="SECONDS",
                   help="stop a job that runs longer (for commands: its whole process group, "
                        "SIGTERM then SIGKILL) and count it failed")
    g.add_argument("--retries", type=nonnegative_int, default=0, metavar="N",
                   help="run a failed job up to N more times")
    g.add_argument("--halt", type=halt_policy, default=Halt("never"), metavar="WHEN,WHY=N",
                   help="stop early: now|soon,fail|success|done=N or =N%% (now kills running "
                        "jobs; soon lets them finish); default: never")
    g.add_argument("--backend", default=default_backend, metavar="NAME",
                   help=f"where jobs run: subprocess, thread, process, async, process+async, dask "
                        f"or auto (default: {default_backend})")
    g.add_argument("--address", metavar="ADDR",
                   help="the Dask scheduler to use with --backend dask (default: a local cluster)")
    i = p.add_argument_group("input")
    i.add_argument("-a", "--arg-file", action="append", default=[], metavar="FILE",
                   help="read arguments from FILE, one a line ('-' for stdin); same as :::: FILE")
    i.add_argument("-0", "--null", action="store_true",
                   help="input items are separated by NUL bytes, not newlines (find -print0)")
    # An option named like a negative number (-0) makes argparse take every
    # such word for an option: `-j -1` was "expected one argument".  -0 itself
    # is still found, by its exact name.
    p._has_negative_number_optionals.clear()
    o = p.add_argument_group("output and logging")
    o.add_argument("--joblog", metavar="FILE",
                   help="record every attempt in the SQLite job log FILE (see anypool joblog)")
    o.add_argument("--results", action="store_true",
                   help="also keep each job's output in the job log")
    if resume:
        o.add_argument("--resume", action="store_true",
                       help="skip the jobs the job log records as done (succeeded or failed)")
        o.add_argument("--resume-failed", action="store_true",
                       help="skip the jobs the job log records as succeeded; run the others again")
    else:
        p.set_defaults(resume=False, resume_failed=False)
    bar = o.add_mutually_exclusive_group()
    bar.add_argument("--bar", action="store_true", default=None,
                     help="show a progress bar with ETA on stderr (default: only when stderr is a terminal)")
    bar.add_argument("--no-bar", dest="bar", action="store_false", help="never show the progress bar")


def check_common(p: argparse.ArgumentParser, opts: argparse.Namespace) -> None:
    """Usage errors between options (argparse exits 2 with the message)."""
    if opts.resume and opts.resume_failed:
        p.error("give --resume or --resume-failed, not both")
    if (opts.resume or opts.resume_failed) and not opts.joblog:
        p.error("--resume and --resume-failed need --joblog FILE (the log of the earlier run)")
    if opts.results and not opts.joblog:
        p.error("--results keeps output in the job log, so it needs --joblog FILE")
    if opts.address and opts.backend != "dask":
        p.error(f"--address names a Dask scheduler: it needs --backend dask (not {opts.backend})")
    if opts.backend != "auto":
        from ..backends import get_backend
        from ..errors import BackendUnavailable

        try:
            get_backend(opts.backend)
        except BackendUnavailable as exc:  # a name to change, or an extra to install
            p.error(f"--backend: {exc}")
