"""Chains of tensor-wise stages run key by key: no intermediate state dict is ever held.

A combo such as ``linear -> ties -> dfs`` is three tensor-wise stages; run
stage after stage it holds two whole intermediate state dicts (stage 1's and
stage 2's outputs) beside the inputs and the output, which set the peak memory
of a run (docs/benchmarks.md "Scale"). Each of those stages only ever reads the
same key of its sources, so the chain can instead compute stage 1, 2 and 3 of
one tensor, write the last into the output and move on: resident memory is the
inputs and the output plus a few tensors.

The result is the same numbers: every key goes through the same
:class:`~evomerge.merge.stages.TensorStep` ops in the same order. Only the
guard differs: a stage whose output is bad is replaced by its linear merge
(:mod:`evomerge.merge.guard`), which needs the whole stage; so a chain sums
each intermediate tensor as it goes (one reduction, no copy), and when any sum
is not finite the engine reruns the config stage by stage, exactly as before.

A chain whose last stage feeds a whole-model method (frankenmerge after ``ties``)
writes straight into the output when that method declares
``in_place_first_source`` (it never reads its first source after writing the
output), so the selection stage starts from its first source already in place.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass

import torch

from evomerge.merge.base import ModelMergeMethod, TaskArithmeticMethod, TensorMergeMethod
from evomerge.merge.config import ComboConfig, StageDoc
from evomerge.merge.inputs import InputSet
from evomerge.merge.results import StageLog
from evomerge.merge.stages import StageCall, TensorStep

Tensors = Mapping[str, torch.Tensor]
#: stage -> its resolved (stage, params, method), as the engine resolves it.
Resolve = Callable[[StageDoc], tuple[StageDoc, Mapping[str, object], object]]


class ChainFailed(Exception):
    """A streamed chain's kernel raised or an intermediate was not finite: rerun the config
    stage by stage, where the failing stage falls back to linear and says so in its log."""


@dataclass(frozen=True)
class Chain:
    """Stages ``start .. end - 1`` of a config, streamed; ``into_out``: the last writes ``out``."""

    start: int
    end: int
    into_out: bool


def _is_tensorwise(method: object) -> bool:
    return isinstance(method, TaskArithmeticMethod | TensorMergeMethod)


def plan_chains(config: ComboConfig, methods: Sequence[object]) -> list[Chain]:
    """The runs of two or more consecutive tensor-wise stages that can be streamed.

    A stage joins the run of the one before it when both are tensor-wise and no
    stage after the run reads an output inside it other than the run's last.
    """
    stages = config.stages
    last = len(stages) - 1
    chains: list[Chain] = []
    i = 0
    while i <= last:
        j = i
        while j < last and _is_tensorwise(methods[j]) and _is_tensorwise(methods[j + 1]):
            j += 1
        while j > i:  # shrink until no later stage reads a non-last output of the run
            inner = {stages[k].name for k in range(i, j)}
            if not any(set(s.input_names()) & inner for s in stages[j + 1 :]):
                break
            j -= 1
        if j > i:
            final, name = methods[last], stages[j].name
            into_out = j == last or (
                j + 1 == last
                and isinstance(final, ModelMergeMethod)
                and final.in_place_first_source
                and name is not None
                and stages[last].input_names()[:1] == [name]
                and stages[last].input_names().count(name) == 1
            )
            chains.append(Chain(i, j + 1, into_out))
            i = j + 1
        else:
            i += 1
    return chains


def run_chain(
    chain: Chain,
    calls: Sequence[StageCall],
    methods: Sequence[TensorMergeMethod | TaskArithmeticMethod],
    logs: Sequence[StageLog],
    inputs: InputSet,
) -> None:
    """Compute every key through ``calls`` (the chain's stages, in order) into the last's target.

    The non-last stages' targets are one-key dicts, refilled per key; their
    ``env`` entries (set by the caller) are those same dicts, so each stage reads
    the key just computed by the one before.
    """
    steps = [TensorStep(m, c) for m, c in zip(methods, calls, strict=True)]
    seconds = [0.0] * len(steps)
    sums: list[torch.Tensor] = []
    for key in inputs.keys:
        for index, step in enumerate(steps):
            start = time.perf_counter()
            value, floating = step.value(key)
            if index + 1 < len(steps):
                scratch: MutableMapping[str, torch.Tensor] = step.call.target
                scratch.clear()
                scratch[key] = value
                if floating:
                    sums.append(value.sum().float())
            else:
                step.put(key, value, floating)
            seconds[index] += time.perf_counter() - start
    for log, spent in zip(logs, seconds, strict=True):
        log.seconds = spent
        log.details["streamed"] = True
    if sums and not bool(torch.isfinite(torch.stack(sums)).all()):
        raise ChainFailed
    for step in steps[:-1]:
        step.call.target.clear()
