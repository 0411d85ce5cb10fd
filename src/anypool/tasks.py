"""Tasks: what to run, with which options, and how an attempt ended.

``TaskOptions`` is the public, frozen set of per-task policies (timeout,
retries, back-off).  ``Task`` is the internal unit the core hands to a
backend: one ``submit`` call, or a batch of ``map`` items that share a
callable and options.  ``Failure`` marks an item whose attempt did not
return a value.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from .records import Frozen

if TYPE_CHECKING:
    from .futures import Future
    from .mapping import Batch

__all__ = ["POOL_DEFAULT", "Failure", "Task", "TaskOptions"]


class _PoolDefault:
    """Sentinel type: "use the pool's setting" (``None`` means "none")."""

    _instance: _PoolDefault | None = None

    def __new__(cls) -> _PoolDefault:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "POOL_DEFAULT"

    def __reduce__(self) -> str:
        return "POOL_DEFAULT"


POOL_DEFAULT: Final = _PoolDefault()
"""Keyword value meaning "inherit the pool's setting", distinct from ``None``."""

RetryOn = tuple[type[BaseException], ...] | Callable[[BaseException], bool]


class TaskOptions(Frozen):
    """Per-task policies; a pool has one set, ``Pool.with_options`` derives others.

    Attributes:
        timeout: seconds an attempt may run before it is stopped and fails
            with :class:`~anypool.TaskTimeout`; ``None`` for no limit.
        retries: how many times a failed task is tried again (so up to
            ``retries + 1`` attempts).  Work is then at-least-once: a task
            that crashed its worker may have had side effects.
        retry_on: which failures are retried: a tuple of exception types
            (matched with ``isinstance``; :class:`~anypool.WorkerCrashed` and
            :class:`~anypool.TaskTimeout` are exceptions too) or a predicate
            taking the exception.  Default: every ``Exception``.  A predicate
            that raises means "do not retry": the task fails with its own
            error, a note on it naming the predicate's (logged once a pool).
        backoff: delay before the first retry, in seconds; doubled for each
            later one, with full jitter (a uniform draw below the value).
        backoff_max: the cap on that delay.
    """

    __slots__ = (  # noqa: RUF023 - field order: repr and positional arguments follow it
        "timeout", "retries", "retry_on", "backoff", "backoff_max",
    )

    timeout: float | None
    retries: int
    retry_on: RetryOn
    backoff: float
    backoff_max: float

    def __init__(self, timeout: float | None = None, retries: int = 0, retry_on: RetryOn = (Exception,),
                 backoff: float = 0.1, backoff_max: float = 30.0) -> None:
        """Check and keep the options.

        Raises:
            ValueError: an out-of-range timeout, retry count or back-off.
            TypeError: a timeout or back-off that is not a number.
            TypeError: ``retry_on`` is neither exception types nor a callable.
        """
        for name, value in (("timeout", timeout), ("backoff", backoff), ("backoff_max", backoff_max)):
            if (value is not None or name != "timeout") and (
                    isinstance(value, bool) or not isinstance(value, (int, float))):
                raise TypeError(f"{name} must be a number of seconds, not {value!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, not {retries!r}")
        if backoff < 0 or backoff_max < 0:
            raise ValueError("backoff and backoff_max must be >= 0")
        if not callable(retry_on) and not (
            isinstance(retry_on, tuple)
            and all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on)
        ):
            raise TypeError(
                "retry_on must be a tuple of exception types or a predicate "
                f"taking the exception, not {retry_on!r}"
            )
        self._set(timeout, retries, retry_on, backoff, backoff_max)

    def merged(self, **changes: Any) -> TaskOptions:
        """Return a copy with ``changes`` applied.

        ``POOL_DEFAULT`` keeps this set's value; ``None`` clears an option,
        back to its built-in default (no timeout, no retries, every
        ``Exception``, 0.1 s back-off, 30 s cap).

        Raises:
            TypeError: for a name that is not a task option.
            ValueError: for an out-of-range value.
        """
        unknown = set(changes) - {"timeout", "retries", "retry_on", "backoff", "backoff_max"}
        if unknown:
            raise TypeError(f"unknown task option(s): {', '.join(sorted(unknown))}")
        real = {k: _BUILT_IN[k] if v is None else v for k, v in changes.items() if v is not POOL_DEFAULT}
        return self._replace(**real) if real else self

    def should_retry(self, exc: BaseException) -> bool:
        """Whether ``retry_on`` selects ``exc`` (attempts left are checked elsewhere)."""
        rule = self.retry_on
        if isinstance(rule, tuple):
            return isinstance(exc, rule)
        return bool(rule(exc))

    def delay(self, attempt: int) -> float:
        """Back-off before attempt ``attempt + 1``: full jitter under an exponential cap."""
        if self.backoff <= 0:
            return 0.0
        import random  # here, not at the top: ~2 ms of start, wanted only by retries

        cap = min(self.backoff_max, self.backoff * (2 ** (attempt - 1)))
        return random.uniform(0, cap)


# What ``None`` clears each option to in ``TaskOptions.merged``: __init__'s defaults.
_BUILT_IN: dict[str, Any] = {
    "timeout": None, "retries": 0, "retry_on": (Exception,), "backoff": 0.1, "backoff_max": 30.0,
}


# How a backend calls a task's callable on each item.
ONE: Final = 0  # fn(item)                  -- map over one iterable
STAR: Final = 1  # fn(*item)                -- map over several iterables (zipped)
# CALL's item is (args, kwargs), kwargs None when there are none: a tuple holding
# no dict can be untracked by the garbage collector, whose full collections
# otherwise walk two more objects for every pending submit.
CALL: Final = 2  # fn(*item[0], **item[1])  -- submit(fn, *args, **kwargs)


class Failure:
    """An attempt that did not return a value, in place of its result.

    ``kind`` is ``"error"`` (the task raised), ``"timeout"``, ``"crash"`` (its
    worker died) or ``"cancelled"``.
    """

    __slots__ = ("exc", "kind")

    def __init__(self, exc: BaseException, kind: str = "error") -> None:
        self.exc = exc
        self.kind = kind

    def __repr__(self) -> str:
        return f"Failure({self.kind}, {self.exc!r})"


class Task:
    """One unit of work handed to a backend: a submitted call or a batch of map items.

    A single call has ``future`` set and one item; a batch has ``batch`` set
    (the map run's result slots) and ``offset``, the position of ``items[0]``
    in it.  Backends treat both alike: call ``claim()`` before running,
    then report every item's value or :class:`Failure` to the dispatcher.
    """

    __slots__ = (
        "attempt",
        "batch",
        "fn",
        "future",
        "id",
        "items",
        "offset",
        "options",
        "payload",
        "seq",
        "started",
        "style",
        "submitted",
    )

    def __init__(
        self,
        task_id: int,
        fn: Callable[..., Any],
        items: Sequence[Any],
        style: int,
        options: TaskOptions,
        future: Future[Any] | None = None,
        batch: Batch | None = None,
        offset: int = 0,
        seq: int = 0,
    ) -> None:
        self.id = task_id
        self.fn = fn
        self.items = items
        self.style = style
        self.options = options
        self.future = future
        self.batch = batch
        self.offset = offset
        self.seq = seq
        self.attempt = 1
        self.payload: Any = None  # a backend's cache of the serialized items
        self.submitted = time.time()
        self.started = 0.0  # set by backends that need it (when the attempt began)

    def claim(self) -> bool:
        """Mark the task as running; False if it was cancelled and must be dropped."""
        fut = self.future
        if fut is not None:
            state = fut._state
            if state == "RUNNING":  # handed back by a dead worker before it started
                return True
            if state == "CANCELLED_AND_NOTIFIED":  # where the stdlib would raise RuntimeError
                return False
            return fut.set_running_or_notify_cancel()
        assert self.batch is not None
        return not self.batch.run.closed

    def label(self) -> str:
        """A short name for messages: ``#id fn`` or ``#id..#id+n fn``."""
        name = getattr(self.fn, "__qualname__", None) or repr(self.fn)
        if len(self.items) == 1:
            return f"#{self.seq} {name}"
        return f"#{self.seq}..#{self.seq + len(self.items) - 1} {name}"

    def head(self, n: int) -> Task:
        """This task if it has ``n`` items, else a batch task for its first ``n``."""
        return self if n == len(self.items) else self.subtask(0, self.items[:n])

    def subtask(self, index: int, items: Sequence[Any]) -> Task:
        """A new batch task for ``items``, starting at ``index`` of this one (same attempt)."""
        t = Task(
            self.id + index, self.fn, items, self.style, self.options, None,
            self.batch, self.offset + index, self.seq + index,
        )
        t.attempt = self.attempt
        t.submitted = self.submitted
        return t
