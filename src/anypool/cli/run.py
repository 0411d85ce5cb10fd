"""``anypool run``: a shell command over many inputs, the way GNU parallel runs it."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..backends.base import default_workers
from ..commands import CommandResult
from ..errors import AnypoolError
from ..observers.joblog import JobLog, JobLogError, command_of
from ..observers.progress import visible as progress_visible
from ..pool import Pool
from .engine import Engine, Resumer, used_for_a_run
from .inputs import InputError, Job, jobs, parse_sources, total_jobs
from .options import add_common, check_common
from .output import Printer
from .template import Template, TemplateError

__all__ = ["configure", "main"]

DESCRIPTION = """\
Run COMMAND once for every argument, several at a time, each job in its own
process group, printing each job's output whole when it ends.

Arguments come after ::: on the command line, from files after :::: (or -a),
or one a line from stdin when neither is given.  Several ::: / :::: groups
combine: every combination is one job (the first group varies slowest).

In COMMAND, these are replaced by each job's values, quoted for the shell:

  {}      the argument (all of them, space-separated, with several groups)
  {1} {2} the argument from the first, second... group
  {.}     without its extension       {/}   its base name
  {//}    its directory               {/.}  base name without extension
  {#}     the job number              {%}   the job slot (1..-j)

(the forms {1.} {1/} {1//} {1/.} apply to one group).  With none of them,
the arguments are appended to COMMAND.  Every substituted value is quoted,
so arguments with spaces, quotes, ; | $(...) or backquotes reach the command
as they are and are never run as shell code (even a COMMAND that starts with
{}: stricter than GNU parallel).  COMMAND's words are joined with spaces and
read by /bin/sh; quote the whole command to keep its own quoting intact.
A COMMAND with no shell syntax at all is run without starting a shell.
"""

EPILOG = """\
examples:
  anypool run gzip -9 ::: *.log                 compress every log, one job per CPU
  anypool run -j 8 'convert {} {.}.png' ::: *.jpg
  find . -name '*.csv' | anypool run -k wc -l   arguments from stdin, output in order
  anypool run 'echo {1} {2}' ::: a b ::: 1 2    a 1, a 2, b 1, b 2
  anypool run --timeout 60 --retries 2 ./fetch.sh :::: urls.txt
  anypool run --joblog jobs.db ./step.sh :::: inputs.txt
  anypool run --joblog jobs.db --resume ./step.sh :::: inputs.txt   after a crash or Ctrl-C
  anypool run --halt now,fail=1 make -C ::: lib app tests
  anypool run --no-shell printf '%s\\n' {} ::: 'no shell reads this; $(x)'
  anypool run --dry-run 'mv {} {//}/old-{/}' ::: a/1 b/2          print, do not run

job log and resuming:
  --joblog FILE records every attempt in an SQLite database as it ends (see
  anypool joblog FILE).  After a crash, kill -9 or Ctrl-C, run the same command
  with --resume: the jobs already done are skipped (--resume-failed also runs
  the failed ones again).  Jobs that were running when the run stopped are run
  again, so a job may run twice: make jobs safe to repeat.  --resume refuses a
  log written for another command or other input.

exit status:
  0 all jobs succeeded; 1-100 that many jobs failed; 101 more than 100 failed;
  after --halt ...,fail=1 the failing job's status (128+N if signal N killed
  it); 2 usage error; 255 other
  error (unreadable input, unusable job log); 130 Ctrl-C (128+N for signal N).
"""


def configure(sub: Any) -> argparse.ArgumentParser:
    """Add the ``run`` subcommand to the top-level parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "run", help="run a shell command over many inputs (like GNU parallel)",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_common(p, default_backend="subprocess")
    r = p.add_argument_group("commands")
    r.add_argument("-k", "--keep-order", action="store_true",
                   help="print output in input order (default: in the order jobs finish)")
    r.add_argument("--no-shell", action="store_true",
                   help="run COMMAND as an argv, without any shell (each word is one argument)")
    r.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    r.add_argument("--tag", action="store_true",
                   help="start each output line with the job's arguments and a tab")
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--group", dest="line_buffer", action="store_false",
                      help="print each job's output whole when it ends (the default)")
    mode.add_argument("--line-buffer", dest="line_buffer", action="store_true",
                      help="print output line by line as jobs produce it (whole lines, never mixed)")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND ...",
                   help="the command template, then ::: ARGS... or :::: FILES... groups")
    p.set_defaults(handler=main, parser=p, line_buffer=False)
    return p


def _remote(command: Any, timeout: float | None, job: Job) -> CommandResult:
    """A job sent to a backend other than ``subprocess``: run it where the task runs."""
    from ..backends.subprocesses import run_command

    return run_command(command, timeout=timeout)


class RunEngine(Engine):
    """Runs command jobs (see :class:`~anypool.cli.engine.Engine`)."""

    def __init__(self, pool: Pool, printer: Printer, template: Template, opts: argparse.Namespace,
                 **kw: Any) -> None:
        super().__init__(pool, printer, **kw)
        self.template = template
        self.local = opts.backend == "subprocess"
        self.line_buffer = opts.line_buffer
        self.timeout = opts.timeout

    def submit(self, job: Job) -> Any:
        if self.local:
            return self.pool.submit(self.template, job)
        command: Any = self.template.command(job) if self.template.shell else self.template.argv(job)
        return self.pool.submit(_remote, command, self.timeout, job)

    def show(self, job: Job, value: Any, exc: BaseException | None) -> None:
        cr = command_of(value if exc is None else exc)
        if cr is not None:
            if not self.line_buffer or not self.local or not cr.pid:
                self.printer.job(job, cr.stdout, cr.stderr)
        elif exc is not None:
            command = _shortened(self.template.command(job, job.slot))
            self.printer.message(f"anypool: job {job.seq} ({command}) failed: {type(exc).__name__}: "
                                 f"{_shortened(str(exc))}")

    def command_text(self, job: Job, value: Any, exc: BaseException | None) -> str:
        cr = command_of(value if exc is None else exc)
        return cr.command if cr is not None else self.template.command(job, job.slot)

    def kill_local(self) -> None:
        if not self.local:
            # a thread backend cannot stop its tasks, and their commands run in
            # this process: stop those (in worker processes, the pool's kill does)
            from ..backends.subprocesses import kill_commands

            kill_commands()


MESSAGE_TEXT = 200  # characters of a command or error quoted in a message


def _shortened(text: str) -> str:
    """``text`` cut to about MESSAGE_TEXT characters: a command too long to run (E2BIG) may be ~200 KB."""
    if len(text) <= MESSAGE_TEXT:
        return text
    return f"{text[:MESSAGE_TEXT]}... ({len(text) - MESSAGE_TEXT} more characters)"


def main(opts: argparse.Namespace) -> int:
    """Run ``anypool run`` with parsed options; return the exit status."""
    parser: argparse.ArgumentParser = opts.parser
    check_common(parser, opts)
    command = opts.command
    if command and command[0] == "--":  # argparse's REMAINDER keeps the `--` that ends the options
        command = command[1:]
    try:
        words, sources = parse_sources(command, opts.arg_file)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        template = Template(words, len(sources), shell=not opts.no_shell)
    except TemplateError as exc:
        parser.error(str(exc))
    if opts.backend != "subprocess" and template.uses_slot:
        parser.error("{%} (the job slot) needs --backend subprocess")
    if opts.line_buffer and opts.backend != "subprocess":
        parser.error("--line-buffer needs --backend subprocess")
    if opts.line_buffer and opts.keep_order:
        # lines are printed as the jobs write them, from their threads: no order to keep
        parser.error("-k (--keep-order) and --line-buffer do not go together: --line-buffer prints "
                     "lines as jobs produce them; use -k alone for each job's output whole, in input order")
    workers = opts.jobs or default_workers()
    sep = b"\0" if opts.null else b"\n"
    description = {**template.description(), "sources": [s.describe() for s in sources],
                   "separator": "NUL" if opts.null else "newline"}
    joblog = None
    try:
        stream = jobs(sources, sep)
        resuming = opts.resume or opts.resume_failed
        if opts.joblog and opts.dry_run:
            # a dry run changes nothing: it only reads the log, to skip what --resume would
            if resuming and os.path.exists(opts.joblog):
                joblog = JobLog(opts.joblog, "read")
                joblog.check_resumable(description)
        elif opts.joblog:
            joblog = JobLog(opts.joblog, "append" if resuming else "new", results=opts.results)
            joblog.begin_run(description, resume=resuming, argv=sys.argv)
        resumer = Resumer(joblog, opts.resume_failed) if joblog and resuming else None
        if opts.dry_run:
            return _dry_run(template, stream, resumer, workers)
        return _execute(opts, template, stream, sources, joblog, resumer, workers)
    except BrokenPipeError:
        raise  # stdout closed: main() ends quietly
    except (InputError, JobLogError, AnypoolError, OSError) as exc:
        print(f"anypool run: {exc}", file=sys.stderr)
        return 255
    except ValueError as exc:  # the input does not match the job log (--resume)
        print(f"anypool run: {exc}", file=sys.stderr)
        return 255
    finally:
        if joblog is not None:
            joblog.close()


def _dry_run(template: Template, stream: Any, resumer: Resumer | None, workers: int) -> int:
    out = sys.stdout
    for job in stream:
        if resumer is not None and resumer.skip(job):
            continue
        out.write(template.command(job, (job.seq - 1) % workers + 1) + "\n")
    out.flush()
    return 0


def _execute(opts: argparse.Namespace, template: Template, stream: Any, sources: Any,
             joblog: JobLog | None, resumer: Resumer | None, workers: int) -> int:
    bar = opts.bar if opts.bar is not None else progress_visible()
    printer = Printer(tag=opts.tag, bar=bar)
    local = opts.backend == "subprocess"
    pool_opts: dict[str, Any] = {"retries": opts.retries, "backoff": 0.0}
    if local:
        pool_opts["timeout"] = opts.timeout
        if opts.line_buffer:
            pool_opts["on_output"] = printer.line
    if opts.address:
        pool_opts["address"] = opts.address
    total = total_jobs(sources)
    with used_for_a_run(Pool(opts.backend, workers, **pool_opts)) as pool:
        engine = RunEngine(pool, printer, template, opts, joblog=joblog, halt=opts.halt,
                           keep_order=opts.keep_order, window=4 * workers + 16, total=total,
                           read_ahead=sources[0].may_block())
        if resumer is not None:
            engine.attempt_base = resumer.bases
        progress = _progress(pool, bar, total, resumer)
        try:
            return engine.run(stream, resumer.skip if resumer is not None else None)
        finally:
            if progress is not None:
                progress.close()


def _progress(pool: Pool, bar: bool, total: int | None, resumer: Resumer | None) -> Any:
    if not bar:
        return None
    from ..observers.progress import Progress

    if total is not None and resumer is not None:
        total = None  # how many are skipped is known only as the input is read
    return Progress(pool, total=total, desc="anypool")
