"""Which of several locks created on one line a report means: ``'app.py:12' #2``.

Locks created on the same line share their name (the creation site). Reports tell them apart
by their rank in creation order among the live locks of that line, the same way in every
report and every run of a deterministic program (never by an address or a global serial
number, which change from run to run and from report to report).
"""

from __future__ import annotations

from typing import Any

from conctools import registry

__all__ = ["instance_ordinal", "ordinal_by_id"]


def instance_ordinal(prim: Any) -> int | None:
    """1 for the first live lock created at ``prim``'s line (or with its name), 2 for the next, ...;
    ``None`` for an object that is not a traced primitive."""
    stats = getattr(prim, "_ct_stats", None)
    serial = getattr(prim, "_ct_serial", None)
    if stats is None or serial is None:
        return None
    earlier = 0
    for other in registry.live():
        if getattr(other, "_ct_stats", None) is stats and getattr(other, "_ct_serial", serial) < serial:
            earlier += 1
    return earlier + 1


def ordinal_by_id(prim_id: int) -> int | None:
    """:func:`instance_ordinal` of the live traced primitive whose ``id()`` is ``prim_id``."""
    for prim in registry.live():
        if id(prim) == prim_id:
            return instance_ordinal(prim)
    return None
