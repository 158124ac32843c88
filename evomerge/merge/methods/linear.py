"""``linear``: the weighted mean, numerically mergekit's ``linear`` (same name in YAML)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from evomerge.merge.base import MergekitAlias, MethodParameter, TensorMergeMethod


def weighted_sum(
    tensors: Sequence[torch.Tensor], weights: Sequence[float], *, normalize: bool = True
) -> torch.Tensor:
    """``Σ w_i x_i`` (divided by ``Σ w_i`` when ``normalize``), accumulated in place."""
    out = torch.mul(tensors[0], float(weights[0]))
    for tensor, weight in zip(tensors[1:], weights[1:], strict=True):
        out.add_(tensor, alpha=float(weight))
    if normalize:
        total = float(sum(weights))
        if total != 0.0:
            out.div_(total)
    return out


class Linear(TensorMergeMethod):
    """``Σ w_i·M_i / Σ w_i``: the baseline and the fallback of every stage."""

    stage = "interpolation"

    def name(self) -> str:
        return "linear"

    def parameters(self) -> list[MethodParameter]:
        return [
            *super().parameters(),
            MethodParameter("normalize", bool, True, "divide by the sum of the weights"),
        ]

    def mergekit_aliases(self) -> list[MergekitAlias]:
        return [MergekitAlias("linear", native=True)]

    def merge_tensors(
        self,
        tensors: Sequence[torch.Tensor],
        *,
        weights: Sequence[float],
        name: str,
        params: Mapping[str, Any],
    ) -> torch.Tensor:
        return weighted_sum(tensors, weights, normalize=bool(params.get("normalize", True)))
