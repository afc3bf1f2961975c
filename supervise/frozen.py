"""`frozen`: a frozen, slotted dataclass whose `==`, `hash` and `repr` are shared, not generated.

The daemon defines about 120 frozen dataclasses (the config, the core's
events, actions and inputs, the runtime's small values), and on CPython 3.11
``@dataclass(frozen=True, slots=True)`` compiles six methods for each class:
0.3-1 ms a class, half the daemon's import time, paid at every start before
the first worker is spawned (benchmarks/startup.py). `__eq__`, `__hash__` and
`__repr__` do the same thing for every class given its field names, so a
frozen class gets one copy of each, driven by a C attrgetter made at decoration:
no compile, and calls as fast as the generated ones. `__init__` and the
frozen `__setattr__`/`__delattr__` stay dataclasses' own.

A frozen class is a dataclass in every other respect: `dataclasses.fields`,
`replace`, `asdict`, `field(...)`, `__match_args__`, pickling. Equality and
hashing follow dataclasses' rules: same class only, over the fields with
``compare=True``; the hash over those with ``hash=True``, or ``hash=None``
and ``compare=True``. A method the class defines itself is kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from operator import attrgetter

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, which the CLI's path does not load
if TYPE_CHECKING:
    from typing import Any, dataclass_transform
else:
    def dataclass_transform(**kwargs: object) -> Callable[[Callable[..., object]], Callable[..., object]]:
        return lambda decorator: decorator

__all__ = ["frozen"]


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, dataclasses.Field))
def frozen(cls: type | None = None, /, *, kw_only: bool = False) -> Any:
    """``@frozen`` or ``@frozen(kw_only=True)``: ``@dataclass(frozen=True, slots=True)``, cheaper to define."""

    def wrap(cls: type) -> type:
        own = cls.__dict__
        explicit_hash = own.get("__hash__") is not None or ("__hash__" in own and "__eq__" not in own)
        keep = {name for name in ("__eq__", "__repr__") if name in own} | ({"__hash__"} if explicit_hash else set())
        made: type = dataclasses.dataclass(cls, frozen=True, slots=True, eq=False, repr=False, kw_only=kw_only)
        fields = dataclasses.fields(made)
        shared: dict[str, object] = {
            "_eq_key": _getter(f.name for f in fields if f.compare),
            "_hash_key": _getter(f.name for f in fields if (f.compare if f.hash is None else f.hash)),
            "_repr_fields": tuple(f.name for f in fields if f.repr),
            **{name: method for name, method in (("__eq__", _eq), ("__hash__", _hash), ("__repr__", _repr))
               if name not in keep},
        }
        for name, value in shared.items():
            setattr(made, name, value)
        return made

    return wrap if cls is None else wrap(cls)


def _getter(names: Any) -> Any:
    """The fields' values by a C attrgetter: a tuple, or the bare value for one field (equal, and
    hashed, as well as a 1-tuple of it). Held on the class: a function would bind, hence staticmethod."""
    names = tuple(names)
    return attrgetter(*names) if names else staticmethod(_nothing)


def _nothing(obj: object) -> tuple[()]:
    return ()


def _eq(self: Any, other: Any) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented  # type: ignore[no-any-return]  # typeshed's NotImplemented is Any
    key = self._eq_key
    equal: bool = key(self) == key(other)
    return equal


def _hash(self: Any) -> int:
    return hash(self._hash_key(self))


def _repr(self: Any) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._repr_fields)
    return f"{self.__class__.__qualname__}({shown})"
