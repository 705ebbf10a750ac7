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
(a followed child defines them too): ``@record`` (or ``@record(kw_only=True)``) makes the class that
``@dataclass(frozen=True, slots=True)`` makes without ``dataclasses`` itself, which imports
``inspect`` (~40 M instructions in a new interpreter, issue 14: a spawned child pays them before its
program's first line). It compiles nothing when the class is made: its frozen ``__setattr__`` /
``__delattr__`` are closures, and its ``__init__`` (the one ``@dataclass`` writes: same parameters,
defaults, factories, ``__post_init__``) is compiled when the first instance is made: most event
classes are never instantiated in a short-lived process. Fields are declared with :func:`field`
(``dataclasses.field`` works too). ``dataclasses.fields``, ``asdict``, ``replace``,
``is_dataclass``, pickling and copying work as for a ``@dataclass(frozen=True)``: the class's
``__dataclass_fields__`` is made (and ``dataclasses`` imported) when something first asks for it;
assigning a field raises ``dataclasses.FrozenInstanceError``. :func:`field_names` gives the fields'
names without that.
"""

from __future__ import annotations

import operator
import reprlib
import sys
from collections.abc import Callable

from conctools._typing import Any, TypeVar, dataclass_transform, overload

__all__ = ["compared", "field", "field_names", "is_record", "record", "replace"]

_T = TypeVar("_T")


class _Missing:
    """No default (``dataclasses.MISSING`` without importing ``dataclasses``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class _Factory:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<factory>"  # how ``@dataclass``'s ``__init__`` signature shows a default factory


_FACTORY: Any = _Factory()


class Field:
    """One field of a :func:`record`: what ``dataclasses.Field`` says of it."""

    __slots__ = ("compare", "default", "default_factory", "hash", "init", "kw_only", "metadata", "name", "repr", "type")

    def __init__(
        self,
        default: Any,
        default_factory: Any,
        init: bool,
        repr: bool,
        hash: bool | None,
        compare: bool,
        metadata: Any,
        kw_only: Any,
    ) -> None:
        self.name = ""
        self.type: Any = None
        self.default = default
        self.default_factory = default_factory
        self.init = init
        self.repr = repr
        self.hash = hash
        self.compare = compare
        self.metadata = metadata
        self.kw_only = kw_only

    def _real(self, classvar: bool = False) -> Any:
        """The ``dataclasses.Field`` that ``@dataclass`` would have made."""
        import dataclasses

        kwargs: dict[str, Any] = {"init": self.init, "repr": self.repr, "hash": self.hash, "compare": self.compare}
        if self.default is not MISSING:
            kwargs["default"] = self.default
        if self.default_factory is not MISSING:
            kwargs["default_factory"] = self.default_factory
        if self.metadata is not None:
            kwargs["metadata"] = self.metadata
        if not classvar:
            kwargs["kw_only"] = self.kw_only
        real = dataclasses.field(**kwargs)
        real.name, real.type = self.name, self.type
        real._field_type = dataclasses._FIELD_CLASSVAR if classvar else dataclasses._FIELD  # type: ignore[attr-defined]
        return real


def field(
    *,
    default: Any = MISSING,
    default_factory: Callable[[], Any] | Any = MISSING,
    init: bool = True,
    repr: bool = True,
    hash: bool | None = None,
    compare: bool = True,
    metadata: Any = None,
    kw_only: Any = MISSING,
) -> Any:
    """``dataclasses.field`` for a :func:`record` (without importing ``dataclasses``)."""
    if default is not MISSING and default_factory is not MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return Field(default, default_factory, init, repr, hash, compare, metadata, kw_only)


def field_names(cls_or_instance: Any) -> tuple[str, ...]:
    """The names of a dataclass's (or a record's) fields, in order: ``dataclasses.fields`` names."""
    cls = cls_or_instance if isinstance(cls_or_instance, type) else type(cls_or_instance)
    fields: tuple[Field, ...] | None = cls.__dict__.get("__record_fields__")
    if fields is not None:
        return tuple(f.name for f in fields)
    import dataclasses

    return tuple(f.name for f in dataclasses.fields(cls))


def is_record(cls_or_instance: Any) -> bool:
    """A :func:`record` class or instance (no ``dataclasses`` needed to say)."""
    cls = cls_or_instance if isinstance(cls_or_instance, type) else type(cls_or_instance)
    return getattr(cls, "__conctools_record__", False) is True


def compared(cls: type[_T]) -> type[_T]:
    """Add the ``__repr__``, ``__eq__`` and ``__hash__`` of ``@dataclass(frozen=True)`` to a frozen
    dataclass made with ``repr=False, eq=False``; methods written in the class body stay, as
    ``@dataclass`` keeps them."""
    import dataclasses

    return _compare(cls, dataclasses.fields(cls))  # type: ignore[arg-type]


def _compare(cls: type[_T], fields: Any, *, hashable: bool = True) -> type[_T]:
    compared_values = _getter([f.name for f in fields if f.compare])
    hashed_values = _getter([f.name for f in fields if (f.compare if f.hash is None else f.hash)])
    shown = [f.name for f in fields if f.repr]
    shown_values = _getter(shown)
    own = cls.__dict__
    class_hash = own.get("__hash__", MISSING)
    explicit_hash = not (class_hash is MISSING or (class_hash is None and "__eq__" in own))

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
    if hashable and not explicit_hash:
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
def record(*, kw_only: bool = False, frozen: bool = True) -> Callable[[type[_T]], type[_T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[_T] | None = None, /, *, kw_only: bool = False, frozen: bool = True) -> Any:
    """``@compared @dataclass(frozen=True, slots=True, repr=False, eq=False, kw_only=kw_only)``,
    compiling nothing and importing nothing when the class is made (see the module docstring).
    ``frozen=False`` makes what ``@dataclass(slots=True, kw_only=kw_only)`` makes: fields that can
    be assigned, and no ``__hash__`` (``conctools run``'s options, made before the program starts)."""

    def wrap(cls: type[_T]) -> type[_T]:
        return _record(cls, kw_only, frozen)

    return wrap if cls is None else wrap(cls)


class _Params:
    """``__dataclass_params__``: what ``@dataclass(frozen=frozen, slots=True)`` was asked for."""

    __slots__ = (
        "eq",
        "frozen",
        "init",
        "kw_only",
        "match_args",
        "order",
        "repr",
        "slots",
        "unsafe_hash",
        "weakref_slot",
    )

    def __init__(self, kw_only: bool, frozen: bool = True) -> None:
        self.init = self.repr = self.eq = self.match_args = self.slots = True
        self.order = self.unsafe_hash = self.weakref_slot = False
        self.kw_only = kw_only
        self.frozen = frozen

    def __repr__(self) -> str:
        values = ",".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"_DataclassParams({values})"


class _LazyFields:
    """A record's ``__dataclass_fields__``, made when first asked for (it imports ``dataclasses``)."""

    def __init__(self, fields: tuple[Field, ...], classvars: tuple[Field, ...]) -> None:
        self.fields = fields
        self.classvars = classvars
        self.made: dict[str, Any] | None = None

    def __get__(self, obj: Any, owner: type | None = None) -> dict[str, Any]:
        made = self.made
        if made is None:
            made = {f.name: f._real() for f in self.fields}
            made.update((f.name, f._real(classvar=True)) for f in self.classvars)
            self.made = made
        return made


def _is_classvar(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return annotation.startswith(("ClassVar", "typing.ClassVar", "t.ClassVar"))
    typing = sys.modules.get("typing")
    return typing is not None and (
        annotation is typing.ClassVar or getattr(annotation, "__origin__", None) is typing.ClassVar
    )


def _own_field(cls: type, name: str, annotation: Any, kw_only: bool) -> Field:
    value = cls.__dict__.get(name, MISSING)
    if isinstance(value, Field):
        spec = value
    elif type(value).__name__ == "Field" and type(value).__module__ == "dataclasses":  # dataclasses.field()
        spec = Field(
            value.default,
            value.default_factory,
            value.init,
            value.repr,
            value.hash,
            value.compare,
            value.metadata or None,
            value.kw_only,
        )
        dataclasses = sys.modules["dataclasses"]
        if spec.default is dataclasses.MISSING:
            spec.default = MISSING
        if spec.default_factory is dataclasses.MISSING:
            spec.default_factory = MISSING
        if spec.kw_only is dataclasses.MISSING:
            spec.kw_only = MISSING
    else:
        spec = Field(value, MISSING, True, True, None, True, None, MISSING)
    spec.name, spec.type = name, annotation
    if spec.kw_only is MISSING:
        spec.kw_only = kw_only
    default = spec.default
    if default is not MISSING and type(default).__hash__ is None:  # as @dataclass refuses it
        raise ValueError(f"mutable default {type(default)} for field {name} is not allowed: use default_factory")
    return spec


def _record(cls: type[_T], kw_only: bool, frozen: bool = True) -> type[_T]:
    fields: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        inherited = base.__dict__.get("__record_fields__")
        if inherited is None and "__dataclass_fields__" in base.__dict__:
            raise TypeError(f"{cls.__qualname__}: a record's bases are records, not dataclasses")
        for f in inherited or ():
            fields[f.name] = f
    classvars: list[Field] = []
    # Its own annotations (inspect.get_annotations would import inspect: what records avoid).
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():  # noqa: RUF063
        if isinstance(annotation, str) and annotation.startswith(("InitVar", "dataclasses.", "KW_ONLY")):
            raise TypeError(f"{cls.__qualname__}.{name}: a record has no {annotation}")
        if _is_classvar(annotation):
            value = cls.__dict__.get(name, MISSING)
            classvar = Field(value, MISSING, True, True, None, True, None, MISSING)
            classvar.name, classvar.type = name, annotation
            classvars.append(classvar)
            continue
        fields[name] = _own_field(cls, name, annotation, kw_only)
    ordered = tuple(fields.values())
    seen_default = False
    for f in ordered:
        if f.init and not f.kw_only:
            if f.default is not MISSING or f.default_factory is not MISSING:
                seen_default = True
            elif seen_default:
                raise TypeError(f"non-default argument {f.name!r} follows default argument")
    names = tuple(f.name for f in ordered)

    # The slotted class, as dataclasses._add_slots makes it.
    namespace = dict(cls.__dict__)
    inherited_slots: set[str] = set()
    for base in cls.__mro__[1:-1]:
        slots = base.__dict__.get("__slots__", ())
        inherited_slots.update((slots,) if isinstance(slots, str) else slots)
    namespace["__slots__"] = tuple(name for name in names if name not in inherited_slots)
    for name in names:
        namespace.pop(name, None)
    namespace.pop("__dict__", None)
    namespace.pop("__weakref__", None)
    namespace["__record_fields__"] = ordered
    namespace["__dataclass_fields__"] = _LazyFields(ordered, tuple(classvars))
    namespace["__dataclass_params__"] = _Params(kw_only, frozen)
    namespace["__match_args__"] = tuple(f.name for f in ordered if f.init and not f.kw_only)
    namespace["__conctools_record__"] = True
    qualname = cls.__qualname__
    metaclass: Any = type(cls)
    made: Any = metaclass(cls.__name__, cls.__bases__, namespace)
    made.__qualname__ = qualname

    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is made or name in names:
            raise _frozen_error(f"cannot assign to field {name!r}")
        super(made, self).__setattr__(name, value)

    def __delattr__(self: Any, name: str) -> None:
        if type(self) is made or name in names:
            raise _frozen_error(f"cannot delete field {name!r}")
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
    methods: list[Callable[..., Any]] = [__init__]
    if frozen:  # (@dataclass adds the pickling methods of a slotted class only to a frozen one)
        methods += [__setattr__, __delattr__]
        if "__getstate__" not in own:
            methods.append(__getstate__)
        if "__setstate__" not in own:
            methods.append(__setstate__)
    for method in methods:
        method.__qualname__ = f"{qualname}.{method.__name__}"
        setattr(made, method.__name__, method)
    if not frozen and "__hash__" not in own:
        made.__hash__ = None  # as @dataclass(eq=True) leaves a class that can change: unhashable
    return _compare(made, ordered, hashable=frozen)


def _frozen_error(message: str) -> Exception:
    import dataclasses  # only when a program assigns to a record's field (a mistake)

    return dataclasses.FrozenInstanceError(message)


def _init_of(cls: type) -> Callable[..., None]:
    """The ``__init__`` that ``@dataclass(frozen=True)`` writes for ``cls``, compiled now."""
    fields: tuple[Field, ...] = cls.__dict__["__record_fields__"]
    namespace: dict[str, Any] = {"__set": object.__setattr__, "__factory": _FACTORY}
    positional: list[str] = []
    keyword: list[str] = []
    body: list[str] = []
    for f in fields:
        has_default = f.default is not MISSING
        factory = f.default_factory is not MISSING
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


def replace(obj: _T, /, **changes: Any) -> _T:
    """``dataclasses.replace`` (a record's without importing ``dataclasses``)."""
    fields: tuple[Field, ...] | None = type(obj).__dict__.get("__record_fields__")
    if fields is None:
        import dataclasses

        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    for f in fields:
        if not f.init:
            if f.name in changes:
                raise ValueError(f"field {f.name} is declared with init=False, it cannot be specified with replace()")
        elif f.name not in changes:
            changes[f.name] = getattr(obj, f.name)
    return type(obj)(**changes)
