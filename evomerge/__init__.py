"""evomerge: plugin-based evolutionary model merging.

Importing evomerge has no side effects: no plugin is imported and nothing is
registered until :func:`load_plugins` (the CLI calls it; every registry calls
the plugin manager on first use). After ``evomerge.load_plugins()``,
``AutoModelForCausalLM.from_pretrained(dir)`` loads any family a plugin adds.

For plugins: ``evomerge.hookimpl`` marks hook implementations,
``@evomerge.merge_method`` makes a function a merge method and
``evomerge.Range`` bounds its parameters (docs/plugins.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from evomerge.hookspecs import hookimpl

if TYPE_CHECKING:
    import pluggy

    from evomerge.merge.base import Range
    from evomerge.merge.decorator import merge_method

__version__ = "0.1.0"

__all__ = ["Range", "__version__", "hookimpl", "load_plugins", "merge_method"]


def load_plugins() -> pluggy.PluginManager:
    """Load the built-in and entry-point plugins (once) and register their families with transformers.

    Cached: the manager is built on the first call; later calls only return it.
    """
    from evomerge.architectures import register_with_transformers
    from evomerge.plugins import get_plugin_manager

    pm = get_plugin_manager()
    register_with_transformers()
    return pm


def __getattr__(name: str) -> Any:
    """``merge_method`` and ``Range`` on first use: they import torch, ``import evomerge`` does not."""
    if name == "merge_method":
        from evomerge.merge.decorator import merge_method

        return merge_method
    if name == "Range":
        from evomerge.merge.base import Range

        return Range
    raise AttributeError(f"module 'evomerge' has no attribute {name!r}")
