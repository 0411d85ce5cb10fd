"""The ``anypool`` command line: ``run`` (shell commands), ``map`` (Python functions), ``joblog``, ``report``.

A thin layer over the public library: each subcommand builds a
:class:`anypool.Pool` and feeds it (``engine.py``); inputs, templates,
``--halt`` and output live in their own modules.  ``main`` returns the exit
status; usage errors exit 2 through argparse with a message saying what to
change.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main"]

DESCRIPTION = """\
Run work concurrently: shell commands over many inputs (a faster, safer GNU
parallel with a job log that survives kill -9), or a Python function over
many inputs on threads, processes, coroutines or a Dask cluster.
"""

EPILOG = """\
examples:
  anypool run gzip -9 ::: *.log
  find . -name '*.jpg' | anypool run -j 200% 'convert {} {.}.png'
  anypool run --joblog jobs.db --resume ./step.sh :::: inputs.txt
  anypool map json:loads ::: '[1, 2]' '{"a": 1}'
  anypool map --backend process mymodule:crunch :::: numbers.txt
  anypool joblog jobs.db
  anypool report jobs.db -o run.html

Each subcommand has its own help: anypool run --help, anypool map --help,
anypool joblog --help, anypool report --help.
"""


COMMANDS = ("run", "map", "joblog", "report")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser with its subcommands, or with subcommand ``only`` alone.

    Building one subcommand imports only its module: ``anypool run`` then
    never imports what ``map`` needs (``inspect``, ~7 ms of each start).
    """
    import importlib

    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="anypool", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"anypool {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", dest="subcommand")
    for name in COMMANDS if only is None else (only,):
        importlib.import_module(f"{__name__}.{name}").configure(sub)
    return parser


def _open_closed_std_streams() -> None:
    """Open /dev/null on stdin, stdout or stderr where the caller closed it (``>&-``, ``2>&-``).

    As GNU parallel, the run then goes on and what would have gone there is
    dropped.  Left closed, the descriptor would be the next one a file opens
    on: the job log's database would then receive the jobs' output.
    """
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        new = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
        if new != fd:  # a lower descriptor was closed too, and took it (it is fixed in its turn)
            os.dup2(new, fd)
            os.close(new)
        stream = open(fd, "r" if fd == 0 else "w", closefd=False,  # noqa: SIM115 - lives until exit
                      errors="backslashreplace" if fd == 2 else "strict", buffering=1 if fd == 2 else -1)
        setattr(sys, name, stream)


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    _open_closed_std_streams()
    args = sys.argv[1:] if argv is None else argv
    parser = build_parser(args[0] if args and args[0] in COMMANDS else None)
    opts, extra = parser.parse_known_args(args)
    if opts.subcommand is None:
        parser.print_help(sys.stderr)
        return 2
    if extra:
        opts.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(opts.handler(opts))
    except KeyboardInterrupt:  # outside a run (reading input, --dry-run): nothing to stop
        return 130
    except BrokenPipeError:  # stdout closed early (| head)
        try:
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
