"""Frozen dataclasses that are cheaper to define: :func:`compared` and :func:`record`.

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

:func:`record` goes further, for the classes every process defines before its program's first line
(a followed child defines them too): ``@record`` (or ``@record(kw_only=True)``) is
``@compared @dataclass(frozen=True, slots=True, repr=False, eq=False)`` that compiles nothing when
the class is made. Its frozen ``__setattr__`` / ``__delattr__`` are closures, and its ``__init__``
(the one ``@dataclass`` writes: same parameters, defaults, factories, ``__post_init__``) is compiled
when the first instance is made: most event classes are never instantiated in a short-lived process.
``dataclasses.fields``, ``asdict``, ``replace``, ``is_dataclass``, pickling and copying work as for a
``@dataclass(frozen=True)``; assigning a field raises ``dataclasses.FrozenInstanceError``.
"""

from __future__ import annotations

import dataclasses
import operator
import reprlib
from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform, overload

__all__ = ["compared", "record"]

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


@overload
def record(cls: type[_T], /) -> type[_T]: ...


@overload
def record(*, kw_only: bool = False) -> Callable[[type[_T]], type[_T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, dataclasses.Field))
def record(cls: type[_T] | None = None, /, *, kw_only: bool = False) -> Any:
    """``@compared @dataclass(frozen=True, slots=True, repr=False, eq=False, kw_only=kw_only)``,
    compiling nothing when the class is made (see the module docstring)."""

    def wrap(cls: type[_T]) -> type[_T]:
        return _record(cls, kw_only)

    return wrap if cls is None else wrap(cls)


def _record(cls: type[_T], kw_only: bool) -> type[_T]:
    # dataclass() refuses a non-frozen class over a frozen base: the bases made here say they are
    # frozen (they are) only once this class is made.
    bases = [b.__dataclass_params__ for b in cls.__mro__[1:] if getattr(b, "__conctools_record__", False)]  # type: ignore[attr-defined]
    for params in bases:
        params.frozen = False
    try:
        made: Any = dataclasses.dataclass(  # type: ignore[call-overload]
            cls, init=False, repr=False, eq=False, frozen=False, slots=True, kw_only=kw_only
        )
    finally:
        for params in bases:
            params.frozen = True
    names = tuple(f.name for f in dataclasses.fields(made))

    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is made or name in names:
            raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
        super(made, self).__setattr__(name, value)

    def __delattr__(self: Any, name: str) -> None:
        if type(self) is made or name in names:
            raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")
        super(made, self).__delattr__(name)

    def __getstate__(self: Any) -> list[Any]:
        return [getattr(self, name) for name in names]

    def __setstate__(self: Any, state: list[Any]) -> None:
        for name, value in zip(names, state):
            object.__setattr__(self, name, value)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init = _init_of(made)
        made.__init__ = init
        init(self, *args, **kwargs)

    own = made.__dict__
    methods: list[Callable[..., Any]] = [__setattr__, __delattr__, __init__]
    if "__getstate__" not in own:
        methods.append(__getstate__)
    if "__setstate__" not in own:
        methods.append(__setstate__)
    for method in methods:
        method.__qualname__ = f"{made.__qualname__}.{method.__name__}"
        setattr(made, method.__name__, method)
    made.__dataclass_params__.init = True
    made.__dataclass_params__.frozen = True
    made.__conctools_record__ = True
    return compared(made)  # type: ignore[no-any-return]


_FACTORY = getattr(dataclasses, "_HAS_DEFAULT_FACTORY", object())  # shows as <factory>, as in @dataclass


def _init_of(cls: type) -> Callable[..., None]:
    """The ``__init__`` that ``@dataclass(frozen=True)`` writes for ``cls``, compiled now."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    namespace: dict[str, Any] = {"__set": object.__setattr__, "__factory": _FACTORY, "__MISSING": dataclasses.MISSING}
    positional: list[str] = []
    keyword: list[str] = []
    body: list[str] = []
    for f in fields:
        has_default = f.default is not dataclasses.MISSING
        factory = f.default_factory is not dataclasses.MISSING
        if factory:
            namespace[f"__factory_{f.name}"] = f.default_factory
        if has_default:
            namespace[f"__default_{f.name}"] = f.default
        if f.init:
            if factory:
                value = f"__factory_{f.name}() if {f.name} is __factory else {f.name}"
                parameter = f"{f.name}=__factory"
            else:
                value = f.name
                parameter = f"{f.name}=__default_{f.name}" if has_default else f.name
            (keyword if f.kw_only else positional).append(parameter)
        elif factory:
            value = f"__factory_{f.name}()"
        elif has_default:
            value = f"__default_{f.name}"
        else:
            continue
        body.append(f"  __set(self, {f.name!r}, {value})")
    if hasattr(cls, "__post_init__"):
        body.append("  self.__post_init__()")
    parameters = ["self", *positional, *(["*", *keyword] if keyword else [])]
    source = f"def __init__({', '.join(parameters)}):\n" + ("\n".join(body) or "  pass") + "\n"
    exec(source, namespace)
    init: Callable[..., None] = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init
