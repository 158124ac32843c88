"""What a merge reports: one :class:`StageLog` per stage and the :class:`ComboResult` of a config.

A module of its own so that :mod:`evomerge.merge.inputs` (whose stage cache
stores logs) and :mod:`evomerge.merge.engine` (which writes them) both import
it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from evomerge.merge.config import ComboConfig


class StageError(RuntimeError):
    """A stage and its linear fallback both produced NaN/Inf (the inputs themselves are bad)."""


@dataclass
class StageLog:
    """One stage of one merge: what ran, how long, and whether it fell back to linear (and why)."""

    stage: int
    name: str
    method: str
    merge_method: str
    seconds: float
    fallback: str | None = None
    cached: bool = False
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class ComboResult:
    """What a merge did; ``config_yaml`` reproduces it (a layer-selecting stage as concrete slices).

    ``resolved_slices``: the ``{"model", "layer_range"}`` slices a stage chose at
    merge time (a selection method that searches layer sources), else None.
    """

    label: str | None
    stage_logs: list[StageLog]
    resolved_slices: list[dict[str, Any]] | None
    config: ComboConfig

    @property
    def config_yaml(self) -> str:
        return self.config.to_yaml()

    @property
    def fallbacks(self) -> list[str]:
        return [
            f"stage {s.stage} ({s.method}): {s.fallback}" for s in self.stage_logs if s.fallback
        ]
