"""One registry type for everything plugins contribute: architectures, merge methods, fitness terms.

A :class:`Registry` collects one hook over the loaded plugin manager (and, when
asked, the objects a plugin module defines at its top level, e.g. methods made
with ``@evomerge.merge_method``), rejects a name registered twice naming both
plugins, and caches the table until the set of registered plugins changes. A plugin
whose hook raises or returns the wrong thing is recorded as broken, as one that fails
to import is (evomerge/plugins.py), and the others keep working. ``get(name)`` fails
with one line listing what exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Generic, TypeVar, cast

import pluggy

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name no plugin registers; the message lists the names that exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered item and the plugin that registered it (shown by ``plugins list``)."""

    name: str
    item: T
    owner: str


def _is_within(home: object, module: ModuleType) -> bool:
    return isinstance(home, str) and (
        home == module.__name__ or home.startswith(module.__name__ + ".")
    )


def _module_objects(module: ModuleType) -> Iterator[object]:
    """Top-level objects ``module`` and the submodules it imports define (not those imported from elsewhere)."""
    pending, seen = [module], {module.__name__}
    while pending:
        current = pending.pop(0)
        for obj in vars(current).values():
            if isinstance(obj, ModuleType):
                if _is_within(obj.__name__, module) and obj.__name__ not in seen:
                    seen.add(obj.__name__)
                    pending.append(obj)
            elif _is_within(getattr(obj, "__module__", None), module):
                yield obj


class Registry(Generic[T]):
    """Items of type ``item_type`` by name, from hook ``hook`` of every loaded plugin.

    ``module_objects``: also collect instances of ``item_type`` that a plugin
    module (or a submodule it imports) defines at top level: no hook needed. ``fallback`` answers names no
    plugin registers (architectures fall back to transformers' own families). ``check``:
    why an item of the right type is still unusable (None: it is fine).
    """

    def __init__(
        self,
        kind: str,
        hook: str,
        item_type: type,
        key: Callable[[T], str],
        *,
        error: type[UnknownNameError] = UnknownNameError,
        module_objects: bool = False,
        fallback: Callable[[str], T | None] | None = None,
        fallback_note: str = "",
        check: Callable[[T], str | None] | None = None,
    ) -> None:
        self.kind, self.hook, self.item_type, self.key = kind, hook, item_type, key
        self.check = check
        self.error, self.module_objects = error, module_objects
        self.fallback, self.fallback_note = fallback, fallback_note
        self._cache: tuple[frozenset[int], dict[str, Entry[T]]] | None = None

    def _hook_results(
        self, pm: pluggy.PluginManager, plugin: object, others: list[object]
    ) -> list[Any]:
        """What ``plugin``'s implementation of the hook returns, called through pluggy, so
        tracing, monitoring and every plugin's wrappers apply, but without the ``others``
        that also return items: each item keeps the name of the plugin that registered it."""
        items: list[Any] = []
        for result in pm.subset_hook_caller(self.hook, remove_plugins=others)():
            if not isinstance(result, list | tuple):
                raise TypeError(f"{self.hook} returned {result!r}, not a list")
            items.extend(result)
        return items

    def _checked(self, items: list[Any]) -> list[tuple[str, T]]:
        """``(name, item)`` of one plugin's items, or TypeError naming what is wrong."""
        checked = []
        for obj in items:
            if not isinstance(obj, self.item_type):
                raise TypeError(
                    f"registered {obj!r} as a {self.kind}, "
                    f"not an evomerge {self.item_type.__name__}"
                )
            item = cast(T, obj)
            problem = self.check(item) if self.check is not None else None
            if problem:
                raise TypeError(f"registered {obj!r} as a {self.kind}: {problem}")
            checked.append((self.key(item), item))
        return checked

    def _found(self, pm: pluggy.PluginManager) -> Iterator[tuple[str, str, T]]:
        """(plugin name, item name, item), plugin by plugin in registration order: hook
        results, then module objects. A plugin whose hook raises or returns the wrong
        thing is recorded as broken (``evomerge plugins list``) and contributes nothing."""
        from evomerge.plugins import record_plugin_problem

        impls = getattr(pm.hook, self.hook).get_hookimpls()
        producers = {i.plugin_name: i.plugin for i in impls if not (i.wrapper or i.hookwrapper)}
        for owner, plugin in pm.list_name_plugin():
            items: list[Any] = []
            try:
                if owner in producers:
                    others = [p for name, p in producers.items() if name != owner]
                    items.extend(self._hook_results(pm, plugin, others))
                if self.module_objects and isinstance(plugin, ModuleType):
                    items.extend(
                        o for o in _module_objects(plugin) if isinstance(o, self.item_type)
                    )
                checked = self._checked(items)
            except Exception as exc:  # noqa: BLE001 - one broken plugin must not hide the rest
                record_plugin_problem(owner, plugin, f"{self.hook}: {type(exc).__name__}: {exc}")
                continue
            for name, item in checked:
                yield owner, name, item

    def collect(self, pm: pluggy.PluginManager) -> dict[str, Entry[T]]:
        """Every item ``pm``'s plugins register, by name; a name registered twice is an error."""
        found: dict[str, Entry[T]] = {}
        for owner, name, item in self._found(pm):
            other = found.get(name)
            if other is not None and other.item is item and other.owner == owner:
                continue  # returned by a hook and defined at module level: one item
            if other is not None:
                raise ValueError(
                    f"{self.kind} {name!r} is registered by both {other.owner!r} and {owner!r}"
                )
            found[name] = Entry(name, item, owner)
        return found

    def entries(self) -> dict[str, Entry[T]]:
        """The cached table, rebuilt when a plugin is registered or unregistered."""
        from evomerge.plugins import get_plugin_manager

        pm = get_plugin_manager()
        stamp = frozenset(id(p) for p in pm.get_plugins())
        if self._cache is None or self._cache[0] != stamp:
            self._cache = (stamp, self.collect(pm))
        return self._cache[1]

    def names(self) -> list[str]:
        """Registered names, sorted (the fallback's are not listed)."""
        return sorted(self.entries())

    def items(self) -> list[Entry[T]]:
        """Registered entries with their owners, sorted by name."""
        entries = self.entries()
        return [entries[name] for name in sorted(entries)]

    def get(self, name: str) -> T:
        """The item called ``name``, or an error listing every registered name."""
        entries = self.entries()
        if name in entries:
            return entries[name].item
        found = self.fallback(name) if self.fallback is not None else None
        if found is not None:
            return found
        from evomerge.plugins import load_error_note

        known = ", ".join(sorted(entries)) or "none"
        raise self.error(
            f"no plugin registers {self.kind} {name!r}{self.fallback_note}; registered: {known}"
            f"{load_error_note()}"
        )
