"""Printing jobs' output: whole per job (``--group``) or line by line (``--line-buffer``).

With ``--group`` (the default) a job's stdout, then its stderr, are written
whole when the job ends, from one thread, so two jobs' output never mix.
With ``--line-buffer`` lines are written as the jobs produce them, from the
slot threads, each line whole (under one lock).  ``--tag`` starts every
line with the job's arguments and a tab.  Whole-job output is flushed
whenever the run waits for a job and before a job is recorded in the job log
(so what the log calls done was really printed); lines are flushed each.

A closed stdout or stderr (``| head``) raises ``BrokenPipeError`` in the
thread that prints whole jobs, which stops the run.  A slot thread that
meets it while printing a line must not raise (that would fail the job
whose line it is): it marks the printer ``broken``, calls ``on_broken``, and
the next :meth:`flush` raises in the printing thread instead.

While a progress bar is shown, writes go around it (tqdm clears and
redraws it), so output lines never land inside the bar.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

from .inputs import Job

__all__ = ["Printer", "tagged", "write_all"]


def tagged(data: bytes, prefix: bytes) -> bytes:
    """``data`` with ``prefix`` before each of its lines."""
    if not prefix or not data:
        return data
    lines = data.split(b"\n")
    last = lines.pop()
    out = b"".join(prefix + line + b"\n" for line in lines)
    return out + prefix + last if last else out


def write_all(stream: IO[bytes], data: bytes) -> None:
    """Write all of ``data``.

    A buffered write that meets a closed pipe partway returns a short count
    instead of raising; the rest is then written, so the error surfaces here
    and a job whose output was cut short is never recorded as printed.

    Raises:
        BrokenPipeError: the stream was closed.
    """
    view = memoryview(data)
    while view:
        n = stream.write(view)
        if not n:
            raise BrokenPipeError("the output takes no more data")
        view = view[n:]


class Printer:
    """Writes jobs' output to this process's stdout and stderr."""

    def __init__(self, tag: bool = False, bar: bool = False,
                 stdout: IO[bytes] | None = None, stderr: IO[bytes] | None = None) -> None:
        self.tag = tag
        self.bar = bar
        self.out = stdout or sys.stdout.buffer
        self.err = stderr or sys.stderr.buffer
        self._lock = threading.Lock()
        self.broken = False  # a line met a closed stdout or stderr (see the module docstring)
        self.on_broken: Callable[[], None] | None = None

    def prefix(self, job: Job) -> bytes:
        """The ``--tag`` prefix for ``job`` (empty without ``--tag``)."""
        if not self.tag:
            return b""
        return os.fsencode("\t".join(job.values)) + b"\t"

    @contextlib.contextmanager
    def _around_bar(self) -> Iterator[None]:
        if not self.bar:
            yield
            return
        from tqdm import tqdm

        with tqdm.external_write_mode(file=sys.stderr):
            yield

    def job(self, job: Job, stdout: bytes, stderr: bytes) -> None:
        """Print one finished job's output (``--group``)."""
        if not stdout and not stderr:
            return
        prefix = self.prefix(job)
        with self._lock, self._around_bar():
            if stdout:
                write_all(self.out, tagged(stdout, prefix))
            if stderr:
                self.out.flush()  # what a job printed to stdout shows before its stderr
                write_all(self.err, tagged(stderr, prefix))
                self.err.flush()

    def write(self, data: bytes) -> None:
        """Write bytes of anypool's own results to stdout (flushed by :meth:`flush`)."""
        with self._lock, self._around_bar():
            write_all(self.out, data)

    def flush(self) -> None:
        """Push out everything written so far.

        Raises:
            BrokenPipeError: stdout is closed, or a line found it (or stderr) closed.
        """
        with self._lock:
            if self.broken:
                raise BrokenPipeError("a job's line met a closed output")
            self.out.flush()

    def discard(self) -> None:
        """Send whatever comes next on stdout to /dev/null (it was closed: the run is stopping).

        /dev/null takes the stream's descriptor, so what its buffer still
        holds is flushed there too, not met again at exit as a closed pipe.
        """
        with self._lock:
            try:
                fd = os.open(os.devnull, os.O_WRONLY)
                os.dup2(fd, self.out.fileno())
                os.close(fd)
            except (OSError, ValueError):  # no descriptor of its own
                self.out = open(os.devnull, "wb")  # noqa: SIM115 - lives until exit
            self.broken = False

    def line(self, args: tuple[Any, ...], stream: int, data: bytes) -> None:
        """Print one line as it comes (``--line-buffer``; called from slot threads)."""
        job = args[-1] if args and isinstance(args[-1], Job) else None
        prefix = self.prefix(job) if job is not None else b""
        target = self.out if stream == 1 else self.err
        with self._lock:
            if self.broken:
                return
            try:
                with self._around_bar():
                    write_all(target, prefix + data)
                    target.flush()
            except BrokenPipeError:
                self.broken = True
            else:
                return
        if self.on_broken is not None:
            self.on_broken()

    def message(self, text: str) -> None:
        """A message of anypool's own, on stderr."""
        with self._lock, self._around_bar():
            self.err.write(os.fsencode(text.rstrip("\n") + "\n"))
            self.err.flush()
