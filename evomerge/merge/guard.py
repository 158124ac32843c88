"""The checks every stage output passes, and the linear merge a failed stage falls back to.

A stage output must have every merged tensor, in the inputs' shapes, with no
NaN/Inf. A kernel that fails the check (or raises) is replaced by the plain
weighted average of the stage's sources, and the reason goes in its stage log;
only when that average is bad too are the inputs themselves to blame.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

import torch

from evomerge.merge.base import equal_weights
from evomerge.merge.conditional import any_conditional, resolve_weights_for
from evomerge.merge.config import StageDoc
from evomerge.merge.inputs import InputSet
from evomerge.merge.methods.linear import weighted_sum

Tensors = Mapping[str, torch.Tensor]


class BadStage(Exception):
    """A stage output failed a check (missing tensor, wrong shape, NaN/Inf); the message says which."""


def compute(x: torch.Tensor) -> torch.Tensor:
    """``x`` in a dtype merges are computed in (fp32 unless it is fp32/fp64 already)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)


def put(
    target: MutableMapping[str, torch.Tensor],
    key: str,
    value: torch.Tensor,
    final: bool,
    dtype: torch.dtype | None = None,
) -> None:
    """Store a stage result: in place into a preallocated output on the final stage.

    A final output with no preallocated tensor gets the inputs' dtype (``dtype``).
    """
    current = target.get(key) if final else None
    if current is not None:
        if current.shape != value.shape:
            raise BadStage(
                f"{key!r} has shape {tuple(value.shape)}, out has {tuple(current.shape)}"
            )
        if current.data_ptr() != value.data_ptr():
            current.copy_(value)
    elif final:
        target[key] = value.detach().to(dtype=dtype or value.dtype, copy=True)
    else:
        target[key] = value


def check_output(target: Mapping[str, torch.Tensor], inputs: InputSet) -> None:
    """Raise :class:`BadStage` unless ``target`` has every merged tensor, shaped and finite."""
    floats = []
    for key in inputs.keys:
        value = target.get(key)
        if value is None:
            raise BadStage(f"no output for {key!r}")
        shape = inputs.specs[key][0]
        if value.shape != shape:
            raise BadStage(f"{key!r} has shape {tuple(value.shape)}, expected {tuple(shape)}")
        if value.is_floating_point():
            floats.append((key, value))
    if not floats:
        return
    # A sum is NaN/Inf when any element is (one read pass, no full-size mask, one sync);
    # a suspicious sum (or an overflow of a finite sum) is confirmed element-wise.
    sums = torch.stack([v.sum().float() for _, v in floats])
    if bool(torch.isfinite(sums).all()):
        return
    for (key, value), total in zip(floats, sums.tolist(), strict=True):
        if not torch.isfinite(torch.tensor(total)) and not bool(torch.isfinite(value).all()):
            raise BadStage(f"NaN/Inf in {key!r}")


def linear_fallback(
    stage: StageDoc,
    env: Mapping[str, Tensors],
    target: MutableMapping[str, torch.Tensor],
    inputs: InputSet,
    final: bool,
) -> None:
    """Write the weighted average of ``stage``'s sources (its own weights if it has one per model)."""
    names = [m.model for m in stage.merged_models()] or stage.input_names()
    weights = stage.weights() if stage.models else []
    w = equal_weights(weights if len(weights) == len(names) else None, len(names))
    sources = [env[n] for n in names]
    per_tensor = any_conditional(None, w)
    for key in inputs.keys:
        if sources[0][key].is_floating_point():
            wk = resolve_weights_for(w, key) if per_tensor else w
            merged = weighted_sum([compute(s[key]) for s in sources], wk)
            put(target, key, merged, final, inputs.specs[key][1])
        else:
            put(target, key, sources[0][key], final)
