"""Frozen dataclasses that are cheaper to define: :func:`compared`.

On CPython 3.11 ``@dataclass`` compiles every method it generates with an ``exec`` of its own
(3.13 batches them). A frozen one gets six: ``__init__``, ``__repr__``, ``__eq__``, ``__hash__``,
``__setattr__`` and ``__delattr__``; conctools defines ~40 of them before ``conctools run``
starts the program, ~20 ms (issue 12's start-up target; see benchmarks/bench_run.py).
``@compared`` over ``@dataclass(frozen=True, slots=True, repr=False, eq=False)`` gives the class
the ``__repr__``, ``__eq__`` and ``__hash__`` that ``@dataclass(frozen=True)`` would have
generated, with the same results, built from ``operator.attrgetter`` without compiling anything::

    @compared
    @dataclass(frozen=True, slots=True, repr=False, eq=False)
    class Point:
        x: int
        y: int
"""

from __future__ import annotations

import dataclasses
import operator
import reprlib
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["compared"]

_T = TypeVar("_T")


def compared(cls: type[_T]) -> type[_T]:
    """Add the ``__repr__``, ``__eq__`` and ``__hash__`` of ``@dataclass(frozen=True)`` to a frozen
    dataclass made with ``repr=False, eq=False``; methods written in the class body stay, as
    ``@dataclass`` keeps them."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    compared_values = _getter([f.name for f in fields if f.compare])
    hashed_values = _getter([f.name for f in fields if (f.compare if f.hash is None else f.hash)])
    shown = [f.name for f in fields if f.repr]
    shown_values = _getter(shown)
    own = cls.__dict__
    class_hash = own.get("__hash__", dataclasses.MISSING)
    explicit_hash = not (class_hash is dataclasses.MISSING or (class_hash is None and "__eq__" in own))

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is self.__class__:
            return bool(compared_values(self) == compared_values(other))
        return NotImplemented

    def __hash__(self: Any) -> int:
        return hash(hashed_values(self))

    @reprlib.recursive_repr()
    def __repr__(self: Any) -> str:
        values = ", ".join(f"{name}={value!r}" for name, value in zip(shown, shown_values(self)))
        return f"{self.__class__.__qualname__}({values})"

    methods: list[Callable[..., Any]] = []
    if "__repr__" not in own:
        methods.append(__repr__)
    if "__eq__" not in own:
        methods.append(__eq__)
    if not explicit_hash:
        methods.append(__hash__)
    for method in methods:
        method.__qualname__ = f"{cls.__qualname__}.{method.__name__}"
        setattr(cls, method.__name__, method)
    return cls


def _getter(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """The named attributes of an object as a tuple (``attrgetter`` of one name is no tuple)."""
    if len(names) > 1:
        return operator.attrgetter(*names)
    if names:
        one = operator.attrgetter(names[0])
        return lambda obj: (one(obj),)
    return lambda obj: ()
