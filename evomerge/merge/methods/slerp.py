"""``slerp`` of three (or N) models: mergekit's multislerp, or the seed's pairwise chain.

``mode: chain`` is ``slerp(slerp(M1, M2, w2/(w1+w2)), M3, w3/(w1+w2+w3))`` (the
seed's ``slerp(slerp(M1,M2,0.5),M3,1/3)`` for equal weights), each step
mergekit's two-model SLERP: near-parallel pairs (``|cos| > 0.9995``) use linear
interpolation. ``mode: multislerp`` is mergekit's barycentric tangent-space
method, written as ``merge_method: multislerp`` so plain mergekit runs it; where
mergekit would raise (weighted mean of the unit vectors ~ 0, e.g. all-zero
tensors), this falls back to the linear merge. No input gives NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import torch

from evomerge.merge.base import MergeConfigError, MergekitAlias, Range
from evomerge.merge.decorator import merge_method
from evomerge.merge.methods.linear import weighted_sum

DOT_THRESHOLD = 0.9995  # mergekit's: above it, two tensors count as parallel


def slerp_pair(v0: torch.Tensor, v1: torch.Tensor, t: float, *, eps: float = 1e-8) -> torch.Tensor:
    """Two-tensor SLERP over the whole tensor, numerically mergekit's ``slerp``."""
    a, b = v0.reshape(-1), v1.reshape(-1)
    norm_a = torch.linalg.vector_norm(a)
    norm_b = torch.linalg.vector_norm(b)
    norm_a = torch.where(norm_a > eps, norm_a, 1)
    norm_b = torch.where(norm_b > eps, norm_b, 1)
    dot = float(torch.dot(a / norm_a, b / norm_b).clamp(-1, 1))
    if abs(dot) > DOT_THRESHOLD or a.numel() == 0:
        return torch.lerp(v0, v1, t)
    theta = torch.acos(torch.tensor(dot, dtype=torch.float64))
    sin_theta = torch.sin(theta)
    coef_a = float(torch.sin((1 - t) * theta) / sin_theta)
    coef_b = float(torch.sin(t * theta) / sin_theta)
    return torch.add(v0 * coef_a, v1, alpha=coef_b)


def slerp_chain(
    tensors: Sequence[torch.Tensor], weights: Sequence[float], *, eps: float = 1e-8
) -> torch.Tensor:
    """Fold inputs left to right, each step at ``t = w_k / Σ_{i≤k} w_i``."""
    result, total = tensors[0], float(weights[0])
    for tensor, weight in zip(tensors[1:], weights[1:], strict=True):
        total += float(weight)
        if total == 0.0:
            raise MergeConfigError("slerp chain: weights sum to zero")
        result = slerp_pair(result, tensor, float(weight) / total, eps=eps)
    return result if len(tensors) > 1 else result.clone()


def multislerp(
    tensors: Sequence[torch.Tensor], weights: Sequence[float], *, eps: float = 1e-8
) -> torch.Tensor:
    """mergekit's multislerp (normalized weights, no base), with a linear fallback for degenerate inputs."""
    if len(tensors) == 1:
        return tensors[0].clone()
    stacked = torch.stack(list(tensors)).reshape(len(tensors), -1)  # (N, D)
    w = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device)
    w = w / w.sum()
    norms = torch.linalg.vector_norm(stacked, dim=-1, keepdim=True)  # (N, 1)
    unit = stacked / (norms + eps)
    mean = (unit * w.view(-1, 1)).sum(0)
    mean_norm = torch.linalg.vector_norm(mean)
    if not bool(mean_norm >= eps):  # also catches NaN
        return weighted_sum(tensors, weights)
    mean = mean / mean_norm
    tangent = unit - (unit * mean).sum(-1, keepdim=True) * mean
    tangent_result = (tangent * w.view(-1, 1)).sum(0)
    tangent_norm = torch.linalg.vector_norm(tangent_result) + eps
    result = mean * torch.cos(tangent_norm) + tangent_result * (
        torch.sin(tangent_norm) / tangent_norm
    )
    result = (result * (norms.squeeze(-1) * w).sum()).view(tensors[0].shape)
    if not bool(torch.isfinite(result).all()):
        return weighted_sum(tensors, weights)
    return result


@merge_method(
    "slerp",
    stage="interpolation",
    mergekit=[
        MergekitAlias("slerp_chain", {"mode": "chain"}),
        MergekitAlias("multislerp", {"mode": "multislerp"}, native=True),
    ],
)
def slerp(
    tensors: Sequence[torch.Tensor],
    *,
    weights: Sequence[float],
    mode: Annotated[Literal["chain", "multislerp"], "multislerp or chain"] = "chain",
    eps: Annotated[float, Range(0, None), "norm floor"] = 1e-8,
) -> torch.Tensor:
    """Spherical interpolation of N inputs; ``mode`` picks multislerp or the pairwise chain."""
    if mode == "multislerp":
        return multislerp(tensors, weights, eps=eps)
    return slerp_chain(tensors, weights, eps=eps)
