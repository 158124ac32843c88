"""The in-memory merge engine: the evolution loop's hot path.

Runs a combo (or any multi-stage config) on resident state dicts, CPU or CUDA,
with no disk I/O, writing the final stage into a caller-owned output state dict
(typically ``model.state_dict()``, so the model is updated in place).
Intermediate stage outputs and task vectors are cached on the :class:`InputSet`,
so the eight generation-0 combos compute S1 twice, not eight times, and each
``τ_i`` once per reference. Every stage output is checked for NaN/Inf and
shape; a bad stage is replaced by the linear merge of its inputs and the reason
is returned in the stage log. The numbers equal mergekit's for the same
generated YAML (tests/test_merge_mergekit.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from evomerge.merge.base import (
    MergeConfigError,
    ModelMergeContext,
    ModelMergeMethod,
    TaskArithmeticMethod,
    TensorMergeMethod,
    apply_task_arithmetic,
    equal_weights,
)
from evomerge.merge.combos import StageParams, combo_config, label_of, resolved_slices_doc
from evomerge.merge.conditional import any_conditional, for_tensor, resolve_weights_for
from evomerge.merge.config import ComboConfig, StageDoc, stage_parameters
from evomerge.merge.inputs import InputSet, fill_aliases
from evomerge.merge.methods.linear import weighted_sum
from evomerge.merge.registry import MethodRegistry, get_registry

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Tensors = Mapping[str, torch.Tensor]
Calibration = Callable[["PreTrainedModel"], float]


class StageError(RuntimeError):
    """A stage and its linear fallback both produced NaN/Inf (the inputs themselves are bad)."""


class _BadStage(Exception):
    pass


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
    """What ``merge_combo`` did; ``config_yaml`` reproduces it (frankenmerge as concrete slices)."""

    label: str | None
    stage_logs: list[StageLog]
    frankenmerge_slices: list[dict[str, Any]] | None
    config: ComboConfig

    @property
    def config_yaml(self) -> str:
        return self.config.to_yaml()

    @property
    def fallbacks(self) -> list[str]:
        return [
            f"stage {s.stage} ({s.method}): {s.fallback}" for s in self.stage_logs if s.fallback
        ]


def _compute(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)


def _digest(obj: Any) -> str:
    return hashlib.blake2b(
        json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=12
    ).hexdigest()


class MergeEngine:
    """Runs combos on resident tensors. One engine per process is enough; it holds no tensors."""

    def __init__(
        self,
        params: StageParams | None = None,
        calibration: Calibration | None = None,
        *,
        registry: MethodRegistry | None = None,
    ):
        self.params = params or StageParams()
        self.calibration = calibration
        self.registry = registry or get_registry()

    def combo_config(self, label: str, inputs: InputSet, *, seed: int) -> ComboConfig:
        """The generated config of ``label`` over ``inputs`` (before frankenmerge is resolved)."""
        base = inputs.base_name if inputs.base is not None else None
        return combo_config(
            label, inputs.names, base, self.params, seed=seed, registry=self.registry
        )

    def merge_combo(
        self,
        label: str,
        inputs: InputSet | Sequence[Tensors],
        *,
        out: MutableMapping[str, torch.Tensor],
        seed: int,
        scratch_model: PreTrainedModel | None = None,
    ) -> ComboResult:
        """Merge ``inputs`` with combo ``label`` into ``out`` (written in place)."""
        if not isinstance(inputs, InputSet):
            inputs = InputSet(inputs, cache=False)
        config = self.combo_config(label, inputs, seed=seed)
        return self.run_config(config, inputs, out=out, scratch_model=scratch_model, label=label)

    def run_config(
        self,
        config: ComboConfig,
        inputs: InputSet,
        *,
        out: MutableMapping[str, torch.Tensor],
        scratch_model: PreTrainedModel | None = None,
        label: str | None = None,
    ) -> ComboResult:
        """Execute any multi-stage config whose models are ``inputs.names`` / earlier stage names."""
        env: dict[str, Tensors] = inputs.lookup()
        keys: dict[str, str] = {name: f"input:{name}" for name in env}
        logs: list[StageLog] = []
        resolved_stages: list[StageDoc] = []
        slices_out: list[dict[str, Any]] | None = None
        last = len(config.stages) - 1
        for index, stage in enumerate(config.stages):
            missing = [m for m in stage.input_names() if m not in env]
            if missing:
                raise MergeConfigError(
                    f"stage {index + 1} refers to {missing[0]!r}, which is neither an input "
                    f"({', '.join(inputs.names)}) nor an earlier stage"
                )
            final = index == last
            key = self._stage_key(stage, keys)
            if not final and inputs.cache and key in inputs.stage_cache:
                tensors, log = inputs.stage_cache[key]
                logs.append(StageLog(**{**log.__dict__, "cached": True, "seconds": 0.0}))
                env[stage.name or ""] = tensors
                keys[stage.name or ""] = key
                resolved_stages.append(stage)
                continue
            target: MutableMapping[str, torch.Tensor] = out if final else {}
            log, resolved = self._run_stage(
                index, stage, env, keys, target, inputs, final=final, model=scratch_model
            )
            logs.append(log)
            resolved_stages.append(resolved)
            if resolved.slices is not None and resolved is not stage:
                slices_out = [
                    {"model": s.model, "layer_range": list(s.layer_range)} for s in resolved.slices
                ]
            if not final:
                env[stage.name or ""] = target
                keys[stage.name or ""] = key
                if inputs.cache:
                    inputs.stage_cache[key] = (dict(target), log)
        done = ComboConfig(stages=resolved_stages, comment=config.comment)
        if label is None:
            label = label_of(config, self.params, self.registry)
        return ComboResult(
            label=label, stage_logs=logs, frankenmerge_slices=slices_out, config=done
        )

    # -- one stage ------------------------------------------------------------
    def _run_stage(
        self,
        index: int,
        stage: StageDoc,
        env: dict[str, Tensors],
        keys: dict[str, str],
        target: MutableMapping[str, torch.Tensor],
        inputs: InputSet,
        *,
        final: bool,
        model: PreTrainedModel | None,
    ) -> tuple[StageLog, StageDoc]:
        resolved, params = stage_parameters(stage, self.registry)
        method = resolved.method
        start = time.perf_counter()
        log = StageLog(
            stage=index + 1,
            name=stage.name or "final",
            method=method.name(),
            merge_method=stage.merge_method,
            seconds=0.0,
        )
        out_stage = stage
        try:
            if isinstance(method, TaskArithmeticMethod):
                self._task_arithmetic(method, stage, params, env, keys, target, inputs, final)
            elif isinstance(method, TensorMergeMethod):
                self._tensorwise(method, stage, params, env, target, inputs, final)
            elif isinstance(method, ModelMergeMethod):
                ctx = ModelMergeContext(
                    sources=[env[m] for m in stage.input_names()],
                    source_names=stage.input_names(),
                    out=target,
                    params=params,
                    slices=[(s.model, *s.layer_range) for s in stage.slices]
                    if stage.slices
                    else None,
                    model=model,
                    calibration=self.calibration,
                )
                info = method.merge_model(ctx)
                log.details.update(info.details)
                if stage.slices is None and info.slices:
                    out_stage = resolved_slices_doc(stage, info.slices)
            else:
                raise MergeConfigError(f"method {method.name()!r} has no kernel the engine knows")
            fill_aliases(target, inputs, final)
            self._check(target, inputs)
        except MergeConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - any kernel failure falls back, and is reported
            log.fallback = (
                str(exc) if isinstance(exc, _BadStage) else f"{type(exc).__name__}: {exc}"
            )
            self._linear_fallback(stage, env, target, inputs, final)
            fill_aliases(target, inputs, final)
            try:
                self._check(target, inputs)
            except _BadStage as bad:
                raise StageError(
                    f"stage {index + 1} ({method.name()}) failed ({log.fallback}) and so did its "
                    f"linear fallback ({bad}): the inputs contain NaN/Inf"
                ) from None
            out_stage = stage
        log.seconds = time.perf_counter() - start
        return log, out_stage

    def _tensorwise(
        self,
        method: TensorMergeMethod,
        stage: StageDoc,
        params: Mapping[str, Any],
        env: Mapping[str, Tensors],
        target: MutableMapping[str, torch.Tensor],
        inputs: InputSet,
        final: bool,
    ) -> None:
        entries = stage.merged_models()
        sources = [env[m.model] for m in entries]
        weights = equal_weights(stage.weights(), len(sources))
        per_tensor = any_conditional(params, weights)
        for key in inputs.keys:
            first = sources[0][key]
            if not first.is_floating_point():
                _put(target, key, first, final)
                continue
            xs = [_compute(s[key]) for s in sources]
            w, p = for_tensor(weights, params, key) if per_tensor else (weights, params)
            merged = method.merge_tensors(xs, weights=w, name=key, params=p)
            _put(target, key, merged, final, inputs.models[0][key].dtype)

    def _task_arithmetic(
        self,
        method: TaskArithmeticMethod,
        stage: StageDoc,
        params: Mapping[str, Any],
        env: Mapping[str, Tensors],
        keys: Mapping[str, str],
        target: MutableMapping[str, torch.Tensor],
        inputs: InputSet,
        final: bool,
    ) -> None:
        assert stage.base_model is not None
        reference = env[stage.base_model]
        anchor_name = stage.anchor()
        anchor = env[anchor_name] if anchor_name else None
        entries = stage.merged_models()
        sources = [env[m.model] for m in entries]
        weights = equal_weights(stage.weights(), len(sources))
        cache: dict[str, list[torch.Tensor]] | None = None
        if inputs.cache:
            dkey = _digest([keys.get(stage.base_model), [keys.get(m.model) for m in entries]])
            cache = inputs.delta_cache.setdefault(dkey, {})
        per_tensor = any_conditional(params, weights)
        for key in inputs.keys:
            ref = reference[key]
            if not ref.is_floating_point():
                _put(target, key, ref, final)
                continue
            ref = _compute(ref)
            deltas = cache.get(key) if cache is not None else None
            if deltas is None:
                deltas = [_compute(s[key]) - ref for s in sources]
                if cache is not None:
                    cache[key] = deltas
            w, p = for_tensor(weights, params, key) if per_tensor else (weights, params)
            merged = apply_task_arithmetic(
                method,
                ref,
                deltas,
                weights=w,
                name=key,
                params=p,
                anchor=_compute(anchor[key]) if anchor is not None else None,
            )
            _put(target, key, merged, final, inputs.models[0][key].dtype)

    def _linear_fallback(
        self,
        stage: StageDoc,
        env: Mapping[str, Tensors],
        target: MutableMapping[str, torch.Tensor],
        inputs: InputSet,
        final: bool,
    ) -> None:
        names = [m.model for m in stage.merged_models()] or stage.input_names()
        weights = stage.weights() if stage.models else []
        w = equal_weights(weights if len(weights) == len(names) else None, len(names))
        sources = [env[n] for n in names]
        per_tensor = any_conditional(None, w)
        for key in inputs.keys:
            if sources[0][key].is_floating_point():
                wk = resolve_weights_for(w, key) if per_tensor else w
                merged = weighted_sum([_compute(s[key]) for s in sources], wk)
                _put(target, key, merged, final, inputs.models[0][key].dtype)
            else:
                _put(target, key, sources[0][key], final)

    @staticmethod
    def _check(target: Mapping[str, torch.Tensor], inputs: InputSet) -> None:
        reference = inputs.models[0]
        floats = []
        for key in inputs.keys:
            value = target.get(key)
            if value is None:
                raise _BadStage(f"no output for {key!r}")
            if value.shape != reference[key].shape:
                raise _BadStage(
                    f"{key!r} has shape {tuple(value.shape)}, expected {tuple(reference[key].shape)}"
                )
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
                raise _BadStage(f"NaN/Inf in {key!r}")

    @staticmethod
    def _stage_key(stage: StageDoc, keys: Mapping[str, str]) -> str:
        doc = stage.to_dict()
        doc.pop("name", None)
        refs = {name: keys.get(name, name) for name in stage.input_names()}
        return _digest([doc, refs])


def _put(
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
            raise _BadStage(
                f"{key!r} has shape {tuple(value.shape)}, out has {tuple(current.shape)}"
            )
        if current.data_ptr() != value.data_ptr():
            current.copy_(value)
    elif final:
        target[key] = value.detach().to(dtype=dtype or value.dtype, copy=True)
    else:
        target[key] = value
