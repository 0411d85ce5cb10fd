"""What a type checker sees of the public API: checked by mypy in ``make test``, never run.

Each ``assert_type`` fails the type check if the API's annotations drift:
a coroutine function's future holds what the coroutine returns (not the
coroutine), a command's future a ``CommandResult``.
"""

from __future__ import annotations

from typing_extensions import assert_type  # typing has it from 3.11 (mypy checks as 3.10)

import anypool
from anypool import CommandResult, Future
from anypool.commands import Spec, prepare


def square(x: int) -> int:
    return x * x


async def asquare(x: int) -> int:
    return x * x


class Echo:
    """A command object (as the command line's templates are)."""

    def __anypool_command__(self, args: tuple[object, ...], slot: int) -> Spec:
        return prepare(["echo", *map(str, args)], ())


async def uses_every_entry_point() -> None:
    with anypool.Pool() as pool:
        assert_type(pool.submit(square, 2), Future[int])
        assert_type(pool.submit(asquare, 2), Future[int])
        assert_type(await pool.submit(asquare, 2), int)
        assert_type(pool.submit(square, 2).result(), int)
        assert_type(pool.submit("echo {}", 1), Future[CommandResult])
        assert_type(pool.submit(["ls", "-l"]), Future[CommandResult])
        assert_type(pool.submit(Echo(), "hi"), Future[CommandResult])
        assert_type(pool.with_options(timeout=1).submit(asquare, 1), Future[int])
        assert_type(list(pool.map(square, [1, 2])), list[int])
        assert_type(list(pool.map(asquare, [1, 2])), list[int])
        assert_type(list(pool.map("echo", ["a"])), list[CommandResult])
        assert_type([r async for r in pool.imap(asquare, [1])], list[int])
        assert_type(next(pool.imap_unordered(square, [1])), int)
        for done in anypool.as_completed([pool.submit(square, 1)]):
            assert_type(done.result(), int)
    assert_type(anypool.map(asquare, [1]), list[int])
    assert_type(anypool.map(square, [1]), list[int])
    assert_type(list(anypool.imap(square, [1])), list[int])
    assert_type(anypool.map("true", [1]), list[CommandResult])
