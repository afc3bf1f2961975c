"""Every app group of one daemon, and the order they start and stop in (``depends_on``).

An app starts once every app it depends on is up (all its instances
running); in a shutdown an app stops once nothing live depends on it.
"""

from __future__ import annotations

from collections.abc import Iterator

from supervise.config.model import AppConfig, Config
from supervise.core.actions import Action
from supervise.core.group import AppGroup
from supervise.core.instance import Instance
from supervise.core.registry import Registry

Key = tuple[str, int]
"""An instance by app name and index."""


class Fleet:
    def __init__(self, config: Config, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self.groups: dict[str, AppGroup] = {}
        self.waiting: set[str] = set()  # apps whose start waits for their dependencies
        self.draining: set[str] = set()  # apps whose stop waits for their dependents
        self.shutting_down = False
        for app in config.apps.values():
            self.add(app)

    def add(self, app: AppConfig) -> AppGroup:
        group = AppGroup(app, self.registry, target=app.instances)
        self.groups[app.name] = group
        return group

    def __iter__(self) -> Iterator[AppGroup]:
        return iter(self.groups.values())

    def instances(self) -> Iterator[Instance]:
        for group in self.groups.values():
            yield from group.instances()

    def slot(self, key: Key) -> Instance | None:
        group = self.groups.get(key[0])
        return group.slots.get(key[1]) if group else None

    # -- depends_on ----------------------------------------------------------------

    def follow_dependencies(self, now: float) -> list[Action]:
        """Start the apps whose dependencies are all up; in a shutdown, stop the apps
        nothing live depends on any more. Repeats until nothing changes."""
        actions: list[Action] = []
        progressed = True
        while progressed:
            progressed = False
            for name, group in self.groups.items():
                if name in self.waiting and all(self.up(dep) for dep in group.config.depends_on):
                    self.waiting.discard(name)
                    actions += group.converge(now)
                    progressed = True
                if name in self.draining and not any(
                        other.live() for other in self.groups.values() if name in other.config.depends_on):
                    self.draining.discard(name)
                    actions += group.halt_all(now)
                    progressed = True
        return actions

    def converge(self, group: AppGroup, now: float) -> list[Action]:
        """Bring `group` to its count, unless it still waits for its dependencies (it will then)."""
        return [] if group.name in self.waiting else group.converge(now)

    def up(self, name: str) -> bool:
        group = self.groups.get(name)
        return group is None or group.up()

    def waiting_for(self, name: str) -> list[str]:
        return [dep for dep in self.groups[name].config.depends_on if not self.up(dep)]

    # -- replacements -----------------------------------------------------------------

    def advance(self, now: float) -> list[Action]:
        """Let every app's replacements move on; forget removed apps once nothing is left."""
        actions: list[Action] = []
        for name, group in list(self.groups.items()):
            if not group.busy:
                continue
            actions += group.advance(now)
            if group.removed and not (group.slots or group.successors or group.retiring):
                del self.groups[name]
                actions.append(self.registry.publish({"type": "app", "app": name, "event": "removed"}))
        return actions

    def listen_addresses(self) -> frozenset[str]:
        """Every address an instance listens on or may restart with."""
        return frozenset(address for group in self.groups.values() for config in group.configs_in_use()
                         for address in config.listen)

    # -- targets ----------------------------------------------------------------------

    def resolve(self, targets: tuple[str, ...]) -> list[Key] | str:
        """App names and instance names as keys, in order, without repeats; or what is wrong."""
        keys: list[Key] = []
        for target in targets:
            app_name, colon, index = target.partition(":")
            group = self.groups.get(app_name)
            if group is None:
                known = ", ".join(self.groups) or "none"
                return f"no app named {app_name!r} (apps: {known})"
            if not colon:
                keys += [(app_name, i) for i in sorted(group.slots)]
            elif index.isascii() and index.isdigit() and int(index) in group.slots:
                keys.append((app_name, int(index)))
            else:
                return f"no instance {target!r} ({app_name} has {group.target}: indexes 0..{group.target - 1})"
        return list(dict.fromkeys(keys))
