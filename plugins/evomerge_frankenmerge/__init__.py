"""The ``frankenmerge`` merge method (calibrated layer selection), a plugin like any third-party one."""

from __future__ import annotations

from evomerge import hookimpl
from evomerge.merge import MergeMethod


@hookimpl
def evomerge_register_merge_methods() -> list[MergeMethod]:
    from evomerge_frankenmerge.method import Frankenmerge

    return [Frankenmerge()]
