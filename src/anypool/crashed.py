"""``WorkerCrashed``: a task's worker died; in its own module so ``multiprocessing`` loads only when needed.

Its standard-library base, ``BrokenProcessPool``, lives in
``concurrent.futures.process``, whose import pulls in ``multiprocessing``.
``anypool.errors`` makes this module load on first use of the name.
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool

from .errors import AnypoolError

__all__ = ["WorkerCrashed"]


class WorkerCrashed(AnypoolError, BrokenProcessPool):
    """The worker running a task died before the task finished.

    ``exitcode`` is the worker's exit status (negative: killed by that
    signal), ``pid`` its process id.  Unlike the standard library's
    ``BrokenProcessPool`` (which this subclasses, so old ``except`` clauses
    still match), only the task that was running fails: the worker is
    replaced and the pool goes on.
    """

    def __init__(self, message: str, exitcode: int | None = None, pid: int | None = None) -> None:
        super().__init__(message, exitcode, pid)
        self.exitcode = exitcode
        self.pid = pid

    def __str__(self) -> str:
        return str(self.args[0])


WorkerCrashed.__module__ = "anypool"  # where users import it from (see anypool/__init__.py)
