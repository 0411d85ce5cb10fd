"""Small value classes: fields named by ``__slots__``, with repr, equality and copies.

anypool's option, config, result and snapshot types would be dataclasses,
but ``import dataclasses`` pulls in ``inspect`` and ``ast``, and building a
dataclass compiles generated code: together ~20 ms of every ``anypool run``
start (of ~65 ms of imports, measured on this project's 2-core machine),
paid on each of the thousands of short runs a shell loop may make.  A
subclass lists its fields in ``__slots__`` (in order) and writes its own
``__init__``; this base adds what dataclasses would have generated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Frozen", "Record"]


class Record:
    """A mutable value: ``repr`` and ``==`` over its fields, ``_replace`` for a changed copy.

    The constructor must take every field as a keyword argument of the same
    name (``_replace`` and pickling rebuild instances through it).
    """

    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    # __eq__ without __hash__ leaves a Record unhashable, as an unfrozen dataclass is

    def _replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied, checked again by the constructor.

        Raises:
            TypeError: a name in ``changes`` is not a field.
        """
        unknown = set(changes) - set(self.__slots__)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {', '.join(sorted(unknown))}")
        kwargs = {name: getattr(self, name) for name in self.__slots__}
        kwargs.update(changes)
        return type(self)(**kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._values()))


def _rebuild(cls: type[Record], values: tuple[Any, ...]) -> Record:
    return cls(**dict(zip(cls.__slots__, values, strict=True)))


class Frozen(Record):
    """An immutable :class:`Record`: assigning a field raises ``AttributeError``; hashable.

    ``__init__`` sets the fields with :meth:`_set`.
    """

    __slots__: tuple[str, ...] = ()

    def _set(self, *values: Any) -> None:
        """Set every field, in ``__slots__`` order (for ``__init__``)."""
        for name, value in zip(self.__slots__, values, strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot delete field {name!r}")

    def __hash__(self) -> int:
        return hash(self._values())
