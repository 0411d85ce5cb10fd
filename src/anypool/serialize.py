"""Pickling for worker processes, with errors that name what could not be sent.

Callables go through cloudpickle (lambdas, closures and functions defined in
``__main__`` travel by value), except a plain function its worker can import
by name, which the standard pickler sends as that name, as cloudpickle
would: cloudpickle is then not imported at all (~1.6-5 ms of a process
pool's start).  Arguments and results try the standard
pickler first, which is several times faster on plain data, and fall back to
cloudpickle only when it refuses.  When both refuse, the error says which
argument (or which part of it) was the problem.  Task arguments go through
:func:`dumps_args`, which moves large NumPy arrays and other out-of-band
buffers into shared memory (``anypool.sharedmem``).
"""

from __future__ import annotations

import io
import pickle
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any

from . import sharedmem
from .errors import SerializationError, TaskError, exception_text

__all__ = ["dumps", "dumps_args", "dumps_callable", "dumps_initializer", "loads", "loads_args",
           "pack_exception", "unpack_exception"]

PROTOCOL = pickle.HIGHEST_PROTOCOL


def dumps(obj: Any) -> bytes:
    """Pickle ``obj``: the fast standard pickler, else cloudpickle.

    Raises:
        Exception: whatever cloudpickle raises when neither can pickle ``obj``.
    """
    try:
        return pickle.dumps(obj, PROTOCOL)
    except Exception:
        return _cloudpickle().dumps(obj, PROTOCOL)  # type: ignore[no-any-return]


loads = pickle.loads


def dumps_args(obj: Any, fast: bool = True) -> tuple[Any, sharedmem.SharedPayload | None]:
    """Pickle task arguments for a worker process; large buffers go to shared memory.

    Returns ``(wire, holder)``: send ``wire``; keep ``holder`` (None when no
    buffer was large enough) alive until the worker has finished with it.
    ``fast=False`` skips the standard pickler (it already refused ``obj``).

    Raises:
        Exception: whatever cloudpickle raises when neither pickler can
            pickle ``obj``; ``OSError`` when shared memory cannot be had.
    """
    if not sharedmem.ENABLED:
        return (dumps(obj) if fast else _cloudpickle().dumps(obj, PROTOCOL)), None
    if fast:
        # the common case (no buffer goes out of band) pays for no sorter object
        try:
            return pickle.dumps(obj, PROTOCOL, buffer_callback=sharedmem.in_band_or_raise), None
        except sharedmem.OutOfBand:
            pass
        except Exception:
            fast = False
    sorter = sharedmem.BufferSorter()
    if fast:
        try:
            return sorter.payload(pickle.dumps(obj, PROTOCOL, buffer_callback=sorter))
        except Exception:
            sorter = sharedmem.BufferSorter()
    out = io.BytesIO()
    _views_pickler()(out, PROTOCOL, buffer_callback=sorter).dump(obj)
    return sorter.payload(out.getvalue())


def _views_pickler() -> Any:
    """cloudpickle's Pickler, made to send a ``memoryview`` as a buffer (out of band when large).

    The standard pickler refuses a memoryview and cloudpickle copies it into
    ``bytes``: what ``share()`` returns for a buffer that is not a NumPy
    array would then be copied into every task, not shared.
    """
    global _ViewsPickler
    if _ViewsPickler is None:
        base = _cloudpickle().Pickler

        class ViewsPickler(base):  # type: ignore[misc,valid-type]
            def reducer_override(self, obj: Any) -> Any:
                if type(obj) is memoryview and obj.contiguous:
                    return _view_from, (pickle.PickleBuffer(obj), obj.format, obj.shape)
                return super().reducer_override(obj)

        _ViewsPickler = ViewsPickler
    return _ViewsPickler


_ViewsPickler: Any = None


def _view_from(buf: Any, fmt: str, shape: tuple[int, ...]) -> memoryview[Any]:
    """A memoryview sent by :func:`_views_pickler`, with its item format and shape back."""
    view: memoryview[Any] = memoryview(buf)
    cast: Any = view.cast("B").cast  # any struct format the sender's view had
    try:
        shaped: memoryview[Any] = cast(fmt, shape)
    except (TypeError, ValueError):  # a format cast() does not take: the bytes, at least
        return view
    return shaped


loads_args = sharedmem.loads_shared


