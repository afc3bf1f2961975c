"""`@frozen` behaves as `@dataclass(frozen=True, slots=True)`: each class here has a dataclass twin,
and the two must agree on ==, hash, repr, and every dataclass tool."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervise.frozen import frozen


@frozen
class Point:
    x: int
    y: str = "a"
    note: dict = field(default_factory=dict, compare=False, repr=False)
    weight: float = field(default=0.0, hash=False)


@dataclass(frozen=True, slots=True)
class PointTwin:
    x: int
    y: str = "a"
    note: dict = field(default_factory=dict, compare=False, repr=False)
    weight: float = field(default=0.0, hash=False)


@frozen
class Empty:
    pass


@frozen
class One:
    value: int


@frozen(kw_only=True)
class Named:
    a: int
    b: int = 2


@frozen
class Labelled(Point):
    label: str = ""


@frozen
class OwnRepr:
    x: int

    def __repr__(self) -> str:
        return f"<{self.x}>"


@frozen
class Counted:
    n: int
    seen: int = field(default=0, init=False)
    tags: list = field(default_factory=list, init=False)
    doubled: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("negative")
        object.__setattr__(self, "doubled", 2 * self.n)


@dataclass(frozen=True, slots=True)
class CountedTwin:
    n: int
    seen: int = field(default=0, init=False)
    tags: list = field(default_factory=list, init=False)
    doubled: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "doubled", 2 * self.n)


@frozen
class OwnInit:
    x: int

    def __init__(self) -> None:
        object.__setattr__(self, "x", 7)


@frozen
class Unhashable:
    x: int
    __hash__ = None  # type: ignore[assignment]


values = st.tuples(st.integers(-3, 3), st.sampled_from("ab"), st.dictionaries(st.integers(0, 2), st.integers()),
                   st.sampled_from([0.0, 1.5, -2.0]))


@given(values, values)
def test_eq_hash_and_repr_agree_with_a_dataclass(first, second):
    ours, theirs = Point(*first), PointTwin(*first)
    ours2, theirs2 = Point(*second), PointTwin(*second)
    assert (ours == ours2) == (theirs == theirs2)
    assert (ours != ours2) == (theirs != theirs2)
    assert repr(ours).replace("Point", "PointTwin", 1) == repr(theirs)
    if ours == ours2:
        assert hash(ours) == hash(ours2)
    assert dataclasses.astuple(ours) == dataclasses.astuple(theirs)
    assert dataclasses.asdict(ours) == dataclasses.asdict(theirs)


def test_compare_false_and_hash_false_are_honoured():
    assert Point(1, note={1: 2}) == Point(1)  # note: compare=False
    assert Point(1, weight=1.0) != Point(1)  # compared...
    assert hash(Point(1, weight=1.0)) == hash(Point(1))  # ...but not hashed (hash=False)
    assert "note" not in repr(Point(1)) and repr(Point(1)) == "Point(x=1, y='a', weight=0.0)"


def test_other_classes_are_never_equal():
    assert Point(1) != PointTwin(1)
    assert Point(1) != Labelled(1)  # a subclass is another class, as with dataclasses
    assert Point(1).__eq__((1, "a", 0.0)) is NotImplemented


def test_no_fields_and_one_field():
    assert Empty() == Empty() and hash(Empty()) == hash(Empty()) and repr(Empty()) == "Empty()"
    assert One(1) == One(1) and One(1) != One(2) and hash(One(3)) == hash(One(3))
    assert {One(1): "a"}[One(1)] == "a"


def test_it_is_frozen_and_slotted():
    p = Point(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del p.x  # type: ignore[misc]
    assert not hasattr(p, "__dict__") and Point.__slots__ == PointTwin.__slots__
    assert dataclasses.is_dataclass(Point)


def test_dataclass_tools_work():
    p = Point(1, "b")
    assert dataclasses.replace(p, x=5) == Point(5, "b")
    assert [f.name for f in dataclasses.fields(p)] == ["x", "y", "note", "weight"]
    assert Point.__match_args__ == ("x", "y", "note", "weight")
    assert pickle.loads(pickle.dumps(p)) == p and copy.deepcopy(p) == p
    match p:
        case Point(1, y):
            assert y == "b"
        case _:
            pytest.fail("no match")


def test_keyword_only_and_subclasses():
    with pytest.raises(TypeError):
        Named(1)  # type: ignore[misc]
    assert Named(a=1) == Named(a=1, b=2) and repr(Named(a=1)) == "Named(a=1, b=2)"
    child = Labelled(1, label="x")
    assert child == Labelled(1, label="x") and child != Labelled(1, label="y")
    assert repr(child) == "Labelled(x=1, y='a', weight=0.0, label='x')"
    assert hash(child) == hash(Labelled(1, label="x"))


def test_init_takes_what_a_dataclass_init_takes():
    def shape(cls):
        return [(p.name, p.kind, repr(p.default)) for p in inspect.signature(cls).parameters.values()]

    assert shape(Point) == shape(PointTwin)
    assert shape(Counted) == shape(CountedTwin)
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Point(1, "a", {}, 0.0, 5)  # type: ignore[call-arg]
    assert Point(1).note == {} and Point(1).note is not Point(1).note  # a factory's value is new each time


def test_init_false_fields_and_post_init():
    c = Counted(3)
    twin = CountedTwin(3)
    assert (c.n, c.seen, c.tags, c.doubled) == (twin.n, twin.seen, twin.tags, twin.doubled) == (3, 0, [], 6)
    with pytest.raises(ValueError):
        dataclasses.replace(c, seen=1)  # as for a dataclass: an init=False field cannot be replaced
    with pytest.raises(ValueError, match="negative"):
        Counted(-1)


def test_a_field_without_default_after_one_with_is_refused():
    with pytest.raises(TypeError, match="non-default argument 'b' follows default argument"):
        @frozen
        class Bad:
            a: int = 0
            b: int


def test_a_frozen_class_may_not_define_setattr():
    with pytest.raises(TypeError, match="__setattr__"):
        @frozen
        class Bad:
            a: int

            def __setattr__(self, name: str, value: object) -> None: ...


def test_what_the_class_defines_itself_is_kept():
    assert repr(OwnRepr(3)) == "<3>" and OwnRepr(3) == OwnRepr(3)
    assert OwnInit().x == 7
    assert Unhashable(1) == Unhashable(1)
    with pytest.raises(TypeError):
        hash(Unhashable(1))
