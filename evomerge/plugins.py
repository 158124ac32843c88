"""The one plugin manager: built-ins first, then every ``evomerge`` entry point.

Entry points are loaded one by one (not with pluggy's
``load_setuptools_entrypoints``) so that one broken plugin is recorded by name
and reported by ``evomerge plugins list`` instead of taking the CLI down.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType

import pluggy

from evomerge import hookspecs

ENTRY_POINT_GROUP = "evomerge"

#: Core built-ins, registered exactly like third-party plugins.
DEFAULT_PLUGINS: tuple[str, ...] = ()


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


_load_errors: list[PluginLoadError] = []
_PLUGIN_SOURCES: dict[str, tuple[str, str]] = {}


def _distribution_of(ep: EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", "?"
    return dist.metadata["Name"], dist.version


@lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    """Build (once) the manager holding the built-ins and every entry-point plugin."""
    pm = pluggy.PluginManager("evomerge")
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        module = importlib.import_module(module_name)
        pm.register(module, name=module_name)
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        package, version = _distribution_of(ep)
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the CLI down
            _load_errors.append(
                PluginLoadError(
                    name=ep.name,
                    source=f"{package} {version} ({ep.value})",
                    error=f"{type(exc).__name__}: {exc}",
                    detail=traceback.format_exc(),
                )
            )
            continue
        _PLUGIN_SOURCES[ep.name] = (package, version)
    pm.check_pending()
    if os.environ.get("EVOMERGE_TRACE_HOOKS"):
        pm.trace.root.setwriter(lambda msg: print(msg, end="", file=sys.stderr))
        pm.enable_tracing()
    return pm



def plugin_load_errors() -> list[PluginLoadError]:
    """Plugins that could not be loaded, with the error each raised."""
    get_plugin_manager()
    return list(_load_errors)


def _package_of(name: str, plugin: object) -> tuple[str, str]:
    if name in _PLUGIN_SOURCES:
        return _PLUGIN_SOURCES[name]
    if isinstance(plugin, ModuleType) and plugin.__name__.startswith("evomerge."):
        from evomerge import __version__

        return "evomerge", __version__
    return "?", "?"


def list_plugins() -> list[PluginInfo]:
    """Every registered plugin with its package and the hooks it implements."""
    pm = get_plugin_manager()
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        package, version = _package_of(name, plugin)
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or []))
        infos.append(PluginInfo(name=name, package=package, version=version, hooks=hooks))
    return infos
