"""Instance layout of conctools' classes that have a C base with fields of its own (the C extension's
``Tracked``, ``AioLockFields`` and ``PoolCounters``: every Python-level traced primitive, and pool
blame's ``PoolState``).

CPython 3.13+ keeps a plain class's instance attributes inline, in the object, and specializes the
attribute accesses of hot code to them. A class whose base has C fields gets no inline values
(``Py_TPFLAGS_INLINE_VALUES`` is set only over a base of ``object``'s size): its instances keep their
attributes in a dict whose keys the class shares, a *split* dict, and 3.13 specializes no access to
those (``specialize.c``: ``SPEC_FAIL_ATTR_SPLIT_DICT``). Every ``self._value`` of asyncio's own
``Semaphore.acquire()`` on a traced semaphore then took the generic lookup, ~200 instructions each:
~4k instructions per contended task of ``benchmarks/instr_aio.py`` (issue 12). A dict of the
instance's own (combined, not split) is specialized (``LOAD_ATTR_WITH_HINT``); 3.11 and 3.12 specialize
split dicts, and are left alone.
"""

from __future__ import annotations

import sys

from conctools._typing import Any

__all__ = ["own_dict"]

_SPLIT_DICTS_SLOW = sys.version_info >= (3, 13)
_INLINE_VALUES = 1 << 2  # Py_TPFLAGS_INLINE_VALUES (3.13+)
_get = object.__getattribute__
_set = object.__setattr__
_slotted: dict[type, bool] = {}  # class -> it declares slots (see own_dict)


def own_dict(obj: Any) -> None:
    """Give ``obj`` (at the end of its ``__init__``, its attributes set) an attribute dict of its own
    where 3.13+ keeps it split (see the module docstring): the same keys and values, in the same order,
    so that the instances of one class still share their attributes' places. Never raises."""
    cls = type(obj)
    if not _SPLIT_DICTS_SLOW or cls.__flags__ & _INLINE_VALUES:
        return
    slotted = _slotted.get(cls)
    if slotted is None:
        # A class that keeps its attributes in slots (a traced Condition, asyncio's Lock and Semaphore) has
        # no dict until something stores another attribute: asking for it here would make one.
        slotted = _slotted[cls] = any(vars(c).get("__slots__") for c in cls.__mro__)
    if slotted:
        return
    try:
        d = _get(obj, "__dict__")
        if d:
            _set(obj, "__dict__", dict(d.items()))
    except Exception:  # no __dict__ (all slots), or one a subclass made its own
        pass
