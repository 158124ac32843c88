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


class TensorStep:
    """A tensor-wise stage ready to compute any one key: the engine's unit of work.

    ``value(key)`` reads only that key of each source, so the engine can run a
    whole stage key by key (:func:`run_tensorwise`, :func:`run_task_arithmetic`)
    or chain several stages per key without holding any intermediate state dict
    (:mod:`evomerge.merge.streaming`). Floating results come back in the compute
    dtype (fp32); a non-floating tensor is its first source's, as is.
    """

    def __init__(self, method: TensorMergeMethod | TaskArithmeticMethod, call: StageCall) -> None:
        self.method, self.call = method, call
        stage = call.stage
        self.weights = equal_weights(stage.weights(), len(stage.merged_models()))
        self.per_tensor = any_conditional(call.params, self.weights)
        self.sources = [call.env[m.model] for m in stage.merged_models()]
        self.task_arithmetic = isinstance(method, TaskArithmeticMethod)
        self.reference: Tensors | None = None
        self.anchor: Tensors | None = None
        self.cache: dict[str, list[torch.Tensor]] | None = None
        if self.task_arithmetic:
            assert stage.base_model is not None
            self.reference = call.env[stage.base_model]
            anchor_name = stage.anchor()
            self.anchor = call.env[anchor_name] if anchor_name else None
            self.cache = _delta_cache(call)

    def _for(self, key: str) -> tuple[Any, Mapping[str, Any]]:
        if self.per_tensor:
            return for_tensor(self.weights, self.call.params, key)
        return self.weights, self.call.params

    def value(self, key: str) -> tuple[torch.Tensor, bool]:
        """(this stage's tensor ``key``, whether it is floating point)."""
        first = (self.reference if self.reference is not None else self.sources[0])[key]
        if not first.is_floating_point():
            return first, False
        w, p = self._for(key)
        if not self.task_arithmetic:
            xs = [compute(s[key]) for s in self.sources]
            return self.method.merge_tensors(xs, weights=w, name=key, params=p), True  # type: ignore[union-attr]
        ref = compute(first)
        deltas = self.cache.get(key) if self.cache is not None else None
        if deltas is None:
            deltas = [compute(s[key]) - ref for s in self.sources]
            if self.cache is not None:
                self.cache[key] = deltas
        merged = apply_task_arithmetic(
            self.method,  # type: ignore[arg-type]
            ref,
            deltas,
            weights=w,
            name=key,
            params=p,
            anchor=compute(self.anchor[key]) if self.anchor is not None else None,
        )
        return merged, True

    def put(self, key: str, value: torch.Tensor, floating: bool) -> None:
        """Store ``value`` in the stage's target (the inputs' dtype when it is the final output)."""
        call = self.call
        dtype = call.inputs.specs[key][1] if floating else None
        put(call.target, key, value, call.final, dtype)


def run_tensorwise(method: TensorMergeMethod, call: StageCall) -> None:
    """Merge tensor by tensor: ``method.merge_tensors`` over the same key of every source."""
    step = TensorStep(method, call)
    for key in call.inputs.keys:
        step.put(key, *step.value(key))


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
    step = TensorStep(method, call)
    for key in call.inputs.keys:
        step.put(key, *step.value(key))


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
