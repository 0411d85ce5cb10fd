"""anypool: run work concurrently on coroutines, threads, processes, shell commands or Dask.

One ``concurrent.futures.Executor`` over every execution model::

    import anypool

    anypool.map(fetch, urls)                          # a list, in input order
    with anypool.Pool(backend="auto") as pool:        # or "thread", "process", "async", ...
        fut = pool.submit(fn, *args, **kwargs)        # an anypool.Future: .result() or await
        for r in pool.imap_unordered(fn, items): ...  # lazy, bounded, completion order
        print(pool.stats)
    big = anypool.share(numpy_array)                  # process tasks get it without a copy

This module holds the public names and nothing else.
"""

import typing  # as a module, so its names stay out of dir(anypool)

from .backends import available_backends
from .commands import CommandResult
from .errors import (
    AnypoolError,
    BackendUnavailable,
    BrokenPool,
    CommandFailed,
    InitializerFailed,
    MainNotGuarded,
    PoolClosed,
    SerializationError,
    TaskError,
    TaskTimeout,
)
from .events import Observer, TaskEvent
from .futures import Attempt, Future, as_completed
from .mapping import MapIterator
from .pool import Pool, PoolView, imap, map
from .state import worker_state
from .stats import PoolStats, Summary
from .tasks import POOL_DEFAULT, TaskOptions

if typing.TYPE_CHECKING:
    from .crashed import WorkerCrashed
    from .sharedmem import share

__all__ = [
    "POOL_DEFAULT",
    "AnypoolError",
    "Attempt",
    "BackendUnavailable",
    "BrokenPool",
    "CommandFailed",
    "CommandResult",
    "Future",
    "InitializerFailed",
    "MainNotGuarded",
    "MapIterator",
    "Observer",
    "Pool",
    "PoolClosed",
    "PoolStats",
    "PoolView",
    "SerializationError",
    "Summary",
    "TaskError",
    "TaskEvent",
    "TaskOptions",
    "TaskTimeout",
    "WorkerCrashed",
    "as_completed",
    "available_backends",
    "imap",
    "map",
    "share",
    "worker_state",
]

__version__ = "0.1.0"


def _fix_module_names() -> None:
    # Public objects say they live in `anypool`: tracebacks, docs and
    # pickles then name the path users import from.
    for name in __all__:
        _rename(globals().get(name))  # the lazy names are renamed when first asked for


def _rename(obj: object) -> None:
    if getattr(obj, "__module__", "").startswith("anypool."):
        try:
            obj.__module__ = "anypool"
        except (AttributeError, TypeError):
            pass


_fix_module_names()


def __dir__() -> list[str]:
    return sorted({*globals(), "WorkerCrashed", "share"})


def __getattr__(name: str) -> typing.Any:
    # Made or imported when first asked for, to keep `import anypool` (and every
    # `anypool run`) quick: WorkerCrashed's base class imports multiprocessing
    # (~20 ms); share's module imports ctypes and pickle (~6 ms).
    if name == "WorkerCrashed":
        from . import errors

        return errors.WorkerCrashed
    if name == "share":
        from .sharedmem import share

        _rename(share)
        globals()["share"] = share
        return share
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
