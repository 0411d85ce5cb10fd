"""Calling a task's callable on each of its items, keeping going past failures.

Shared by every backend that runs Python callables (and by the process
worker, so it imports nothing heavy).  A batch of ``map`` items runs through
``list.extend(map(fn, items))``: the loop stays in C, and when ``fn`` raises,
the items already done stay in the list and the same ``map`` object carries
on with the next item.  That is what makes tiny tasks cost about as much as a
plain loop.

One exception cannot pass through that loop: a ``StopIteration`` raised by
``fn`` reads to ``extend`` as the end of the ``map`` object, and is dropped
there.  The item is not lost with it (the batch comes back short, so the one
that ended it is known), but its exception is: that item fails with a
``RuntimeError`` saying so, as a generator's ``StopIteration`` becomes one
(PEP 479), and the ``map`` object carries on with the next item.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from .tasks import ONE, STAR

__all__ = ["call_items", "call_one"]


def call_items(
    fn: Callable[..., Any],
    items: Sequence[Any],
    style: int,
    on_error: Callable[[BaseException], Any],
    reraise: tuple[type[BaseException], ...] = (),
) -> tuple[list[Any], list[int] | None]:
    """Run ``fn`` over ``items`` in ``style``; return results and failed indices.

    A failed item's slot holds ``on_error(exc)``.  Exceptions of a type in
    ``reraise`` (``KeyboardInterrupt`` when running in the caller's thread)
    propagate instead of failing the item.
    """
    out: list[Any] = []
    failed: list[int] | None = None
    if style in (ONE, STAR):
        n = len(items)
        it = map(fn, items) if style == ONE else itertools.starmap(fn, items)
        while True:
            try:
                out.extend(it)
            except reraise:
                raise
            except BaseException as exc:
                if failed is None:
                    failed = []
                failed.append(len(out))
                out.append(on_error(exc))
                continue
            if len(out) == n:
                return out, failed
            # fn raised StopIteration on item len(out): see the module docstring
            if failed is None:
                failed = []
            failed.append(len(out))
            out.append(on_error(_stopped(fn)))
    for args, kwargs in items:
        try:
            out.append(fn(*args, **kwargs) if kwargs else fn(*args))
        except reraise:
            raise
        except BaseException as exc:
            if failed is None:
                failed = []
            failed.append(len(out))
            out.append(on_error(exc))
    return out, failed


def _stopped(fn: Callable[..., Any]) -> RuntimeError:
    name = getattr(fn, "__qualname__", None) or repr(fn)
    return RuntimeError(
        f"{name} raised StopIteration, which a map batch cannot keep (it reads as the end of "
        "the batch's loop): raise another exception to see its message and traceback")


def call_one(fn: Callable[..., Any], style: int, item: Any) -> Any:
    """Call ``fn`` on one ``item`` in ``style`` (for callers that time or mark each item)."""
    if style == ONE:
        return fn(item)
    if style == STAR:
        return fn(*item)
    args, kwargs = item
    return fn(*args, **kwargs) if kwargs else fn(*args)
