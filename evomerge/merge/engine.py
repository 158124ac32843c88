"""The in-memory merge engine: the evolution loop's hot path.

Runs a combo (or any multi-stage config) on resident state dicts, CPU or CUDA,
with no disk I/O, writing the final stage into a caller-owned output state dict
(typically ``model.state_dict()``, so the model is updated in place).
Intermediate stage outputs and task vectors are cached on the :class:`InputSet`,
so the eight generation-0 combos compute S1 twice, not eight times, and each
``τ_i`` once per reference. Every stage output is checked for NaN/Inf and
shape; a bad stage is replaced by the linear merge of its inputs and the reason
is returned in the stage log (:mod:`evomerge.merge.guard`). The kernels
themselves run in :mod:`evomerge.merge.stages`. The numbers equal mergekit's
for the same generated YAML (tests/test_merge_mergekit.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from evomerge.merge.base import (
    MergeConfigError,
    ModelMergeMethod,
    TaskArithmeticMethod,
    TensorMergeMethod,
)
from evomerge.merge.combos import StageParams, combo_config, label_of, resolved_slices_doc
from evomerge.merge.config import ComboConfig, StageDoc, stage_parameters
from evomerge.merge.guard import BadStage, check_output, linear_fallback
from evomerge.merge.inputs import InputSet, fill_aliases
from evomerge.merge.registry import MethodRegistry, ResolvedName, get_registry
from evomerge.merge.results import ComboResult, StageError, StageLog
from evomerge.merge.stages import (
    Calibration,
    StageCall,
    digest,
    run_task_arithmetic,
    run_tensorwise,
    run_whole_model,
)
from evomerge.merge.streaming import Chain, ChainFailed, plan_chains, run_chain

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Tensors = Mapping[str, torch.Tensor]

__all__ = ["ComboResult", "InputSet", "MergeEngine", "StageError", "StageLog"]


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
        """The generated config of ``label`` over ``inputs`` (before layer selection is resolved)."""
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
        stream: bool = True,
    ) -> ComboResult:
        """Execute any multi-stage config whose models are ``inputs.names`` / earlier stage names.

        Runs of tensor-wise stages are streamed key by key when the inputs keep no
        stage cache (evomerge/merge/streaming.py): same numbers, no intermediate
        state dicts. ``stream=False`` runs every stage whole (the guard's path).
        """
        env: dict[str, Tensors] = inputs.lookup()
        keys: dict[str, str] = {name: f"input:{name}" for name in env}
        logs: list[StageLog] = []
        resolved_stages: list[StageDoc] = []
        slices_out: list[dict[str, Any]] | None = None
        last = len(config.stages) - 1
        for index, stage in enumerate(config.stages):
            earlier = {s.name for s in config.stages[:index]}
            missing = [m for m in stage.input_names() if m not in env and m not in earlier]
            if missing:
                raise MergeConfigError(
                    f"stage {index + 1} refers to {missing[0]!r}, which is neither an input "
                    f"({', '.join(inputs.names)}) nor an earlier stage"
                )
        chains: dict[int, Chain] = {}
        resolved_params: list[tuple[ResolvedName, dict[str, Any]]] = []
        if stream and not inputs.cache:
            resolved_params = [stage_parameters(s, self.registry) for s in config.stages]
            methods = [r.method for r, _ in resolved_params]
            chains = {c.start: c for c in plan_chains(config, methods)}
        index = 0
        try:
            while index <= last:
                stage = config.stages[index]
                chain = chains.get(index)
                if chain is not None:
                    chain_logs = self._run_chain(
                        chain, config, resolved_params, env, keys, inputs, out
                    )
                    logs.extend(chain_logs)
                    resolved_stages.extend(config.stages[chain.start : chain.end])
                    index = chain.end
                    continue
                log, resolved = self._stage_into_env(
                    index, stage, env, keys, inputs, out if index == last else None, scratch_model
                )
                logs.append(log)
                resolved_stages.append(resolved)
                if resolved.slices is not None and resolved is not stage:
                    slices_out = [
                        {"model": s.model, "layer_range": list(s.layer_range)}
                        for s in resolved.slices
                    ]
                index += 1
        except ChainFailed:
            return self.run_config(
                config, inputs, out=out, scratch_model=scratch_model, label=label, stream=False
            )
        inputs.release_fetched()
        done = ComboConfig(stages=resolved_stages, comment=config.comment)
        if label is None:
            label = label_of(config, self.params, self.registry)
        return ComboResult(label=label, stage_logs=logs, resolved_slices=slices_out, config=done)

    def _stage_into_env(
        self,
        index: int,
        stage: StageDoc,
        env: dict[str, Tensors],
        keys: dict[str, str],
        inputs: InputSet,
        out: MutableMapping[str, torch.Tensor] | None,
        model: PreTrainedModel | None,
    ) -> tuple[StageLog, StageDoc]:
        """Run one stage (``out``: the final output, else None) or reuse its cached intermediate."""
        final = out is not None
        key = self._stage_key(stage, keys)
        name = stage.name or ""
        if not final and inputs.cache and key in inputs.stage_cache:
            tensors, log = inputs.stage_cache[key]
            env[name], keys[name] = tensors, key
            return StageLog(**{**log.__dict__, "cached": True, "seconds": 0.0}), stage
        target: MutableMapping[str, torch.Tensor] = out if out is not None else {}
        call = StageCall(stage, {}, env, keys, target, inputs, final)
        log, resolved = self._run_stage(index, call, model=model)
        if not final:
            env[name], keys[name] = target, key
            if inputs.cache:
                inputs.stage_cache[key] = (dict(target), log)
        return log, resolved

    def _run_chain(
        self,
        chain: Chain,
        config: ComboConfig,
        resolved_params: Sequence[tuple[ResolvedName, dict[str, Any]]],
        env: dict[str, Tensors],
        keys: dict[str, str],
        inputs: InputSet,
        out: MutableMapping[str, torch.Tensor],
    ) -> list[StageLog]:
        """Stream stages ``chain.start .. chain.end - 1``; the last one's output lands in ``env``."""
        calls: list[StageCall] = []
        methods: list[TensorMergeMethod | TaskArithmeticMethod] = []
        logs: list[StageLog] = []
        for index in range(chain.start, chain.end):
            stage = config.stages[index]
            resolved, params = resolved_params[index]
            last = index == chain.end - 1
            target: MutableMapping[str, torch.Tensor] = out if last and chain.into_out else {}
            call = StageCall(stage, params, env, keys, target, inputs, last and chain.into_out)
            key = self._stage_key(stage, keys)
            if stage.name:
                env[stage.name], keys[stage.name] = target, key
            calls.append(call)
            assert isinstance(resolved.method, TaskArithmeticMethod | TensorMergeMethod)
            methods.append(resolved.method)
            logs.append(_new_log(index, stage, resolved.method))
        try:
            run_chain(chain, calls, methods, logs, inputs)
        except (MergeConfigError, torch.OutOfMemoryError, MemoryError):
            raise  # a whole-stage rerun would need more memory, not less
        except Exception as exc:  # noqa: BLE001 - the stage-by-stage rerun falls back and logs it
            raise ChainFailed from exc
        target = calls[-1].target
        fill_aliases(target, inputs, calls[-1].final)
        try:
            check_output(target, inputs)
        except BadStage:
            raise ChainFailed from None
        return logs

    # -- one stage ------------------------------------------------------------
    def _run_stage(
        self, index: int, call: StageCall, *, model: PreTrainedModel | None
    ) -> tuple[StageLog, StageDoc]:
        stage = call.stage
        resolved, params = stage_parameters(stage, self.registry)
        call.params = params
        method = resolved.method
        start = time.perf_counter()
        log = _new_log(index, stage, method)
        out_stage = stage
        try:
            out_stage = self._dispatch(method, call, log, model)
            fill_aliases(call.target, call.inputs, call.final)
            check_output(call.target, call.inputs)
        except MergeConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - any kernel failure falls back, and is reported
            log.fallback = str(exc) if isinstance(exc, BadStage) else f"{type(exc).__name__}: {exc}"
            self._fall_back(index, method.name(), call, log.fallback)
            out_stage = stage
        log.seconds = time.perf_counter() - start
        return log, out_stage

    def _dispatch(
        self, method: Any, call: StageCall, log: StageLog, model: PreTrainedModel | None
    ) -> StageDoc:
        """Run ``call`` with the runner of ``method``'s kernel kind; the stage as it resolved."""
        if isinstance(method, TaskArithmeticMethod):
            run_task_arithmetic(method, call)
        elif isinstance(method, TensorMergeMethod):
            run_tensorwise(method, call)
        elif isinstance(method, ModelMergeMethod):
            info = run_whole_model(method, call, model=model, calibration=self.calibration)
            log.details.update(info.details)
            if call.stage.slices is None and info.slices:
                return resolved_slices_doc(call.stage, info.slices)
        else:
            raise MergeConfigError(f"method {method.name()!r} has no kernel the engine knows")
        return call.stage

    @staticmethod
    def _fall_back(index: int, method_name: str, call: StageCall, reason: str) -> None:
        """Replace a failed stage by the linear merge of its sources; raise if that is bad too."""
        linear_fallback(call.stage, call.env, call.target, call.inputs, call.final)
        fill_aliases(call.target, call.inputs, call.final)
        try:
            check_output(call.target, call.inputs)
        except BadStage as bad:
            raise StageError(
                f"stage {index + 1} ({method_name}) failed ({reason}) and so did its "
                f"linear fallback ({bad}): the inputs contain NaN/Inf"
            ) from None

    @staticmethod
    def _stage_key(stage: StageDoc, keys: Mapping[str, str]) -> str:
        doc = stage.to_dict()
        doc.pop("name", None)
        refs = {name: keys.get(name, name) for name in stage.input_names()}
        return digest([doc, refs])


def _new_log(index: int, stage: StageDoc, method: Any) -> StageLog:
    """The log of stage ``index`` (0-based) before it runs."""
    return StageLog(
        stage=index + 1,
        name=stage.name or "final",
        method=method.name(),
        merge_method=stage.merge_method,
        seconds=0.0,
    )
