"""``typing``'s names for the modules a followed child imports before its program's first line,
without importing ``typing`` (~12 M instructions in a new interpreter, issue 14).

Type checkers read the ``typing`` names; at run time they are stand-ins that annotations (strings,
under ``from __future__ import annotations``) never look at: ``Any`` & co are ``object``,
``Protocol`` a plain base, ``cast`` / ``overload`` / ``dataclass_transform`` do nothing. A module
that needs ``typing`` at run time (``get_type_hints``, ``NamedTuple``) imports ``typing`` itself.
"""

TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Any as Any
    from typing import ClassVar as ClassVar
    from typing import Literal as Literal
    from typing import NoReturn as NoReturn
    from typing import Protocol as Protocol
    from typing import TypeVar as TypeVar
    from typing import cast as cast
    from typing import dataclass_transform as dataclass_transform
    from typing import overload as overload
else:
    Any = ClassVar = NoReturn = object

    class _Subscripted:
        def __getitem__(self, item):
            return object

    Literal = _Subscripted()

    class Protocol:
        """A base whose methods say what an argument offers (read by type checkers only)."""

        __slots__ = ()

    def TypeVar(name, *constraints, **kwargs):
        return name

    def cast(typ, value):
        return value

    def overload(func):
        return func

    def dataclass_transform(**kwargs):
        return lambda decorated: decorated


__all__ = [
    "TYPE_CHECKING",
    "Any",
    "ClassVar",
    "Literal",
    "NoReturn",
    "Protocol",
    "TypeVar",
    "cast",
    "dataclass_transform",
    "overload",
]