def dumps_callable(fn: Callable[..., Any]) -> bytes:
    """Pickle a task's callable: by name when a worker can import it so, else with cloudpickle.

    Raises:
        SerializationError: naming the callable, when it cannot be pickled.
    """
    if _by_name(fn):
        try:
            return pickle.dumps(fn, PROTOCOL)
        except Exception:
            pass  # cloudpickle says why, below
    try:
        return _cloudpickle().dumps(fn, PROTOCOL)  # type: ignore[no-any-return]
    except Exception as exc:
        raise SerializationError(
            f"the task's callable {_name(fn)} cannot be sent to a worker process: {exc}"
        ) from exc


def _by_name(fn: Any) -> bool:
    """Whether ``fn`` is a plain function a worker imports by its name (so pickle sends just that).

    Not when cloudpickle is already loaded: the program may have asked it to
    send a module by value (``register_pickle_by_value``).
    """
    if type(fn) is not types.FunctionType or "cloudpickle" in sys.modules:
        return False
    module = fn.__module__
    if module in (None, "__main__", "__mp_main__") or "<" in fn.__qualname__:
        return False
    obj: Any = sys.modules.get(module)
    for part in fn.__qualname__.split("."):
        obj = getattr(obj, part, None)
    return obj is fn


def _cloudpickle() -> Any:
    import cloudpickle  # imported on first need: see the module docstring

    return cloudpickle


def dumps_initializer(initializer: Callable[..., Any] | None, initargs: tuple[Any, ...],
                      where: str) -> bytes | None:
    """Pickle a pool's worker initializer with its arguments (None when there is none).

    Raises:
        SerializationError: they cannot be sent ``where`` (e.g. "to worker processes").
    """
    if initializer is None:
        return None
    try:
        return _cloudpickle().dumps((initializer, initargs), PROTOCOL)  # type: ignore[no-any-return]
    except Exception as exc:
        raise SerializationError(
            f"the worker initializer {_name(initializer)} or its initargs cannot be sent {where}: {exc}"
        ) from exc


def _name(obj: Any) -> str:
    qual = getattr(obj, "__qualname__", None)
    if qual:
        return f"{qual!s} ({type(obj).__name__})"
    return f"{type(obj).__name__} object {_short(obj)}"


def _short(obj: Any, limit: int = 60) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def explain_args(args: tuple[Any, ...], kwargs: dict[str, Any], exc: BaseException) -> SerializationError:
    """Build the error for arguments that failed to pickle, naming the first bad one."""
    where = None
    for i, a in enumerate(args):
        if not _picklable(a):
            where = f"argument {i} ({type(a).__name__}: {_short(a)})"
            break
    else:
        for k, v in kwargs.items():
            if not _picklable(v):
                where = f"keyword argument {k!r} ({type(v).__name__}: {_short(v)})"
                break
    where = where or "the arguments"
    return SerializationError(f"{where} cannot be sent to a worker process: {exc}")


def explain_item(index: int, item: Any, exc: BaseException) -> SerializationError:
    """Build the error for a map item that failed to pickle."""
    return SerializationError(
        f"map item {index} ({type(item).__name__}: {_short(item)}) cannot be sent to a "
        f"worker process: {exc}"
    )


def _picklable(obj: Any) -> bool:
    try:
        dumps(obj)
    except Exception:
        return False
    return True


def pack_exception(exc: BaseException, skip_frames: int = 0) -> tuple[Any, ...]:
    """Turn an exception into something that always pickles: the object if it can travel.

    Returns ``(exc_or_None, type_name, message, traceback_text)``.  The
    traceback object itself never travels; its text does.
    """
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    exc.__traceback__ = None
    obj: BaseException | None = exc
    try:
        obj_bytes = dumps(exc)
        pickle.loads(obj_bytes)
    except BaseException:
        obj = None
    return (obj, f"{type(exc).__module__}.{type(exc).__qualname__}", exception_text(exc), text)


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, as text (chained as ``__cause__``)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text.rstrip()}\n"""'


def unpack_exception(packed: tuple[Any, ...]) -> BaseException:
    """Rebuild the exception packed by :func:`pack_exception`, its traceback chained."""
    obj, type_name, message, text = packed
    exc: BaseException = obj if obj is not None else TaskError(type_name, message, text)
    exc.__cause__ = RemoteTraceback(text)
    return exc
