"""The merge-method registry: every method a plugin registers, by name and by mergekit alias.

Like mergekit's ``merge_methods.registry``: a flat table keyed by name and a
``get(name)`` that fails loudly listing what exists. Collection, name clashes
and caching are the generic :class:`evomerge.registry.Registry`'s; this module
adds the stage check and the mergekit names (``multislerp`` = ``slerp`` with
``mode: multislerp``), which may not clash either, with each other or with
mergekit's own methods.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import pluggy

from evomerge.merge.base import STAGES, MergekitAlias, MergeMethod
from evomerge.registry import Entry, Registry, UnknownNameError


class UnknownMergeMethodError(UnknownNameError):
    """No plugin registers a merge method of that name."""


@functools.cache
def mergekit_builtin_names() -> frozenset[str]:
    """The merge methods mergekit itself defines (not those evomerge registers into it).

    A plugin method written under one of these names would be replayed by mergekit as
    mergekit's method, with other numbers, so the name is refused when it registers.
    """
    from mergekit.merge_methods import registry

    return frozenset(
        m.spec.name
        for m in registry.registered_methods()
        if type(m).__module__.split(".")[0] == "mergekit"
    )


def _mergekit_name_problem(method: MergeMethod) -> str | None:
    """A method written under one of mergekit's own names would be replayed by mergekit as
    mergekit's method, with other numbers: its plugin is reported and the method dropped."""
    for alias in method.mergekit_aliases():
        if not alias.native and alias.name in mergekit_builtin_names():
            return f"it is written as {alias.name!r}, mergekit's own method: give it another name"
    return None


#: Class-based methods come from the hook; ``@merge_method`` ones from plugin modules' namespaces.
MERGE_METHODS: Registry[MergeMethod] = Registry(
    "merge method",
    "evomerge_register_merge_methods",
    MergeMethod,
    key=lambda method: method.name(),
    error=UnknownMergeMethodError,
    module_objects=True,
    check=_mergekit_name_problem,
)


@dataclass(frozen=True)
class ResolvedName:
    """What a ``merge_method:`` string in YAML means to evomerge."""

    method: MergeMethod
    alias: MergekitAlias
    plugin: str


class MethodRegistry:
    """Methods by evomerge name, plus the mergekit names they are written as."""

    def __init__(self, entries: Iterable[tuple[str, MergeMethod]]):
        """``entries``: (plugin, method) pairs whose names are already unique."""
        self._methods: dict[str, MergeMethod] = {}
        self._owners: dict[str, str] = {}
        self._aliases: dict[str, ResolvedName] = {}
        for plugin, method in entries:
            self._add(plugin, method)

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager) -> MethodRegistry:
        """The methods of ``pm``'s plugins (the loaded manager's are :func:`get_registry`)."""
        return cls((e.owner, e.item) for e in MERGE_METHODS.collect(pm).values())

    def _add(self, plugin: str, method: MergeMethod) -> None:
        name = method.name()
        if method.stage not in STAGES:
            raise ValueError(
                f"merge method {name!r} from plugin {plugin!r} has unknown stage {method.stage!r}"
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

    def get(self, name: str) -> MergeMethod:
        """The method called ``name`` (or mergekit alias), or an error listing every registered method."""
        if name in self._methods:
            return self._methods[name]
        if name in self._aliases:
            return self._aliases[name].method
        from evomerge.plugins import load_error_note

        raise UnknownMergeMethodError(
            f"no plugin registers merge method {name!r}; registered: "
            f"{', '.join(self.names()) or 'none'}{load_error_note()}"
        )

    def resolve(self, merge_method: str) -> ResolvedName:
        """What a YAML ``merge_method:`` means: the method, and the parameters its name implies."""
        if merge_method in self._aliases:
            return self._aliases[merge_method]
        method = self.get(merge_method)  # raises with the list
        return ResolvedName(method, MergekitAlias(merge_method), self._owners[method.name()])

    def aliases(self) -> list[ResolvedName]:
        return list(self._aliases.values())


_CACHE: tuple[dict[str, Entry[MergeMethod]], MethodRegistry] | None = None


def get_registry() -> MethodRegistry:
    """The registry of the loaded plugins (rebuilt only when the plugins change)."""
    global _CACHE
    entries = MERGE_METHODS.entries()
    if _CACHE is None or _CACHE[0] is not entries:
        _CACHE = (entries, MethodRegistry((e.owner, e.item) for e in entries.values()))
    return _CACHE[1]


def get_method(name: str) -> MergeMethod:
    """Shortcut for ``get_registry().get(name)``."""
    return get_registry().get(name)
