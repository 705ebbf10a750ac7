"""Plain stdlib primitives for the console's own objects, even while ``trace_locks()`` has put
traced classes in ``asyncio`` and ``threading``: conctools' own waits are never traced (its
wait would otherwise show in the program's lock table and wait-for graph)."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

__all__ = ["AsyncEvent", "stdlib_class"]

_T = TypeVar("_T", bound=type)


def stdlib_class(cls: _T) -> _T:
    """``cls`` itself, or the stdlib class that conctools' traced drop-in ``cls`` derives from."""
    for base in cls.__mro__:
        if not base.__module__.startswith("conctools"):
            found: Any = base
            return found  # type: ignore[no-any-return]
    return cls


AsyncEvent: type[asyncio.Event] = stdlib_class(asyncio.Event)
