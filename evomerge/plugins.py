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
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType

import pluggy

from evomerge import hookspecs

ENTRY_POINT_GROUP = "evomerge"

#: Core built-ins, registered exactly like third-party plugins.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "evomerge.merge.builtin_methods",
    "evomerge.fitness.builtin_terms",
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


_load_errors: list[PluginLoadError] = []
_PLUGIN_SOURCES: dict[str, tuple[str, str]] = {}


def _distribution_of(ep: EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", "?"
    return dist.metadata["Name"], dist.version


_MANAGER: pluggy.PluginManager | None = None


def _mid_import(module_name: str) -> bool:
    """True while ``module_name`` is being imported (it imported evomerge, which led here)."""
    module = sys.modules.get(module_name)
    spec = getattr(module, "__spec__", None)
    return module is not None and bool(getattr(spec, "_initializing", False))


def get_plugin_manager() -> pluggy.PluginManager:
    """The manager holding the built-ins and every entry-point plugin (built once).

    A plugin whose own import triggered this call (``import evomerge`` at its top,
    before its hooks exist) is skipped for now and the manager is not cached, so
    the next call, after that import finished, registers it properly.
    """
    global _MANAGER
    if _MANAGER is not None:
        return _MANAGER
    deferred = False
    pm = pluggy.PluginManager("evomerge")
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        module = importlib.import_module(module_name)
        pm.register(module, name=module_name)
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        if _mid_import(ep.module):
            deferred = True
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
    if not deferred:
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
