"""What the mixins of an app group (budget.py, spares.py) may use of it, declared once for the type
checker: AppGroup (group.py) holds the state and defines the methods; this declares nothing at run time."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from supervise.config.model import AppConfig
    from supervise.core.actions import Action
    from supervise.core.instance import ExitReason, Input, Instance
    from supervise.core.registry import Registry
    from supervise.core.rollout import Rollout


class GroupState:
    __slots__ = ()

    if TYPE_CHECKING:
        config: AppConfig
        registry: Registry
        target: int
        generation: int
        slots: dict[int, Instance]
        successors: dict[int, Instance]
        purposes: dict[int, ExitReason]
        retiring: list[Instance]
        deferred: set[int]
        waiting: list[Instance]
        spares: dict[int, Instance]
        rollout: Rollout | None
        removed: bool
        halted: bool

        @property
        def name(self) -> str: ...
        @property
        def rolling(self) -> bool: ...
        def wanted(self, index: int) -> bool: ...
        def feed(self, inst: Instance, event: Input, now: float) -> list[Action]: ...
        def new_spare(self, number: int) -> Instance: ...
