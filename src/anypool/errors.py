"""The errors anypool raises.

Each class extends the exception a user of the standard library would already
catch for the same situation, so code written for ``concurrent.futures`` keeps
working::

    AnypoolError(Exception)
    ├── TaskError                       a task failed; its own exception could not be rebuilt
    ├── TaskTimeout(TimeoutError)       a task ran past its ``timeout=`` (stopped or abandoned)
    ├── WorkerCrashed(BrokenProcessPool) the worker running a task died (signal, exit, segfault)
    ├── SerializationError(TypeError)   a callable, argument or result could not be pickled
    ├── CommandFailed(CalledProcessError) a shell command exited non-zero or was killed
    ├── PoolClosed(RuntimeError)        submit after shutdown, or the task was killed by it
    ├── MainNotGuarded(RuntimeError)    a worker importing the main module was to start a pool's processes
    ├── BrokenPool(BrokenExecutor)      the pool cannot run anything any more
    │   └── InitializerFailed           because a worker initializer raised
    └── BackendUnavailable(LookupError) unknown backend name, or its extra is not installed

A task's *own* exception (``ValueError`` from inside the task, say) is raised
as itself, not wrapped: ``except ValueError`` keeps working.  The worker's
traceback text is chained as ``__cause__`` and a note names the task, the
worker and the attempt.  ``TaskError`` stands in only when the original cannot
be sent back (an unpicklable exception).

Every class survives pickling, so errors cross process boundaries intact.

``WorkerCrashed`` lives in :mod:`anypool.crashed` and is made on first use:
its standard-library base, ``BrokenProcessPool``, comes with
``multiprocessing`` (~20 ms to import), which threads, coroutines and shell
commands never need.  ``anypool.WorkerCrashed`` and
``anypool.errors.WorkerCrashed`` both find it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from concurrent.futures import BrokenExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .crashed import WorkerCrashed

__all__ = [
    "AnypoolError",
    "BackendUnavailable",
    "BrokenPool",
    "CommandFailed",
    "InitializerFailed",
    "MainNotGuarded",
    "PoolClosed",
    "SerializationError",
    "TaskError",
    "TaskTimeout",
    "WorkerCrashed",
    "describe_exit",
    "exception_line",
    "exception_text",
    "is_worker_crash",
]


class AnypoolError(Exception):
    """Base class of every error anypool raises itself."""


class TaskError(AnypoolError):
    """A task failed and its own exception could not be rebuilt in the caller.

    Raised instead of the original when the worker's exception could not be
    pickled or unpickled.  ``type_name``, ``message`` and ``traceback`` hold
    what could be saved of it as text.
    """

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(type_name, message, traceback)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name


class TaskTimeout(AnypoolError, TimeoutError):
    """A task ran longer than its ``timeout=``: it was stopped, or abandoned where it cannot be.

    On the process backends the worker running it was killed (and replaced);
    on ``async`` the coroutine was cancelled.  On ``thread`` and ``dask`` a
    running call cannot be stopped: the future fails on time, but the call
    runs on in its thread (on ``dask``, its worker's thread) until it
    returns, its result discarded; ``stopped`` is then False and the message
    says so.  Not to be confused with the builtin ``TimeoutError`` that
    ``Future.result(timeout=)`` raises when only the *wait* ran out: that
    task is still running.

    Attributes:
        seconds: the timeout it ran past.
        task: the task's label (``#3 fetch``), or empty.
        stopped: True if the call was stopped, False if it was abandoned
            and runs on.
    """

    def __init__(self, seconds: float, task: str = "", stopped: bool = True) -> None:
        super().__init__(seconds, task)
        self.seconds = seconds
        self.task = task
        self.stopped = stopped

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.seconds, self.task, self.stopped), self.__dict__)

    def __str__(self) -> str:
        what = f"task {self.task}" if self.task else "task"
        if self.stopped:
            return f"{what} ran past its timeout of {self.seconds:g} s and was stopped"
        return (f"{what} ran past its timeout of {self.seconds:g} s and was abandoned: a running call "
                "cannot be stopped here, so it runs on until it returns, its result discarded")


class SerializationError(AnypoolError, TypeError):
    """A callable, an argument or a result could not be pickled for a worker process.

    Raised by ``submit`` in the caller (so no worker is wasted) with a message
    naming the object that failed; a result that cannot be sent back fails its
    task with this error.
    """


class CommandFailed(AnypoolError, subprocess.CalledProcessError):
    """A shell command exited with a non-zero status or was killed by a signal.

    ``returncode``, ``cmd``, ``stdout`` and ``stderr`` are those of
    ``subprocess.CalledProcessError``; ``result`` is the full
    :class:`anypool.CommandResult`.
    """

    def __init__(self, result: Any) -> None:
        subprocess.CalledProcessError.__init__(
            self, result.returncode, result.args, result.stdout, result.stderr
        )
        self.result = result

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.result,))

    def __str__(self) -> str:
        return f"command {self.result.command!r} {describe_exit(self.returncode)}"


class PoolClosed(AnypoolError, RuntimeError):
    """The pool was shut down: it takes no new tasks, or it killed this one."""


class MainNotGuarded(AnypoolError, RuntimeError):
    """A pool started processes while this process, a worker, imported the main module.

    Workers from the fork server or ``spawn`` import the main module first;
    a script that runs its pool outside ``if __name__ == "__main__":``
    would run one in each of them.  The message names the line.
    """


class BrokenPool(AnypoolError, BrokenExecutor):
    """The pool can no longer run tasks; pending and new tasks fail with this."""


class InitializerFailed(BrokenPool):
    """A worker ``initializer`` raised, so no worker can be trusted to run tasks.

    The pool does not keep restarting workers that would fail the same way:
    it reports the failure once, as this error (with the initializer's own
    exception as ``__cause__``), for every pending and later task.
    """


class BackendUnavailable(AnypoolError, LookupError):
    """The backend name is unknown, or the package it needs is not installed."""


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``, on Python 3.10 too (where it is done by hand)."""
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]  # type: ignore[attr-defined]


def describe_exit(code: int | None) -> str:
    """Say in words how a process ended, from a ``returncode``-style status.

    Negative numbers are signals (``-9`` → "was killed by signal SIGKILL (9)").
    """
    if code is None:
        return "is still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by signal {name} ({-code})"
    return f"exited with code {code}"


def __dir__() -> list[str]:
    return sorted({*globals(), "WorkerCrashed"})


def __getattr__(name: str) -> Any:
    if name == "WorkerCrashed":
        from .crashed import WorkerCrashed

        globals()["WorkerCrashed"] = WorkerCrashed
        return WorkerCrashed
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def exception_text(exc: BaseException) -> str:
    """``str(exc)``, or ``<str() raised TYPE>`` where that raises.

    A task's exception is the user's: its ``__str__`` may raise, and showing,
    sending or recording the exception must not fail because of that.
    """
    try:
        return str(exc)
    except Exception as err:
        return f"<str() raised {type(err).__name__}>"


def exception_line(exc: BaseException) -> str:
    """``Type: message``, or ``Type`` alone for an exception with no message (never raises)."""
    text = exception_text(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_worker_crash(exc: BaseException) -> bool:
    """Whether ``exc`` is a :class:`WorkerCrashed`, without importing ``multiprocessing`` to ask.

    No instance can exist before the class was made, so a run that never
    made it is answered False at once.
    """
    crashed = globals().get("WorkerCrashed")
    return crashed is not None and isinstance(exc, crashed)
