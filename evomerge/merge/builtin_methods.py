"""Core merge methods (linear, slerp, dare, ties), registered exactly like a plugin's."""

from __future__ import annotations

from evomerge import hookimpl
from evomerge.merge.base import MergeMethod


@hookimpl
def evomerge_register_merge_methods() -> list[MergeMethod]:
    from evomerge.merge.methods.dare import Dare
    from evomerge.merge.methods.linear import Linear
    from evomerge.merge.methods.slerp import Slerp
    from evomerge.merge.methods.ties import Ties

    return [Linear(), Slerp(), Dare(), Ties()]
