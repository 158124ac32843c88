"""The ``dfs`` merge method (inverse-variance selection), a plugin like any third-party one."""

from __future__ import annotations

from evomerge import hookimpl
from evomerge.merge import MergeMethod


@hookimpl
def evomerge_register_merge_methods() -> list[MergeMethod]:
    from evomerge_dfs.method import Dfs

    return [Dfs()]
