"""The ``dfs`` merge method (inverse-variance selection), a plugin like any third-party one.

``dfs`` is made with ``@evomerge.merge_method`` in ``evomerge_dfs.method``:
imported here, it is registered when evomerge loads the plugin, with no hook.
"""

from __future__ import annotations

from evomerge_dfs import method

__all__ = ["method"]
