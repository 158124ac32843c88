"""``linear``: the weighted mean, numerically mergekit's ``linear`` (same name in YAML)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch

from evomerge.merge.base import MergekitAlias
from evomerge.merge.decorator import merge_method


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


@merge_method("linear", stage="interpolation", mergekit=[MergekitAlias("linear", native=True)])
def linear(
    tensors: Sequence[torch.Tensor],
    *,
    weights: Sequence[float],
    normalize: Annotated[bool, "divide by the sum of the weights"] = True,
) -> torch.Tensor:
    """``Σ w_i·M_i / Σ w_i``: the baseline and the fallback of every stage."""
    return weighted_sum(tensors, weights, normalize=normalize)
