"""``dfs``: inverse-variance weighting of the selection stage's sources against their consensus.

For each tensor (option: each output row), with ``c`` the mean of the sources,
source ``j`` gets importance ``1/(mean((X_j − c)²) + eps)`` and the result is
``Σ imp_j·X_j / Σ imp_j``. A source close to the consensus (a stable feature)
weighs more; an outlier specialist weighs little where it is an outlier. A
source with 10× smaller deviation weighs ~100× more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from evomerge.merge import MethodParameter, TensorMergeMethod


def inverse_variance_merge(
    tensors: Sequence[torch.Tensor], *, per_row: bool = False, eps: float = 1e-12
) -> torch.Tensor:
    """Consensus-deviation weighted mean; ``per_row`` scores each output row (ndim >= 2) separately.

    Written as a loop of in-place updates (no stacked copy of the sources):
    the selection stage runs on every combo of the evolution loop.
    """
    n = len(tensors)
    consensus = tensors[0].clone()
    for x in tensors[1:]:
        consensus.add_(x)
    consensus.div_(n)
    rows = per_row and consensus.dim() >= 2
    reduce_dims = tuple(range(1, consensus.dim()))
    importances = []
    for x in tensors:
        if rows:
            deviation = (
                (x - consensus).square_().mean(dim=reduce_dims, keepdim=True)
            )  # (rows, 1...)
        else:  # one fused pass: ||x - c||² / n
            deviation = torch.dist(x, consensus).square_().div_(max(1, x.numel()))
        importances.append((deviation + eps).reciprocal_())
    total = importances[0].clone()
    for imp in importances[1:]:
        total.add_(imp)
    result = consensus.zero_()
    for x, imp in zip(tensors, importances, strict=True):
        result.addcmul_(x, imp / total)
    return result


class Dfs(TensorMergeMethod):
    """Deep feature selection as inverse-variance weighting (docs/merging.md "dfs")."""

    stage = "selection"

    def name(self) -> str:
        return "dfs"

    def parameters(self) -> list[MethodParameter]:
        return [
            MethodParameter(
                "per_row", bool, False, "one importance per output row, not per tensor"
            ),
            MethodParameter("eps", float, 1e-12, "floor of the deviation"),
        ]

    def merge_tensors(
        self,
        tensors: Sequence[torch.Tensor],
        *,
        weights: Sequence[float],
        name: str,
        params: Mapping[str, Any],
    ) -> torch.Tensor:
        return inverse_variance_merge(
            tensors, per_row=bool(params.get("per_row", False)), eps=float(params.get("eps", 1e-12))
        )
