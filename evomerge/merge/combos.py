"""Combo labels ("000".."111") and the three-stage merge config each one generates.

``b0`` interpolation (0 linear, 1 slerp), ``b1`` task arithmetic (0 dare,
1 ties), ``b2`` selection (0 frankenmerge, 1 dfs), leftmost first: ``"110"`` =
SLERP + TIES + FrankenMerge (docs/design.md "Combo labels").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from evomerge.merge.base import MergeConfigError, TaskArithmeticMethod
from evomerge.merge.config import ComboConfig, ModelEntry, StageDoc
from evomerge.merge.registry import MethodRegistry, get_registry

STAGE_KINDS: tuple[str, str, str] = ("interpolation", "task_arithmetic", "selection")
COMBO_TABLE: dict[str, tuple[str, str]] = {
    "interpolation": ("linear", "slerp"),
    "task_arithmetic": ("dare", "ties"),
    "selection": ("frankenmerge", "dfs"),
}
COMBO_LABELS: tuple[str, ...] = tuple(f"{i:03b}" for i in range(8))
STAGE_NAMES: tuple[str, str] = (
    "stage1",
    "stage2",
)  # the final stage is unnamed (mergekit-multimerge)


def parse_label(label: str) -> tuple[int, int, int]:
    """``"010"`` -> ``(0, 1, 0)``; anything else is a one-line error."""
    if not isinstance(label, str) or len(label) != 3 or set(label) - {"0", "1"}:
        raise MergeConfigError(
            f"combo label must be three bits like '010' (b0 interpolation, b1 task arithmetic, "
            f"b2 selection), got {label!r}"
        )
    return int(label[0]), int(label[1]), int(label[2])


class StageParams(BaseModel):
    """Everything a combo leaves open: input weights, the task-arithmetic reference, per-method parameters.

    ``methods`` maps a method name to parameter overrides, e.g.
    ``{"slerp": {"mode": "multislerp"}, "dare": {"density": 0.2}, "ties": {"lambda": 0.8}}``;
    ``table`` maps each stage to its (bit 0, bit 1) methods, so a plugin's method
    can stand in for a built-in one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    weights: tuple[float, ...] | None = None
    reference: Literal["stage1", "ancestor"] = "stage1"
    methods: dict[str, dict[str, Any]] = Field(default_factory=dict)
    table: dict[str, tuple[str, str]] = Field(default_factory=lambda: dict(COMBO_TABLE))
    dtype: Literal["float32", "float64"] = "float32"

    @field_validator("table")
    @classmethod
    def _all_stages(cls, table: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
        missing = [k for k in STAGE_KINDS if k not in table]
        if missing:
            raise ValueError(f"table lacks stage(s) {', '.join(missing)}")
        return table

    def combo_methods(self, label: str) -> tuple[str, str, str]:
        bits = parse_label(label)
        return tuple(self.table[kind][bit] for kind, bit in zip(STAGE_KINDS, bits, strict=True))  # type: ignore[return-value]


def label_of(
    config: ComboConfig, params: StageParams | None = None, registry: MethodRegistry | None = None
) -> str | None:
    """The combo label a three-stage config corresponds to, or None for any other config."""
    params = params or StageParams()
    registry = registry or get_registry()
    if len(config.stages) != 3:
        return None
    bits = []
    for kind, stage in zip(STAGE_KINDS, config.stages, strict=True):
        name = registry.resolve(stage.merge_method).method.name()
        if name not in params.table[kind]:
            return None
        bits.append(str(params.table[kind].index(name)))
    return "".join(bits)


def _method_params(
    registry: MethodRegistry, name: str, params: StageParams, seed: int | None
) -> tuple[Any, dict[str, Any]]:
    method = registry.get(name)
    supplied = dict(params.methods.get(name, {}))
    if seed is not None and any(p.name == "seed" for p in method.parameters()):
        supplied["seed"] = seed
    return method, method.resolve(supplied)


def _written(
    method: Any, resolved: dict[str, Any], *, anchored: bool = False
) -> tuple[str, dict[str, Any]]:
    """The ``merge_method`` name and the parameters to write (those not implied by the name)."""
    mk_name = method.mergekit_name(resolved, anchored=anchored)
    alias = next(a for a in method.mergekit_aliases() if a.name == mk_name)
    return mk_name, {k: v for k, v in resolved.items() if k not in alias.implied}


def combo_config(
    label: str,
    models: Sequence[str],
    base: str | None = None,
    params: StageParams | None = None,
    *,
    seed: int = 0,
    registry: MethodRegistry | None = None,
) -> ComboConfig:
    """The multi-document merge config of combo ``label`` over ``models`` (paths or names).

    Stage 1 interpolates the inputs, stage 2 refines it by task arithmetic
    (``base_model: stage1``, or the common ancestor ``base`` with stage 1 as the
    anchor under ``reference: ancestor``), stage 3 selects among
    ``{stage2, M1, M2, M3}``. Every parameter is written out explicitly.
    """
    params = params or StageParams()
    registry = registry or get_registry()
    models = list(models)
    if len(models) < 2:
        raise MergeConfigError(f"a combo merges at least 2 models, got {len(models)}")
    weights = (
        list(params.weights) if params.weights is not None else [1.0 / len(models)] * len(models)
    )
    if len(weights) != len(models):
        raise MergeConfigError(f"weights has {len(weights)} values for {len(models)} models")
    if params.reference == "ancestor" and base is None:
        raise MergeConfigError(
            "reference: ancestor needs a base model (the inputs' common ancestor)"
        )
    names = params.combo_methods(label)
    weighted = [
        ModelEntry(model=m, parameters={"weight": w}) for m, w in zip(models, weights, strict=True)
    ]

    m1, p1 = _method_params(registry, names[0], params, seed)
    mk1, w1 = _written(m1, p1)
    has_weight = any(p.name == "weight" for p in m1.parameters())
    stage1 = StageDoc(
        name=STAGE_NAMES[0],
        merge_method=mk1,
        models=weighted if has_weight else [ModelEntry(model=m) for m in models],
        parameters=w1,
        dtype=params.dtype,
    )

    m2, p2 = _method_params(registry, names[1], params, seed)
    if not isinstance(m2, TaskArithmeticMethod):
        raise MergeConfigError(f"stage 2 method {names[1]!r} is not a task-arithmetic method")
    anchored = params.reference == "ancestor"
    mk2, w2 = _written(m2, p2, anchored=anchored)
    stage2 = StageDoc(
        name=STAGE_NAMES[1],
        merge_method=mk2,
        base_model=base if anchored else STAGE_NAMES[0],
        models=weighted
        + ([ModelEntry(model=STAGE_NAMES[0], parameters={"anchor": True})] if anchored else []),
        parameters=w2,
        dtype=params.dtype,
    )

    m3, p3 = _method_params(registry, names[2], params, seed)
    mk3, w3 = _written(m3, p3)
    stage3 = StageDoc(
        merge_method=mk3,
        models=[ModelEntry(model=m) for m in [STAGE_NAMES[1], *models]],
        parameters=w3,
        dtype=params.dtype,
    )
    comment = (
        f"evomerge combo {label}: {names[0]} -> {names[1]} -> {names[2]}"
        f" (reference: {params.reference}, seed {seed})"
    )
    return ComboConfig(stages=[stage1, stage2, stage3], comment=comment)


def resolved_slices_doc(stage: StageDoc, slices: Sequence[tuple[str, int, int]]) -> StageDoc:
    """A whole-model stage after execution: mergekit ``passthrough`` over its concrete slices."""
    from evomerge.merge.config import SliceEntry

    return StageDoc(
        name=stage.name,
        merge_method="passthrough",
        slices=[SliceEntry(model=m, layer_range=(a, b)) for m, a, b in slices],
        dtype=stage.dtype,
    )


def describe_combo(label: str, params: StageParams | None = None) -> Mapping[str, str]:
    """``{"interpolation": "slerp", ...}`` for a label."""
    params = params or StageParams()
    return dict(zip(STAGE_KINDS, params.combo_methods(label), strict=True))
