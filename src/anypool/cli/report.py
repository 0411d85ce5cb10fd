"""``anypool report JOBLOG -o run.html``: the timeline report of a run, drawn from its job log."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..observers.joblog import JobLog, JobLogError

__all__ = ["configure", "main"]

DESCRIPTION = """\
Write one self-contained HTML file (no network needed to open it) showing a
run recorded in a job log: a timeline with one lane per worker and one bar
per attempt coloured by outcome (hover for the command, times and error),
a histogram of run times, and how busy each worker was.  Long runs are drawn
from a sample of the attempts (every failure kept); the page says so.
"""

EPILOG = """\
examples:
  anypool run --joblog jobs.db './step.sh {}' :::: inputs.txt
  anypool report jobs.db -o run.html
  anypool map --joblog calls.db mymodule:crunch ::: 1 2 3 && anypool report calls.db

exit status: 0; 2 usage error; 255 when JOBLOG is missing, not a job log,
damaged, or the report cannot be written.
"""


def configure(sub: Any) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to the top-level parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "report", help="write an HTML timeline of a run from its job log",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("joblog", metavar="JOBLOG", help="a job log written by --joblog")
    p.add_argument("-o", "--output", metavar="FILE", default=None,
                   help="the HTML file to write (default: JOBLOG with .html instead of its extension)")
    p.add_argument("--title", default=None, help="the page's title (default: the job log's name)")
    p.set_defaults(handler=main, parser=p)
    return p


def main(opts: argparse.Namespace) -> int:
    """Write the report; print where it is; return the exit status."""
    try:
        log = JobLog(opts.joblog, "read")
        try:
            rows = log.rows()
        finally:
            log.close()
    except JobLogError as exc:
        print(f"anypool report: {exc}", file=sys.stderr)
        return 255
    output = opts.output or os.path.splitext(opts.joblog)[0] + ".html"
    title = opts.title or f"anypool run: {os.path.basename(opts.joblog)}"
    try:
        # the report renderer is imported here, not with the CLI: every
        # `anypool run` builds this subcommand's parser and would pay for it
        from ..observers.report import write_report

        path = write_report(output, rows, title=title)
    except OSError as exc:
        print(f"anypool report: cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
        return 255
    print(f"anypool report: {len(rows)} attempts drawn in {path}")
    return 0
