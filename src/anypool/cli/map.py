"""``anypool map``: a Python function over many inputs, one JSON result a line."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import IO, Any

from ..backends.base import default_workers
from ..errors import AnypoolError, TaskTimeout, exception_text
from ..observers.joblog import JobLog, JobLogError, result_output
from ..observers.progress import visible as progress_visible
from ..pool import Pool
from .engine import Engine, used_for_a_run
from .inputs import InputError, Job, jobs, parse_sources, total_jobs
from .options import add_common, check_common
from .output import Printer

__all__ = ["configure", "load_function", "main"]

DESCRIPTION = """\
Call FUNCTION once for every input and print one JSON value a line: the
result, or for a failed call an object {"error": TYPE, "message": TEXT,
"input": [ARGS]}.  Results are printed in input order (--unordered: as they
finish).

Options go before FUNCTION: every word after it is an input.

FUNCTION is MODULE:NAME (NAME may be dotted: MODULE:Class.method); MODULE is
imported with the current directory on sys.path.  Inputs come as for anypool
run: words after FUNCTION, ::: groups (several groups give each call one
argument from each), :::: files, or lines of stdin.  Each argument is a
string; --json-args parses each one as JSON first.  Coroutine functions run
on the async backend under --backend auto.

Values JSON cannot hold are printed as their repr() string (NaN and the
infinities too: "nan", "inf", "-inf"; dict keys other than strings, numbers,
booleans and null; a list inside itself as "[...]"), an int too long for
str() in hexadecimal, so every line is strict JSON, in UTF-8.  What FUNCTION
itself writes to stdout (print, programs it starts) goes to stderr.  With --joblog
every call is recorded as it ends (with --results, its JSON result too);
anypool map has no --resume.
"""

EPILOG = """\
examples:
  anypool map json:loads ::: '[1, 2]' '{"a": 1}'
  anypool map --json-args math:factorial ::: 10 20 30
  anypool map --json-args operator:add ::: 1 2 ::: 10 20        add(1, 10), add(1, 20), ...
  anypool map --backend process -j 4 mymodule:crunch :::: numbers.txt
  seq 100 | anypool map --json-args --backend thread --timeout 5 --retries 2 mymodule:fetch
  anypool map --backend dask --address tcp://10.0.0.5:8786 mymodule:crunch :::: inputs.txt

exit status:
  0 every call succeeded; 1-100 that many failed; 101 more than 100 failed;
  2 usage error (including a FUNCTION that cannot be imported); 255 other
  error; 130 Ctrl-C.
"""


def configure(sub: Any) -> argparse.ArgumentParser:
    """Add the ``map`` subcommand to the top-level parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "map", help="call a Python function over many inputs, printing JSON results",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_common(p, default_backend="auto", resume=False)
    m = p.add_argument_group("results")
    m.add_argument("--json-args", action="store_true", help="parse every argument as JSON")
    m.add_argument("--unordered", action="store_true", help="print results as they finish")
    m.add_argument("--tag", action="store_true",
                   help='print {"input": [ARGS], "result": VALUE} objects instead of bare results')
    p.add_argument("function", metavar="MODULE:FUNCTION", help="the function to call")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS ...",
                   help="arguments, ::: ARGS... or :::: FILES... groups; none: lines of stdin")
    p.set_defaults(handler=main, parser=p)
    return p


