"""``anypool joblog FILE``: show a job log as a table, or as GNU parallel's joblog."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from ..observers.joblog import JobLog, JobLogError, JobRecord

__all__ = ["configure", "main"]

DESCRIPTION = """\
Print the attempts recorded in a job log (written by --joblog), one a line:
job number, attempt, start time, run time, exit status, signal, outcome,
worker and command.  A job retried twice shows three lines.
"""

EPILOG = """\
outcomes:
  ok        the job succeeded
  error     it exited non-zero, died of a signal, or (anypool map) raised
  timeout   it ran past --timeout and was stopped
  crash     the worker process running it died
  killed    stopped by Ctrl-C or --halt now; not final: --resume runs it again

examples:
  anypool joblog jobs.db
  anypool joblog --failed jobs.db            jobs whose last attempt failed
  anypool joblog --tsv jobs.db > joblog.tsv  GNU parallel's --joblog format
  anypool joblog --runs jobs.db              the runs that wrote to the log

exit status: 0; 2 usage error; 255 when FILE is missing, not a job log, or
damaged (what was read before the damage is printed).
"""

TSV_HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"


def configure(sub: Any) -> argparse.ArgumentParser:
    """Add the ``joblog`` subcommand to the top-level parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "joblog", help="show a job log written by --joblog",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("file", metavar="FILE", help="the job log (an SQLite file)")
    p.add_argument("--tsv", action="store_true",
                   help="tab-separated, GNU parallel's joblog columns: one line per job (its last "
                        "attempt; Exitval -1 for a timeout or a kill)")
    p.add_argument("--failed", action="store_true", help="only jobs whose last final attempt failed")
    p.add_argument("--runs", action="store_true", help="list the runs that wrote to the log instead")
    p.set_defaults(handler=main, parser=p)
    return p


def main(opts: argparse.Namespace) -> int:
    """Print the job log; return the exit status."""
    try:
        log = JobLog(opts.file, "read")
    except JobLogError as exc:
        print(f"anypool joblog: {exc}", file=sys.stderr)
        return 255
    try:
        out = sys.stdout
        if opts.runs:
            _runs(log, out)
        elif opts.tsv:
            _tsv(log, out, opts.failed)
        else:
            _table(log, out, opts.failed)
        out.flush()
    except BrokenPipeError:
        pass
    except JobLogError as exc:  # damaged past its header: found as the reading reaches it
        sys.stdout.flush()
        print(f"anypool joblog: {exc}", file=sys.stderr)
        return 255
    finally:
        log.close()
    return 0


def _selected(log: JobLog, failed: bool, by_seq: bool) -> Iterator[JobRecord]:
    recs = log.records(by_seq=by_seq)
    if not failed:
        return recs
    bad = log.failed_seqs()
    return (r for r in recs if r.seq in bad)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


_WIDTHS = (6, 3, 23, 9, 4, 6, 15, 7)


def _table(log: JobLog, out: Any, failed: bool) -> None:
    def line(cells: tuple[str, ...]) -> None:
        padded = (c.ljust(w) for c, w in zip(cells, _WIDTHS, strict=False))
        out.write("  ".join(padded) + "  " + cells[-1] + "\n")

    line(("SEQ", "TRY", "STARTED", "RUNTIME", "EXIT", "SIGNAL", "OUTCOME", "WORKER", "COMMAND"))
    empty = True
    for r in _selected(log, failed, True):
        empty = False
        line((str(r.seq), str(r.attempt), _when(r.started), f"{r.runtime:.3f}",
              "" if r.exitcode is None else str(r.exitcode), "" if r.signal is None else str(r.signal),
              r.outcome + ("" if r.final or r.outcome == "killed" else " (retried)"), r.worker,
              _one_line(r.command)))
    if empty:
        out.write("(no attempts recorded)\n")


def _one_line(text: str) -> str:
    return text.replace("\n", "\\n").replace("\t", "\\t")


def _tsv(log: JobLog, out: Any, failed: bool) -> None:
    last: dict[int, JobRecord] = {}
    order: list[int] = []
    for r in _selected(log, failed, False):
        if r.seq not in last:
            order.append(r.seq)
        last[r.seq] = r
    out.write(TSV_HEADER + "\n")
    for seq in order:
        r = last[seq]
        if r.outcome in ("timeout", "killed"):
            exitval = -1
        elif r.exitcode is not None:
            exitval = r.exitcode
        else:
            exitval = 0 if r.outcome == "ok" or r.signal else 1
        received = len(r.stdout or b"") + len(r.stderr or b"")
        out.write(f"{r.seq}\t:\t{r.started:.3f}\t{r.runtime:10.3f}\t0\t{received}\t{exitval}\t"
                  f"{r.signal or 0}\t{_one_line(r.command)}\n")


def _runs(log: JobLog, out: Any) -> None:
    for run in log.runs():
        argv = " ".join(json.loads(run["argv"]))
        out.write(f"run {run['id']}  {_when(run['started'])}  {run['host']} pid {run['pid']}  "
                  f"anypool {run['version']}\n  {argv}\n  input: {run['input']}\n")
