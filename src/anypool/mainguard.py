"""The missing ``if __name__ == "__main__":`` guard, caught where it does harm.

A worker process that comes from the fork server or ``spawn`` imports the
program's main module (as ``__mp_main__``) before it runs anything, so that
the functions defined there can be found.  A script that makes its pool at
top level, outside the guard, makes one again in every such worker: each
starts workers of its own, or runs the whole script's work again, while the
real pool waits for workers that never get ready.

:func:`check` runs where a pool would start processes (a process pool's
first workers, a local Dask cluster), not where it is made: a pool made at
module level and used only under the guard is harmless, and keeps working.
While ``multiprocessing`` marks the process as still importing, it refuses,
naming the line.  In a worker of anypool's own it says why on stderr and
exits with :data:`EXIT_CODE`, so the parent pool breaks at once with the same
explanation (:func:`worker_exit_message`) instead of restarting workers that
would do it again (``multiprocessing`` alone fails in the nested pool's
thread, and the parent, after three restarts, could only say "exited with
code 1 during start-up").
"""

from __future__ import annotations

import os
import sys

from .errors import MainNotGuarded

__all__ = ["EXIT_CODE", "check", "worker_exit_message"]

EXIT_CODE = 86  # a worker of ours that stopped here; any code the others do not use
WORKER_PREFIX = "anypool-"  # the multiprocessing name of anypool's worker processes


def _where() -> str:
    """`` (at file, line N)`` of the first caller outside anypool, or ``""`` on a thread of ours."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("anypool."):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None or frame.f_globals.get("__name__") == "threading":
        return ""  # a pool's own thread (auto's probe) made it: no line of the caller's to name
    return f" (at {frame.f_code.co_filename}, line {frame.f_lineno})"


def check(what: str) -> None:
    """Refuse to start worker processes while this process is a worker importing the main module.

    ``what`` names what would start them (``"a process pool"``).

    Raises:
        MainNotGuarded: this is a ``multiprocessing`` child importing the main
            module, and the main module starts a pool as it is imported.  In a
            worker of anypool's own the process exits instead (see the module
            docstring).
    """
    mp = sys.modules.get("multiprocessing.process")
    if mp is None:  # no multiprocessing, no child of it
        return
    proc = mp.current_process()
    if not getattr(proc, "_inheriting", False):
        return
    message = (f"this process is a worker process importing the main module, and the main module "
               f"starts {what} as it is imported{_where()}: in a script, the code that creates the "
               f"pool must be under `if __name__ == \"__main__\":`")
    if proc.name.startswith(WORKER_PREFIX):
        # The parent reads the exit code and explains; a traceback per worker would bury that.
        sys.stdout.flush()
        sys.stderr.write(f"anypool: worker {proc.name[len(WORKER_PREFIX):]} (pid {os.getpid()}) "
                         f"stops: {message}\n")
        sys.stderr.flush()
        os._exit(EXIT_CODE)
    raise MainNotGuarded(message)


def worker_exit_message() -> str:
    """Why the pool broke, when its workers exited with :data:`EXIT_CODE`."""
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    module = f"the main module ({main})" if main else "the main module"
    return (f"worker processes import {module} as they start, and it starts a pool when it is "
            f"imported: in a script, the code that creates the pool must be under "
            f"`if __name__ == \"__main__\":` (the workers' message is above, on stderr)")