def load_function(spec: str) -> Callable[..., Any]:
    """Import ``MODULE:NAME``.

    Raises:
        ValueError: the spec is malformed, the module or name is missing,
            the module fails on import, or the object is not callable (the
            message says which).
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{spec!r} is not MODULE:FUNCTION (for example json:loads)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from exc
    except Exception as exc:  # the module itself fails (SyntaxError, an error at import time)
        raise ValueError(f"cannot import module {module_name!r}: {_failure(exc)}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ValueError(f"{spec} is a {type(obj).__name__}, not a function")
    return obj  # type: ignore[no-any-return]


def _failure(exc: BaseException) -> str:
    """``exc`` as ``Type: message``, with where it was raised (a SyntaxError's text says it)."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SyntaxError):
        return text
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    return f"{text} (at {frames[-1].filename}, line {frames[-1].lineno})" if frames else text


def _call(fn: Callable[..., Any], job: Job) -> Any:
    """A map task: the function applied to the job's values (the job travels for the job log)."""
    return fn(*job.values)


async def _acall(fn: Callable[..., Any], job: Job) -> Any:
    """``_call`` for coroutine functions."""
    return await fn(*job.values)


class MapEngine(Engine):
    """Runs function calls (see :class:`~anypool.cli.engine.Engine`)."""

    kills_every_job = False  # a call on a thread runs on: it is abandoned

    def __init__(self, pool: Pool, printer: Printer, fn: Callable[..., Any], spec: str, tag: bool,
                 **kw: Any) -> None:
        super().__init__(pool, printer, record_finals_in_observer=True, **kw)
        self.fn = fn
        self.spec = spec
        self.tag = tag
        self.call = _acall if inspect.iscoroutinefunction(fn) else _call

    def submit(self, job: Job) -> Any:
        return self.pool.submit(self.call, self.fn, job)

    def show(self, job: Job, value: Any, exc: BaseException | None) -> None:
        if exc is not None:
            line = result_output({"error": type(exc).__name__, "message": exception_text(exc),
                               "input": list(job.values)})
        elif self.tag:
            line = result_output({"input": list(job.values), "result": value})
        else:
            line = result_output(value)
        self.printer.write(line + b"\n")

    def command_text(self, job: Job, value: Any, exc: BaseException | None) -> str:
        return self.spec

    def failure(self, job: Job, exc: BaseException) -> BaseException:
        if isinstance(exc, TaskTimeout):  # it names the task's function: _call, not the user's
            named = TaskTimeout(exc.seconds, f"#{job.seq} {self.spec}", exc.stopped)
            named.__cause__ = exc.__cause__
            return named
        return exc


def _results_stream() -> IO[bytes]:
    """Keep stdout for the results: whatever else this process writes there goes to stderr.

    The function's own output (``print``, ``os.write(1, ...)``, programs it
    starts) would land between the JSON lines.  So descriptor 1 becomes a
    copy of stderr, for the rest of the process, and for the worker
    processes started after this, which inherit it; the results go to the
    original stdout, on a descriptor of their own, which is returned.

    Raises:
        OSError: a descriptor could not be duplicated.
    """
    sys.stdout.flush()
    fd = os.dup(1)
    os.dup2(2, 1)
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:  # now stderr: printed as it comes, as stderr is
        reconfigure(line_buffering=True)
    return open(fd, "wb")


def _parsed(stream: Iterator[Job]) -> Iterator[Job]:
    for job in stream:
        try:
            job.values = tuple(json.loads(v) for v in job.values)
        except ValueError as exc:
            raise InputError(f"input {job.seq} is not JSON ({exc}): {job.values!r}") from None
        yield job


def main(opts: argparse.Namespace) -> int:
    """Run ``anypool map`` with parsed options; return the exit status."""
    parser: argparse.ArgumentParser = opts.parser
    check_common(parser, opts)
    try:
        fn = load_function(opts.function)
    except ValueError as exc:
        parser.error(str(exc))
    args = opts.args
    if args and args[0] not in (":::", "::::"):
        args = [":::", *args]
    try:
        _, sources = parse_sources(args, opts.arg_file)
    except ValueError as exc:
        parser.error(str(exc))
    workers = opts.jobs
    sep = b"\0" if opts.null else b"\n"
    joblog = None
    try:
        stream = jobs(sources, sep)
        if opts.json_args:
            stream = _parsed(stream)
        if opts.joblog:
            joblog = JobLog(opts.joblog, "new", results=opts.results)
            joblog.begin_run({"function": opts.function, "sources": [s.describe() for s in sources]},
                             argv=sys.argv)
        bar = opts.bar if opts.bar is not None else progress_visible()
        printer = Printer(bar=bar, stdout=_results_stream())
        pool_opts: dict[str, Any] = {"retries": opts.retries, "backoff": 0.0, "timeout": opts.timeout}
        if opts.address:
            pool_opts["address"] = opts.address
        with used_for_a_run(Pool(opts.backend, workers, **pool_opts)) as pool:
            engine = MapEngine(pool, printer, fn, opts.function, opts.tag, joblog=joblog, halt=opts.halt,
                               keep_order=not opts.unordered,
                               window=4 * (workers or default_workers()) + 64, total=total_jobs(sources),
                               read_ahead=sources[0].may_block())
            progress = None
            if bar:
                from ..observers.progress import Progress

                progress = Progress(pool, total=total_jobs(sources), desc="anypool")
            try:
                return engine.run(stream)
            finally:
                if progress is not None:
                    progress.close()
    except BrokenPipeError:
        raise  # stdout closed: main() ends quietly
    except (InputError, JobLogError, AnypoolError, OSError) as exc:
        print(f"anypool map: {exc}", file=sys.stderr)
        return 255
    finally:
        if joblog is not None:
            joblog.close()
