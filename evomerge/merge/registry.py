"""The merge-method registry: every method a plugin registers, by name and by mergekit alias.

Like mergekit's ``merge_methods.registry``: a flat table keyed by name and a
``get(name)`` that fails loudly listing what exists. A name (or mergekit alias)
registered by two plugins is an error naming both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

import pluggy

from evomerge.merge.base import STAGES, MergekitAlias, MergeMethod


class UnknownMergeMethodError(KeyError):
    """No plugin registers a merge method of that name."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class ResolvedName:
    """What a ``merge_method:`` string in YAML means to evomerge."""

    method: MergeMethod
    alias: MergekitAlias
    plugin: str


class MethodRegistry:
    """Methods by evomerge name, plus the mergekit names they are written as."""

    def __init__(self, entries: Iterable[tuple[str, MergeMethod]]):
        self._methods: dict[str, MergeMethod] = {}
        self._owners: dict[str, str] = {}
        self._aliases: dict[str, ResolvedName] = {}
        for plugin, method in entries:
            self._add(plugin, method)

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager) -> MethodRegistry:
        """Collect ``evomerge_register_merge_methods`` from every plugin, in registration order."""
        entries: list[tuple[str, MergeMethod]] = []
        for impl in pm.hook.evomerge_register_merge_methods.get_hookimpls():
            methods = cast("list[MergeMethod]", impl.function() or [])
            entries.extend((impl.plugin_name, method) for method in methods)
        return cls(entries)

    def _add(self, plugin: str, method: MergeMethod) -> None:
        if not isinstance(method, MergeMethod):
            raise TypeError(f"plugin {plugin!r} registered {method!r}, not an evomerge MergeMethod")
        name = method.name()
        if method.stage not in STAGES:
            raise ValueError(
                f"merge method {name!r} from plugin {plugin!r} has unknown stage {method.stage!r}"
            )
        if name in self._methods:
            raise ValueError(
                f"merge method {name!r} is registered by both {self._owners[name]!r} and {plugin!r}"
            )
        aliases = method.mergekit_aliases()
        for alias in aliases:
            other = self._aliases.get(alias.name)
            if other is not None:
                raise ValueError(
                    f"merge method name {alias.name!r} is registered by both "
                    f"{other.plugin!r} (method {other.method.name()!r}) and {plugin!r} (method {name!r})"
                )
        self._methods[name] = method
        self._owners[name] = plugin
        for alias in aliases:
            self._aliases[alias.name] = ResolvedName(method, alias, plugin)

    def names(self) -> list[str]:
        return sorted(self._methods)

    def owner(self, name: str) -> str:
        return self._owners[name]

    def methods(self) -> list[MergeMethod]:
        return [self._methods[n] for n in self.names()]

    def get(self, name: str) -> MergeMethod:
        """The method called ``name``, or an error listing every registered method."""
        if name in self._methods:
            return self._methods[name]
        if name in self._aliases:
            return self._aliases[name].method
        raise UnknownMergeMethodError(
            f"no plugin registers merge method {name!r}; registered: {', '.join(self.names()) or 'none'}"
        )

    def resolve(self, merge_method: str) -> ResolvedName:
        """What a YAML ``merge_method:`` means: the method, and the parameters its name implies."""
        if merge_method in self._aliases:
            return self._aliases[merge_method]
        method = self.get(merge_method)  # raises with the list
        return ResolvedName(method, MergekitAlias(merge_method), self._owners[method.name()])

    def aliases(self) -> list[ResolvedName]:
        return list(self._aliases.values())


@lru_cache(maxsize=1)
def get_registry() -> MethodRegistry:
    """The registry built from the plugin manager (once per process)."""
    from evomerge.plugins import get_plugin_manager

    return MethodRegistry.from_plugin_manager(get_plugin_manager())


def get_method(name: str) -> MergeMethod:
    """Shortcut for ``get_registry().get(name)``."""
    return get_registry().get(name)


def describe(method: MergeMethod) -> dict[str, Any]:
    """Name, stage and parameter table of a method (for docs and ``plugins list``)."""
    return {
        "name": method.name(),
        "stage": method.stage,
        "parameters": {p.name: p.default for p in method.parameters()},
    }
