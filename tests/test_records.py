"""``_records.record``: a frozen, slotted dataclass that compiles nothing when it is made and behaves
as ``@dataclass(frozen=True, slots=True)`` would (issue 12: start-up; issue 14: spawned children)."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from conctools._records import record
from conctools.events import Frame, LockWaitEvent


@record
class Point:
    """Positional fields with a default."""

    x: int
    y: int = 0


@record(kw_only=True)
class Base:
    """Keyword-only fields, a factory and a class variable."""

    kind: ClassVar[str] = "base"
    name: str
    tags: list[str] = field(default_factory=list)


@record(kw_only=True)
class Child(Base):
    """A record over a record, with a field left out of ``__init__`` and a ``__post_init__``."""

    size: int = 1
    double: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "double", 2 * self.size)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildTwin:
    """What ``Child`` is, made by ``@dataclass``."""

    name: str
    tags: list[str] = field(default_factory=list)
    size: int = 1
    double: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "double", 2 * self.size)


class TestRecord:
    """Made without compiling, used like a frozen dataclass."""

    def test_init_compiled_on_first_use(self) -> None:
        """The class's ``__init__`` is a stand-in until the first instance; then the real one,
        with the signature ``@dataclass`` gives."""

        @record
        class Fresh:
            a: int
            b: str = "x"

        stand_in = Fresh.__init__
        assert Fresh(1).b == "x"
        assert Fresh.__init__ is not stand_in
        assert str(inspect.signature(Fresh)) == "(a, b='x')"

    def test_same_as_dataclass(self) -> None:
        """Fields, defaults, factories, ``__post_init__``, ``init=False`` fields, ``replace`` and
        ``asdict`` as with ``@dataclass``; ``__init__`` rejects what the dataclass's rejects."""
        child = Child(name="n", size=3)
        twin = ChildTwin(name="n", size=3)
        assert (
            dataclasses.asdict(child)
            == dataclasses.asdict(twin)
            == {
                "name": "n",
                "tags": [],
                "size": 3,
                "double": 6,
            }
        )
        assert [f.name for f in dataclasses.fields(Child)] == [f.name for f in dataclasses.fields(ChildTwin)]
        assert dataclasses.replace(child, size=4).double == 8
        assert Child(name="a").tags is not Child(name="b").tags
        assert Child.kind == "base" and dataclasses.is_dataclass(child)
        assert Child.__dataclass_params__.frozen and Child.__dataclass_params__.init  # type: ignore[attr-defined]
        with pytest.raises(TypeError):
            Child("n")  # type: ignore[misc]
        with pytest.raises(TypeError):
            Child(name="n", double=2)  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            Point()  # type: ignore[call-arg]
        assert Point(1) == Point(1, 0) and Point.__match_args__ == ("x", "y")  # type: ignore[attr-defined]

    def test_frozen(self) -> None:
        """Assigning or deleting a field raises ``FrozenInstanceError``; there is no ``__dict__``."""
        p = Point(1, 2)
        with pytest.raises(dataclasses.FrozenInstanceError):
            p.x = 3  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            del p.x  # type: ignore[misc]
        with pytest.raises((dataclasses.FrozenInstanceError, AttributeError)):
            p.other = 1  # type: ignore[attr-defined]
        assert not hasattr(p, "__dict__")

    def test_compared_pickled_copied(self) -> None:
        """Equality, hash and repr of a frozen dataclass; pickling and copying round-trip."""
        p = Point(1, 2)
        assert p == Point(1, 2) and p != Point(2, 1) and hash(p) == hash(Point(1, 2))
        assert repr(p) == "Point(x=1, y=2)"
        child = Child(name="n", tags=["t"], size=2)
        for clone in (pickle.loads(pickle.dumps(child)), copy.copy(child), copy.deepcopy(child)):
            assert clone == child and clone.double == 4

    def test_not_frozen(self) -> None:
        """``frozen=False`` makes what ``@dataclass(slots=True, kw_only=True)`` makes (``conctools
        run``'s options): fields can be assigned, the same ``__init__``, repr, equality and pickling,
        no ``__hash__`` and no ``__dict__``."""

        @record(kw_only=True, frozen=False)
        class Options:
            name: str | None = None
            tags: list[str] = field(default_factory=list)
            level: int = 1

            @property
            def shown(self) -> str:
                return f"{self.name}:{self.level}"

        @dataclass(slots=True, kw_only=True)
        class OptionsTwin:
            name: str | None = None
            tags: list[str] = field(default_factory=list)
            level: int = 1

        options, twin = Options(name="a"), OptionsTwin(name="a")
        options.level = twin.level = 2
        options.tags.append("t")
        twin.tags.append("t")
        assert options.shown == "a:2" and options.tags == ["t"] and Options().tags == []
        assert repr(options) == repr(twin).replace("OptionsTwin", "Options")
        assert options == Options(name="a", tags=["t"], level=2) and options != Options()
        assert Options.__hash__ is None and OptionsTwin.__hash__ is None
        assert str(inspect.signature(Options)) == "(*, name=None, tags=<factory>, level=1)"
        assert not Options.__dataclass_params__.frozen  # type: ignore[attr-defined]
        assert [f.name for f in dataclasses.fields(Options)] == ["name", "tags", "level"]
        assert copy.deepcopy(options) == options and copy.copy(options) == options
        with pytest.raises(AttributeError):
            options.other = 1  # type: ignore[attr-defined]
        with pytest.raises(TypeError):
            Options("a")  # type: ignore[misc]

    def test_events(self) -> None:
        """The event classes are records: frozen, compared, rebuilt from their dict form."""
        frame = Frame("a.py", 3, "f")
        assert frame == Frame("a.py", 3, "f", "") and str(frame) == "a.py:3 in f"
        with pytest.raises(dataclasses.FrozenInstanceError):
            frame.lineno = 4  # type: ignore[misc]
        assert "wait_s" in {f.name for f in dataclasses.fields(LockWaitEvent)}


def test_made_and_used_without_dataclasses() -> None:
    """A record is defined, built, compared and its fields named without importing ``dataclasses``
    (nor ``inspect``, which it imports); ``dataclasses.fields`` works once something asks."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from conctools._records import field, field_names, record, replace\n"
        "@record(kw_only=True)\n"
        "class R:\n"
        "    a: int\n"
        "    b: list[int] = field(default_factory=list)\n"
        "r = replace(R(a=1), a=2)\n"
        "print(r == R(a=2), field_names(r), 'dataclasses' in sys.modules, 'inspect' in sys.modules)\n"
        "import dataclasses\n"
        "print([f.name for f in dataclasses.fields(r)], dataclasses.asdict(r))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["True ('a', 'b') False False", "['a', 'b'] {'a': 2, 'b': []}"]
