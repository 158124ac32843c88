"""A candidate as a genome: combo bits plus per-layer-group genes, rebuilt into a mergekit config.

A :class:`Genome` is plain data (JSON in lineage and checkpoints). Its genes
are named ``"stage{n}.{parameter}"`` for a stage's shared parameter
(``"stage2.lambda"``, ``"stage2.density"``) and ``"stage{n}.weight.{i}"`` for
input ``i``'s weight; each gene holds one float per layer group. The merge it
stands for is the combo's generated config (:func:`evomerge.merge.combos.combo_config`)
with those parameters overwritten by per-tensor conditional values
(:mod:`evomerge.merge.conditional`), so the engine and mergekit both run it.

Layer groups split the decoder layers ``.layers.{i}.`` into ``k`` contiguous
runs. Tensors outside the layers (embeddings, final norm, head) take group 0's
value: group 0 is written as the conditional's unfiltered default entry, groups
``1..k-1`` as one filtered entry per layer. ``k = 1`` writes plain scalars,
i.e. today's global parameters. With ``embedding_group`` those outside tensors
get a group of their own, the last one (its filter list is empty: it is the
default entry, and every layer group is written filtered) — the embeddings of
three fine-tunes often want a different mix than any decoder layer.

Two genes are not method parameters (and ``mutation``, the seed's noise, is
not a merge). ``anchor: ancestor`` makes the stage-1 weights task-arithmetic
coefficients against the inputs' common ancestor B: stage 1 is written as
``linear`` over the inputs *and* B, B weighted ``1 − Σ w_i`` per group, so it
is ``B + Σ w_i (M_i − B)`` — free to scale a layer's fine-tuning up or down,
which a convex mix of the inputs cannot (docs/search.md "Genes").
``stage3.source`` picks, per layer group, which of the selection stage's
sources ``[stage2, M1, M2, M3]`` the layers come from (``floor(value)``); it
applies where stage 3 is a layer-selecting method (FrankenMerge) and is
written as mergekit ``passthrough`` slices, so nothing is calibrated; 0
everywhere is stage 2 itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from evomerge.merge.base import MergeConfigError
from evomerge.merge.combos import StageParams, combo_config, parse_label
from evomerge.merge.config import ComboConfig, ModelEntry
from evomerge.merge.registry import MethodRegistry, get_registry

_GENE = re.compile(r"^stage([123])\.([A-Za-z_][A-Za-z0-9_]*)(?:\.(\d+))?$")
_LAYER = re.compile(r"^(.*?\blayers\.)(\d+)\.")


class GenomeError(ValueError):
    """A genome, gene name or layer-group count is wrong (one line naming the field)."""


class Mutation(BaseModel):
    """The seed's weight-noise operator as a gene: keyed Gaussian noise added after the merge
    (:func:`evomerge.evolution.operators.mutate_`, the seed loop's own operator), so a
    seed-loop child is expressible as a genome. The genome loop applies it and
    ``lineage rebuild`` re-draws it from the genome its lineage node records."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    seed: int
    sigma: float = Field(ge=0.0)
    rate: float = Field(0.01, gt=0.0, le=1.0)
    mode: Literal["absolute", "relative"] = "relative"


class Genome(BaseModel):
    """Combo bits, layer-group count, genes (one float per group) and an optional mutation."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    combo: str
    layer_groups: int = Field(ge=1)
    genes: dict[str, tuple[float, ...]] = Field(default_factory=dict)
    anchor: Literal["inputs", "ancestor"] = "inputs"
    mutation: Mutation | None = None

    @field_validator("combo")
    @classmethod
    def _label(cls, combo: str) -> str:
        parse_label(combo)
        return combo

    @field_validator("genes")
    @classmethod
    def _names(cls, genes: dict[str, tuple[float, ...]]) -> dict[str, tuple[float, ...]]:
        for name in genes:
            parse_gene(name)
        return dict(sorted(genes.items()))

    @model_validator(mode="after")
    def _lengths(self) -> Genome:
        for name, values in self.genes.items():
            if len(values) != self.layer_groups:
                raise ValueError(
                    f"gene {name!r} has {len(values)} values for {self.layer_groups} layer groups"
                )
        return self

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, exact float reprs): equal genomes give equal text."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any]) -> Genome:
        data = json.loads(text) if isinstance(text, str) else dict(text)
        return cls.model_validate(data)


def parse_gene(name: str) -> tuple[int, str, int | None]:
    """``"stage2.weight.1"`` -> ``(2, "weight", 1)``; ``"stage2.lambda"`` -> ``(2, "lambda", None)``."""
    match = _GENE.match(name)
    if match is None:
        raise GenomeError(
            f"gene {name!r}: expected 'stage<1-3>.<parameter>' or 'stage<1-3>.weight.<input>'"
        )
    stage, param, index = match.groups()
    if (param == "weight") != (index is not None):
        raise GenomeError(f"gene {name!r}: only 'weight' genes take an input index")
    return int(stage), param, int(index) if index is not None else None


def decoder_layers(tensor_names: Iterable[str]) -> int:
    """How many decoder layers (``….layers.{i}.…``) the tensor names hold."""
    found = {int(m.group(2)) for name in tensor_names if (m := _LAYER.match(name)) is not None}
    return max(found) + 1 if found else 0


def layer_group_filters(
    tensor_names: Iterable[str], k: int, num_layers: int, *, embedding_group: bool = False
) -> list[list[str]]:
    """``k`` lists of substring filters, group ``g`` covering a contiguous run of layer indices.

    Layer ``i`` goes to group ``i * k // num_layers`` (sizes differ by at most
    one). A filter is the tensor-name prefix up to and including ``layers.{i}.``
    (``"model.layers.3."``), so ``layers.1.`` never matches ``layers.11.``.
    ``embedding_group`` appends one empty list: the group of every tensor outside
    the layers (``k + 1`` groups in all).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise GenomeError(f"layer_groups must be a positive integer, got {k!r}")
    if k > num_layers:
        raise GenomeError(f"layer_groups {k} is larger than the model's {num_layers} layers")
    prefixes: dict[int, set[str]] = {}
    for name in tensor_names:
        match = _LAYER.match(name)
        if match is not None:
            prefixes.setdefault(int(match.group(2)), set()).add(match.group(1))
    if sorted(prefixes) != list(range(num_layers)):
        raise GenomeError(
            f"the tensor names have layers {sorted(prefixes)}, not 0..{num_layers - 1}"
        )
    groups: list[list[str]] = [[] for _ in range(k)]
    for i in range(num_layers):
        groups[i * k // num_layers].extend(f"{p}{i}." for p in sorted(prefixes[i]))
    if embedding_group:
        groups.append([])
    return groups


def conditional_value(values: Sequence[float], filters: Sequence[Sequence[str]]) -> Any:
    """One gene as a parameter value: a scalar for one group, else a mergekit conditional list."""
    if len(values) != len(filters):
        raise GenomeError(f"{len(values)} gene values for {len(filters)} layer groups")
    if len(values) == 1:
        return float(values[0])
    # the default (unfiltered) entry: the group without filters (the embedding group), else group 0
    default = next((g for g, f in enumerate(filters) if not f), 0)
    entries: list[dict[str, Any]] = [
        {"filter": f, "value": float(values[g])}
        for g in range(len(values))
        if g != default
        for f in filters[g]
    ]
    return [*entries, {"value": float(values[default])}]


def _stage_parameter_names(stage: int, params: StageParams, registry: MethodRegistry) -> set[str]:
    """Every parameter any method of the stage's table row takes (valid gene names)."""
    names: set[str] = set()
    for method_name in params.table[stage - 1]:
        names |= {p.name for p in registry.get(method_name).parameters()}
    return names


def genome_config(
    genome: Genome,
    model_names: Sequence[str],
    base_name: str | None,
    stage_params: StageParams | None,
    filters: Sequence[Sequence[str]],
    *,
    seed: int = 0,
    registry: MethodRegistry | None = None,
) -> ComboConfig:
    """The combo config of ``genome``: ``combo_config`` with the genes written as conditionals.

    A gene the combo's own method does not take (``stage1.…`` of a method the
    combo bits did not pick) is inert; a gene no method of that stage takes,
    or a weight index past the inputs, is an error.
    """
    registry = registry or get_registry()
    stage_params = stage_params or StageParams()
    if len(filters) != genome.layer_groups:
        raise GenomeError(
            f"{len(filters)} layer-group filters for a genome with {genome.layer_groups} groups"
        )
    config = combo_config(
        genome.combo, model_names, base_name, stage_params, seed=seed, registry=registry
    )
    if genome.anchor == "ancestor":
        _anchor_stage1(config.stages[0], genome, base_name, filters, registry)
    for name, values in genome.genes.items():
        stage_no, param, index = parse_gene(name)
        if (stage_no, param) == (3, "source"):
            config.stages[2] = _source_slices(config.stages[2], values, filters, registry)
            continue
        if param not in _stage_parameter_names(stage_no, stage_params, registry):
            raise GenomeError(f"gene {name!r}: no stage-{stage_no} method takes {param!r}")
        stage = config.stages[stage_no - 1]
        method = registry.resolve(stage.merge_method).method
        if param not in {p.name for p in method.parameters()}:
            continue
        value = conditional_value(values, filters)
        if index is None:
            stage.parameters = {**stage.parameters, param: value}
            continue
        merged = stage.merged_models()
        if index >= len(merged):
            raise GenomeError(f"gene {name!r}: stage {stage_no} has {len(merged)} inputs")
        target = merged[index]
        stage.models = [
            ModelEntry(model=m.model, parameters={**(m.parameters or {}), param: value})
            if m is target
            else m
            for m in stage.models or []
        ]
    try:
        config.validate_methods(registry, source="genome")
    except MergeConfigError as exc:
        raise GenomeError(str(exc)) from None
    return _without_pass_through_stages(config, registry)


def _all_zero(value: Any) -> bool:
    """A parameter value (scalar or mergekit conditional list) that is exactly 0 everywhere."""
    if isinstance(value, list):
        return bool(value) and all(float(entry["value"]) == 0.0 for entry in value)
    return value is not None and float(value) == 0.0


def _without_pass_through_stages(config: ComboConfig, registry: MethodRegistry) -> ComboConfig:
    """Stage 1 alone when stages 2 and 3 only pass it through (``cmaes``'s default genome).

    A task-arithmetic stage 2 with λ = 0 everywhere is its reference or anchor, stage 1,
    exactly (``S1 + 0·merge``); a ``passthrough`` stage 3 whose every slice is stage 2 is
    stage 2. Dropping them gives the same tensors from one stage instead of three — no
    intermediate state dicts (two model copies less while merging), a third of the
    merge time, and a one-document mergekit YAML.
    """
    from evomerge.merge.base import TaskArithmeticMethod

    if len(config.stages) != 3:
        return config
    first, second, third = config.stages
    if not isinstance(registry.resolve(second.merge_method).method, TaskArithmeticMethod):
        return config
    if not _all_zero(second.parameters.get("lambda")):
        return config
    if third.merge_method != "passthrough" or not third.slices:
        return config
    if any(s.model != second.name for s in third.slices):
        return config
    only = first.model_copy(update={"name": None})
    comment = f"{config.comment or 'evomerge genome'} (stages 2 and 3 pass stage 1 through)"
    return ComboConfig(stages=[only], comment=comment)


def _anchor_stage1(
    stage: Any,
    genome: Genome,
    base_name: str | None,
    filters: Sequence[Sequence[str]],
    registry: MethodRegistry,
) -> None:
    """Stage 1 as ``linear`` over the inputs and the ancestor weighted ``1 − Σ w_i`` (in place)."""
    if base_name is None:
        raise GenomeError("anchor: ancestor needs the inputs' common ancestor (inputs.base_model)")
    method = registry.resolve(stage.merge_method).method
    if method.name() != "linear":
        raise GenomeError(
            f"anchor: ancestor needs linear in stage 1, the combo {genome.combo!r} has "
            f"{method.name()!r}"
        )
    n = len(stage.models or [])
    weights = [
        genome.genes.get(f"stage1.weight.{i}", (1.0 / n,) * genome.layer_groups) for i in range(n)
    ]
    rest = tuple(1.0 - sum(w[g] for w in weights) for g in range(genome.layer_groups))
    stage.models = [
        *(stage.models or []),
        ModelEntry(model=base_name, parameters={"weight": conditional_value(rest, filters)}),
    ]


def _layer_indices(filters: Sequence[Sequence[str]]) -> list[list[int]]:
    """The decoder-layer indices of each group's filters (group 0 also holds no-layer tensors)."""
    return [
        sorted({int(m.group(2)) for f in group if (m := _LAYER.match(f)) is not None})
        for group in filters
    ]


def _source_slices(
    stage: Any, values: Sequence[float], filters: Sequence[Sequence[str]], registry: MethodRegistry
) -> Any:
    """A layer-selecting final stage as ``passthrough`` slices: group g's layers from source ``floor(v_g)``."""
    from evomerge.merge.base import ModelMergeMethod
    from evomerge.merge.combos import resolved_slices_doc

    if not isinstance(registry.resolve(stage.merge_method).method, ModelMergeMethod):
        return stage  # a tensor-wise selection method (DFS) has no layer sources: inert
    sources = stage.input_names()
    by_layer: dict[int, str] = {}
    for layers, value in zip(_layer_indices(filters), values, strict=True):
        pick = sources[min(len(sources) - 1, max(0, int(value)))]
        by_layer.update(dict.fromkeys(layers, pick))
    runs: list[tuple[str, int, int]] = []
    for layer in sorted(by_layer):
        source = by_layer[layer]
        if runs and runs[-1][0] == source:
            runs[-1] = (source, runs[-1][1], layer + 1)
        else:
            runs.append((source, layer, layer + 1))
    anchor, end = sources[0], len(by_layer)
    # mergekit takes the tensors before / after the layers from the first / last slice's model
    if runs[0][0] != anchor:
        runs.insert(0, (anchor, 0, 0))
    if runs[-1][0] != anchor:
        runs.append((anchor, end, end))
    return resolved_slices_doc(stage, runs)


def uniform_genome(
    combo: str, layer_groups: int, genes: Mapping[str, float], mutation: Mutation | None = None
) -> Genome:
    """A genome whose every gene has the same value in every group (``k`` copies of today's scalars)."""
    return Genome(
        combo=combo,
        layer_groups=layer_groups,
        genes={n: (float(v),) * layer_groups for n, v in genes.items()},
        mutation=mutation,
    )
