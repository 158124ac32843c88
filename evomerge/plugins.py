"""The one plugin manager: built-ins first, then every ``evomerge`` entry point, built once.

Nothing here runs at import: :func:`get_plugin_manager` builds the manager on
first call (``evomerge.load_plugins()`` and every registry's first use call it)
and caches it. Entry points are loaded one by one (not with pluggy's
``load_setuptools_entrypoints``) so that one broken plugin is recorded by name
and reported by ``evomerge plugins list`` instead of taking the CLI down.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points, version
from types import ModuleType

import pluggy

from evomerge import hookspecs

ENTRY_POINT_GROUP = "evomerge"

#: Core built-ins, registered exactly like third-party plugins.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "evomerge.merge.methods",
    "evomerge.fitness.builtin_terms",
    "evomerge.search.strategy",
)


@dataclass(frozen=True)
class PluginLoadError:
    """A plugin that failed to import or register; kept so the CLI can report it."""

    name: str
    source: str
    error: str
    detail: str


@dataclass(frozen=True)
class PluginInfo:
    """What ``plugins list`` shows for one registered plugin."""

    name: str
    package: str
    version: str
    hooks: tuple[str, ...]


_MANAGER: pluggy.PluginManager | None = None
_LOADING = False
_load_errors: list[PluginLoadError] = []
_PLUGIN_SOURCES: dict[str, tuple[str, str]] = {}


def _distribution_of(ep: EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", "?"
    return dist.metadata["Name"], dist.version


def _record(name: str, source: str, error: str, detail: str = "") -> None:
    problem = PluginLoadError(name=name, source=source, error=error, detail=detail)
    if all((e.name, e.source, e.error) != (name, source, error) for e in _load_errors):
        _load_errors.append(problem)


def _register_entry_point(pm: pluggy.PluginManager, ep: EntryPoint) -> None:
    """Import, register and check one entry point; a failure is recorded, never raised."""
    package, dist_version = _distribution_of(ep)
    source = f"{package} {dist_version} ({ep.value})"
    taken = pm.get_plugin(ep.name)
    if taken is not None:
        owner = " ".join(_package_of(ep.name, taken))
        _record(ep.name, source, f"entry point name {ep.name!r} is taken by {owner}; rename one")
        return
    registered = None
    try:
        plugin = ep.load()
        hash(plugin)  # pluggy's per-plugin calls need it (registry.py); a module always is
        pm.register(plugin, name=ep.name)
        registered = plugin
        pm.check_pending()  # a misspelt hook name (``hookimpl`` on no spec) is this plugin's error
    except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the CLI down
        if registered is not None:  # never another name's registration of the same object
            pm.unregister(registered)
        _record(ep.name, source, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        return
    _PLUGIN_SOURCES[ep.name] = (package, dist_version)


def record_plugin_problem(name: str, plugin: object, error: str) -> None:
    """A loaded plugin whose hook failed or returned the wrong thing: reported like a load
    failure (``plugins list``, unknown-name errors; registries rebuild, so once) while the
    other plugins keep working."""
    _record(name, " ".join(_package_of(name, plugin)), error)


def load_error_note() -> str:
    """``"; plugins that failed to load: ..."`` for an unknown-name error, or ``""``."""
    if not _load_errors:
        return ""
    failed = ", ".join(f"{e.name!r} ({e.error})" for e in _load_errors)
    return f"; plugins that failed to load: {failed}"


def get_plugin_manager() -> pluggy.PluginManager:
    """The manager holding the built-ins and every entry-point plugin (built on first call, then cached)."""
    global _MANAGER, _LOADING
    if _MANAGER is not None:
        return _MANAGER
    if _LOADING:
        raise RuntimeError(
            "a plugin asked for evomerge's plugins while they were being loaded: "
            "call evomerge.load_plugins() from a function, not at a plugin module's import"
        )
    _LOADING = True
    try:
        pm = pluggy.PluginManager("evomerge")
        pm.add_hookspecs(hookspecs)
        for module_name in DEFAULT_PLUGINS:
            pm.register(importlib.import_module(module_name), name=module_name)
        pm.check_pending()
        # evomerge's own entry points first: a third party reusing one of their names is
        # the one reported, whatever order the site dirs list them in
        points = entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(points, key=lambda e: (_distribution_of(e)[0] != "evomerge", e.name)):
            if not pm.is_blocked(ep.name):
                _register_entry_point(pm, ep)
        if os.environ.get("EVOMERGE_TRACE_HOOKS"):
            pm.trace.root.setwriter(lambda msg: print(msg, end="", file=sys.stderr))
            pm.enable_tracing()
    finally:
        _LOADING = False
    _MANAGER = pm
    return pm


def plugin_load_errors() -> list[PluginLoadError]:
    """Plugins that could not be loaded, with the error each raised."""
    get_plugin_manager()
    return list(_load_errors)


def _package_of(name: str, plugin: object) -> tuple[str, str]:
    if name in _PLUGIN_SOURCES:
        return _PLUGIN_SOURCES[name]
    if isinstance(plugin, ModuleType) and plugin.__name__.startswith("evomerge."):
        return "evomerge", version("evomerge")
    return "?", "?"


def list_plugins() -> list[PluginInfo]:
    """Every registered plugin with its package and the hooks it implements."""
    pm = get_plugin_manager()
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        package, dist_version = _package_of(name, plugin)
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or []))
        infos.append(PluginInfo(name=name, package=package, version=dist_version, hooks=hooks))
    return infos
