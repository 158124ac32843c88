"""``dfs``: inverse-variance weighting of the selection stage's sources against their consensus.

For each tensor (option: each output row), with ``c`` the mean of the sources,
source ``j`` gets importance ``1/(mean((X_j − c)²) + eps)`` and the result is
``Σ imp_j·X_j / Σ imp_j``. A source close to the consensus (a stable feature)
weighs more; an outlier specialist weighs little where it is an outlier. A
source with 10× smaller deviation weighs ~100× more.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch

import evomerge


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


@evomerge.merge_method("dfs", stage="selection")
def dfs(
    tensors: Sequence[torch.Tensor],
    *,
    per_row: Annotated[bool, "one importance per output row, not per tensor"] = False,
    eps: Annotated[float, evomerge.Range(0, None), "floor of the deviation"] = 1e-12,
) -> torch.Tensor:
    """Deep feature selection as inverse-variance weighting (docs/merging.md, selection stage)."""
    return inverse_variance_merge(tensors, per_row=per_row, eps=eps)
