"""The engine's per-kernel stage runners: tensor-wise, task arithmetic, whole-model.

Each writes one stage of a config into ``target`` from the stage environment
``env`` (input and earlier-stage state dicts by name). The engine picks the
runner by the method's kernel kind and wraps it in the output check and the
linear fallback (:mod:`evomerge.merge.guard`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from evomerge.merge.base import (
    ModelMergeContext,
    ModelMergeMethod,
    TaskArithmeticMethod,
    TensorMergeMethod,
    apply_task_arithmetic,
    equal_weights,
)
from evomerge.merge.conditional import any_conditional, for_tensor
from evomerge.merge.config import StageDoc
from evomerge.merge.guard import compute, put
from evomerge.merge.inputs import InputSet

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Tensors = Mapping[str, torch.Tensor]
Calibration = Callable[["PreTrainedModel"], float]


def digest(obj: Any) -> str:
    """A short stable hash of a JSON-able object (cache keys of stages and task vectors)."""
    return hashlib.blake2b(
        json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=12
    ).hexdigest()


@dataclass
class StageCall:
    """One stage to run: the stage, its resolved parameters, and where it reads and writes."""

    stage: StageDoc
    params: Mapping[str, Any]
    env: Mapping[str, Tensors]
    keys: Mapping[str, str]  # env name -> cache identity of its tensors
    target: MutableMapping[str, torch.Tensor]
    inputs: InputSet
    final: bool


def run_tensorwise(method: TensorMergeMethod, call: StageCall) -> None:
    """Merge tensor by tensor: ``method.merge_tensors`` over the same key of every source."""
    inputs = call.inputs
    sources = [call.env[m.model] for m in call.stage.merged_models()]
    weights = equal_weights(call.stage.weights(), len(sources))
    per_tensor = any_conditional(call.params, weights)  # per-layer-group values (genomes)
    for key in inputs.keys:
        first = sources[0][key]
        if not first.is_floating_point():
            put(call.target, key, first, call.final)
            continue
        xs = [compute(s[key]) for s in sources]
        w, p = for_tensor(weights, call.params, key) if per_tensor else (weights, call.params)
        merged = method.merge_tensors(xs, weights=w, name=key, params=p)
        put(call.target, key, merged, call.final, inputs.models[0][key].dtype)


def _delta_cache(call: StageCall) -> dict[str, list[torch.Tensor]] | None:
    """The task vectors of this (reference, sources) pair, shared across combos of one InputSet."""
    if not call.inputs.cache:
        return None
    stage = call.stage
    key = digest(
        [
            call.keys.get(stage.base_model or ""),
            [call.keys.get(m.model) for m in stage.merged_models()],
        ]
    )
    return call.inputs.delta_cache.setdefault(key, {})


def run_task_arithmetic(method: TaskArithmeticMethod, call: StageCall) -> None:
    """Merge task vectors ``τ_i = x_i - base`` (computed once per reference and cached)."""
    stage, inputs = call.stage, call.inputs
    assert stage.base_model is not None
    reference = call.env[stage.base_model]
    anchor_name = stage.anchor()
    anchor = call.env[anchor_name] if anchor_name else None
    sources = [call.env[m.model] for m in stage.merged_models()]
    weights = equal_weights(stage.weights(), len(sources))
    cache = _delta_cache(call)
    per_tensor = any_conditional(call.params, weights)
    for key in inputs.keys:
        ref = reference[key]
        if not ref.is_floating_point():
            put(call.target, key, ref, call.final)
            continue
        ref = compute(ref)
        deltas = cache.get(key) if cache is not None else None
        if deltas is None:
            deltas = [compute(s[key]) - ref for s in sources]
            if cache is not None:
                cache[key] = deltas
        w, p = for_tensor(weights, call.params, key) if per_tensor else (weights, call.params)
        merged = apply_task_arithmetic(
            method,
            ref,
            deltas,
            weights=w,
            name=key,
            params=p,
            anchor=compute(anchor[key]) if anchor is not None else None,
        )
        put(call.target, key, merged, call.final, inputs.models[0][key].dtype)


def run_whole_model(
    method: ModelMergeMethod,
    call: StageCall,
    *,
    model: PreTrainedModel | None,
    calibration: Calibration | None,
) -> Any:
    """Hand the whole stage to the method (layer selection); returns its ``MergeInfo``."""
    stage = call.stage
    ctx = ModelMergeContext(
        sources=[call.env[m] for m in stage.input_names()],
        source_names=stage.input_names(),
        out=call.target,
        params=call.params,
        slices=[(s.model, *s.layer_range) for s in stage.slices] if stage.slices else None,
        model=model,
        calibration=calibration,
    )
    return method.merge_model(ctx)
