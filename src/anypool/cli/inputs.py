"""Where the command line's arguments come from: ``:::`` lists, ``::::`` files, stdin.

Several sources combine as in GNU parallel: every combination, the first
source varying slowest (``::: a b ::: 1 2`` gives ``a 1``, ``a 2``, ``b 1``,
``b 2``).  The first source is streamed, one item at a time, so a file of
ten million lines (or a pipe that never ends) costs no memory; the sources
after it are read whole before the first job, as every combination needs
them again and again.

Items are one a line (``\\n`` removed), or separated by NUL with ``-0``.
They are read as bytes and decoded like file names (``os.fsdecode``), so
bytes that are not UTF-8 reach the commands unchanged.
"""

from __future__ import annotations

import io
import itertools
import os
import stat
import sys
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["SEPARATORS", "InputError", "Job", "Source", "jobs", "parse_sources", "total_jobs"]

SEPARATORS = (":::", "::::")
_LINKED = (":::+", "::::+")
_CHUNK = 65536


class InputError(Exception):
    """An input source cannot be read (the command line exits 255 with this message)."""


class Job:
    """One job: its number (from 1), its argument values, and the slot that ran it."""

    __slots__ = ("seq", "slot", "values")

    def __init__(self, seq: int, values: tuple[str, ...]) -> None:
        self.seq = seq
        self.values = values
        self.slot = 0

    @property
    def args_json(self) -> str:
        """The values as JSON text, the form the job log keeps (ASCII-safe)."""
        import json  # only with a job log: not worth ~3 ms of every start

        return json.dumps(list(self.values))

    def __repr__(self) -> str:
        return f"Job({self.seq}, {self.values!r})"


class Source:
    """One input source: a ``:::`` list, a ``::::`` file, or stdin."""

    def __init__(self, kind: str, values: list[str] | None = None, path: str | None = None) -> None:
        self.kind = kind  # ":::", "::::" or "stdin"
        self.values = values
        self.path = path
        self._file: IO[bytes] | None = None

    @property
    def length(self) -> int | None:
        """How many items, when known without reading (``:::`` lists)."""
        return len(self.values) if self.values is not None else None

    def describe(self) -> dict[str, Any]:
        """What kind of source this is, for ``--resume``'s check of the job log.

        Only the kind: the values themselves are checked job by job as the
        run resumes, so a longer input (more files since) can still resume.
        """
        if self.values is not None:
            return {"kind": ":::"}
        if self.path is not None:
            return {"kind": "::::"}
        return {"kind": "stdin"}

    def open(self) -> None:
        """Open a file source now, so a missing file stops the run before any job.

        Raises:
            InputError: the file cannot be opened.
        """
        if self.path is None or self._file is not None:
            return
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed when read to the end
        except OSError as exc:
            raise InputError(f"cannot read input file {self.path!r}: {exc.strerror or exc}") from exc

    def may_block(self) -> bool:
        """Whether reading may wait on a writer: stdin or a file that is a pipe, FIFO or terminal.

        Raises:
            InputError: the file cannot be opened.
        """
        if self.values is not None:
            return False
        try:
            if self.path is None:
                fd = sys.stdin.fileno() if sys.stdin is not None else -1
            else:
                self.open()
                assert self._file is not None
                fd = self._file.fileno()
            return fd >= 0 and not stat.S_ISREG(os.fstat(fd).st_mode)
        except (OSError, ValueError):  # no usable descriptor (a replaced sys.stdin): assume it may
            return True

    def items(self, sep: bytes) -> Iterator[str]:
        """The items, read lazily."""
        if self.values is not None:
            yield from self.values
            return
        if self.path is None:
            yield from _split(_stdin(), sep)
            return
        self.open()
        f = self._file
        assert f is not None
        try:
            yield from _split(f, sep)
        except OSError as exc:
            raise InputError(f"cannot read input file {self.path!r}: {exc.strerror or exc}") from exc
        finally:
            f.close()
            self._file = None


def _stdin() -> IO[bytes]:
    """A buffered reader of stdin's descriptor, not ``sys.stdin.buffer``.

    The engine may read stdin on a daemon thread that is still blocked in a
    read when the run stops early (Ctrl-C, ``--halt``); the interpreter's
    shutdown then closes ``sys.stdin.buffer``, finds its lock held, and
    aborts the process ("could not acquire lock ... at interpreter
    shutdown").  A reader of our own is not closed at shutdown.
    """
    if sys.stdin is None:
        return io.BytesIO()
    try:
        fd = sys.stdin.fileno()
    except (OSError, ValueError):  # a replaced sys.stdin with no descriptor
        return sys.stdin.buffer
    return open(fd, "rb", closefd=False)  # read to the end, or abandoned at exit


def _split(stream: IO[bytes], sep: bytes) -> Iterator[str]:
    decode = os.fsdecode
    if sep == b"\n":
        for line in stream:
            yield decode(line[:-1] if line.endswith(b"\n") else line)
        return
    rest = b""
    while True:
        chunk = stream.read(_CHUNK)
        if not chunk:
            break
        parts = (rest + chunk).split(sep)
        rest = parts.pop()
        for p in parts:
            yield decode(p)
    if rest:
        yield decode(rest)


def parse_sources(words: list[str], arg_files: list[str]) -> tuple[list[str], list[Source]]:
    """Split ``COMMAND... ::: a b :::: file`` into the command words and its sources.

    ``-a FILE`` options come first, as GNU parallel orders them.  With no
    source at all, items come from stdin.

    Raises:
        ValueError: a separator with nothing after it, or an unsupported one.
    """
    sources = [Source("::::", path=p) if p != "-" else Source("stdin") for p in arg_files]
    cut = next((i for i, w in enumerate(words) if w in SEPARATORS or w in _LINKED), len(words))
    command, rest = words[:cut], words[cut:]
    while rest:
        sep = rest[0]
        if sep in _LINKED:
            raise ValueError(f"linked input sources ({sep}) are not supported; combine the inputs first")
        end = next((i for i, w in enumerate(rest[1:], 1) if w in SEPARATORS or w in _LINKED), len(rest))
        group, rest = rest[1:end], rest[end:]
        if sep == ":::":
            sources.append(Source(":::", values=group))
        else:
            if not group:
                raise ValueError(":::: needs at least one file name after it")
            sources.extend(Source("stdin") if p == "-" else Source("::::", path=p) for p in group)
    if not sources:
        sources.append(Source("stdin"))
    return command, sources


def total_jobs(sources: list[Source]) -> int | None:
    """The number of jobs, when every source's length is known."""
    total = 1
    for s in sources:
        if s.length is None:
            return None
        total *= s.length
    return total


def jobs(sources: list[Source], sep: bytes = b"\n", first_seq: int = 1) -> Iterator[Job]:
    """Every combination of the sources' items as numbered jobs (see the module docstring)."""
    for s in sources:
        s.open()
    head, tail = sources[0], sources[1:]
    rest = [list(s.items(sep)) for s in tail]
    seq = first_seq
    if not tail:
        for v in head.items(sep):
            yield Job(seq, (v,))
            seq += 1
        return
    if any(not r for r in rest):
        return
    for v in head.items(sep):
        for combo in itertools.product(*rest):
            yield Job(seq, (v, *combo))
            seq += 1
