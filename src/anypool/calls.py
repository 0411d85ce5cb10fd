"""Calling a task's callable on each of its items, keeping going past failures.

Shared by every backend that runs Python callables (and by the process
worker, so it imports nothing heavy).  A batch of ``map`` items runs through
``list.extend(map(fn, items))``: the loop stays in C, and when ``fn`` raises,
the items already done stay in the list and the same ``map`` object carries
on with the next item.  That is what makes tiny tasks cost about as much as a
plain loop.
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
        it = map(fn, items) if style == ONE else itertools.starmap(fn, items)
        while True:
            try:
                out.extend(it)
                return out, failed
            except reraise:
                raise
            except BaseException as exc:
                if failed is None:
                    failed = []
                failed.append(len(out))
                out.append(on_error(exc))
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


def call_one(fn: Callable[..., Any], style: int, item: Any) -> Any:
    """Call ``fn`` on one ``item`` in ``style`` (for callers that time or mark each item)."""
    if style == ONE:
        return fn(item)
    if style == STAR:
        return fn(*item)
    args, kwargs = item
    return fn(*args, **kwargs) if kwargs else fn(*args)
