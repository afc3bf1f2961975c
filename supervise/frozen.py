"""`frozen`: a frozen, slotted dataclass that costs one compiled method to define instead of six.

The daemon defines about 120 frozen dataclasses (the config, the core's
events, actions and inputs, the runtime's small values), and on CPython 3.11
``@dataclass(frozen=True, slots=True)`` compiles six methods for each:
`__init__`, `__repr__`, `__eq__`, `__hash__`, `__setattr__`, `__delattr__`.
That was 40 % of the daemon's import, paid at every start before the first
worker is spawned (`benchmarks/startup.py --only instructions`). Only `__init__`
depends on more than the field names, so it alone is compiled, once a class;
the other five, and the `__getstate__`/`__setstate__` a frozen slotted class
needs for copy and pickle, are shared by every class, driven by a C
attrgetter made at decoration.

A frozen class is a dataclass in every other respect: `dataclasses.fields`,
`replace`, `asdict`, `field(...)` (defaults, factories, ``init=False``,
``compare``, ``hash``, ``repr``), `__match_args__`, `__post_init__`,
``kw_only``. Equality and hashing follow dataclasses' rules: same class only,
over the fields with ``compare=True``; the hash over those with ``hash=True``,
or ``hash=None`` and ``compare=True``. A method the class defines itself is
kept. Two differences, neither used here: setting any attribute raises, even
one a plain subclass adds; and ``__dataclass_params__.frozen`` says False,
since dataclasses is asked for the fields and slots only.
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

_MISSING = dataclasses.MISSING


class _Factory:
    """The default of a parameter whose field has a default_factory: call the factory."""

    def __repr__(self) -> str:
        return "<factory>"  # as inspect.signature shows a dataclass's


_FACTORY = _Factory()


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, dataclasses.Field))
def frozen(cls: type | None = None, /, *, kw_only: bool = False) -> Any:
    """``@frozen`` or ``@frozen(kw_only=True)``: ``@dataclass(frozen=True, slots=True)``, cheaper to define."""

    def wrap(cls: type) -> type:
        own = cls.__dict__
        for name in ("__setattr__", "__delattr__"):
            if name in own:  # as dataclasses refuses it for a frozen class
                raise TypeError(f"Cannot overwrite attribute {name} in class {cls.__name__}")
        explicit_hash = own.get("__hash__") is not None or ("__hash__" in own and "__eq__" not in own)
        keep = {name for name in ("__init__", "__eq__", "__repr__", "__getstate__", "__setstate__") if name in own}
        if explicit_hash:
            keep.add("__hash__")
        undocumented = own.get("__doc__") is None
        if undocumented:  # else dataclasses makes one with inspect.signature: a third of what is left of its cost
            cls.__doc__ = "-"
        made: type = dataclasses.dataclass(cls, init=False, repr=False, eq=False, slots=True, kw_only=kw_only)
        fields = dataclasses.fields(made)
        shared: Any = made  # the attributes below are set on the class at run time: unknown to mypy
        shared._eq_key = _getter(f.name for f in fields if f.compare)
        shared._hash_key = _getter(f.name for f in fields if (f.compare if f.hash is None else f.hash))
        shared._repr_fields = tuple(f.name for f in fields if f.repr)
        shared.__setattr__, shared.__delattr__ = _setattr, _delattr
        for name, method in _SHARED:
            if name not in keep:
                setattr(made, name, method)
        if "__init__" not in keep:
            shared.__init__ = _init(made, fields)
        if undocumented:
            made.__doc__ = None
        return made

    return wrap if cls is None else wrap(cls)


def _init(cls: type, fields: tuple[dataclasses.Field[Any], ...]) -> Callable[..., None]:
    """The class's __init__, as dataclasses writes a frozen one: each field set by object.__setattr__,
    a factory called when its parameter is left out, then __post_init__ if the class has one."""
    names: dict[str, object] = {"__set": object.__setattr__, "__FACTORY": _FACTORY}
    params: list[str] = []
    keyword: list[str] = []
    lines: list[str] = []
    seen_default = False
    for f in fields:
        default = f"__default_{f.name}"
        has_factory = f.default_factory is not _MISSING
        has_default = has_factory or f.default is not _MISSING
        if has_factory:
            names[default] = f.default_factory
        elif has_default:
            names[default] = f.default
        if f.init:
            if not f.kw_only:
                if has_default:
                    seen_default = True
                elif seen_default:
                    raise TypeError(f"non-default argument {f.name!r} follows default argument")
            (keyword if f.kw_only else params).append(
                f"{f.name}=__FACTORY" if has_factory else f"{f.name}={default}" if has_default else f.name)
            value = f"{default}() if {f.name} is __FACTORY else {f.name}" if has_factory else f.name
        elif has_default:  # not a parameter, but a slot to fill
            value = f"{default}()" if has_factory else default
        else:
            continue
        lines.append(f"    __set(self, {f.name!r}, {value})")
    if hasattr(cls, "__post_init__"):
        lines.append("    self.__post_init__()")
    signature = ", ".join(["self", *params, *(["*", *keyword] if keyword else [])])
    exec(f"def __init__({signature}) -> None:\n" + ("\n".join(lines) or "    pass"), names)  # noqa: S102
    init: Callable[..., None] = names["__init__"]  # type: ignore[assignment]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


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


def _setattr(self: object, name: str, value: object) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _delattr(self: object, name: str) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")


def _getstate(self: object) -> list[object]:
    return [getattr(self, f.name) for f in dataclasses.fields(self)]  # type: ignore[arg-type]


def _setstate(self: object, state: list[object]) -> None:
    for f, value in zip(dataclasses.fields(self), state, strict=True):  # type: ignore[arg-type]
        object.__setattr__(self, f.name, value)


_SHARED = (("__eq__", _eq), ("__hash__", _hash), ("__repr__", _repr), ("__getstate__", _getstate),
           ("__setstate__", _setstate))
"""The methods every frozen class shares, unless it defines its own."""
