"""Combo labels ("000".."111"), the table of methods the bits pick, and each combo's config.

Bit ``i`` of a label (leftmost first) picks ``table[i][bit]``: row 0 is the
interpolation stage, row 1 task arithmetic, row 2 selection. The table is data
(a recipe's ``combos:``); :data:`DEFAULT_COMBOS` is the seed's, under which
``"110"`` is SLERP + TIES + FrankenMerge (docs/recipes.md, ``combos``). Any
registered method whose declared ``stage`` fits a row may stand in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from evomerge.merge.base import MergeConfigError, MergeMethod, TaskArithmeticMethod
from evomerge.merge.config import ComboConfig, ModelEntry, StageDoc
from evomerge.merge.registry import MethodRegistry, get_registry

#: The stage each row of a combo table fills, in bit order.
STAGE_KINDS: tuple[str, str, str] = ("interpolation", "task_arithmetic", "selection")
ComboTable = tuple[tuple[str, str], tuple[str, str], tuple[str, str]]
#: The seed's table (recipe data, not code: a recipe's ``combos:`` replaces it).
DEFAULT_COMBOS: ComboTable = (("linear", "slerp"), ("dare", "ties"), ("frankenmerge", "dfs"))
#: Every combo label, "000".."111" (b0 interpolation first).
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
    ``table[i]`` is the (bit 0, bit 1) pair of methods of stage ``i``, so a
    plugin's method can stand in for a built-in one (a recipe's ``combos:``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    weights: tuple[float, ...] | None = None
    reference: Literal["stage1", "ancestor"] = "stage1"
    methods: dict[str, dict[str, Any]] = Field(default_factory=dict)
    table: ComboTable = DEFAULT_COMBOS
    dtype: Literal["float32", "float64"] = "float32"

    @field_validator("table")
    @classmethod
    def _distinct_pairs(cls, table: ComboTable) -> ComboTable:
        for row, pair in enumerate(table):
            if pair[0] == pair[1]:
                raise ValueError(f"table row {row} names {pair[0]!r} twice")
        return table

    def combo_methods(self, label: str) -> tuple[str, str, str]:
        bits = parse_label(label)
        return tuple(pair[bit] for pair, bit in zip(self.table, bits, strict=True))  # type: ignore[return-value]


def check_combo_method(row: int, name: str, registry: MethodRegistry | None = None) -> MergeMethod:
    """The method ``name`` if it may fill combo-table row ``row``, else one clear error.

    Row 0 takes interpolation methods, row 1 task-arithmetic ones (a
    :class:`TaskArithmeticMethod`: the engine adds its result to the stage's
    reference), row 2 selection ones; a method declared ``stage="any"`` fits
    rows 0 and 2. Raises ``UnknownMergeMethodError`` for a name no plugin registers.
    """
    registry = registry or get_registry()
    method = registry.get(name)
    if _fits(method, row):
        return method
    kind = STAGE_KINDS[row]
    why = f"declared stage={method.stage!r}"
    if row == 1:
        why += ", not a TaskArithmeticMethod"
    fitting = [n for n in registry.names() if _fits(registry.get(n), row)]
    raise MergeConfigError(
        f"merge method {name!r} cannot fill the {kind} stage ({why}); "
        f"methods that can: {', '.join(fitting) or 'none'}"
    )


def _fits(method: MergeMethod, row: int) -> bool:
    if isinstance(method, TaskArithmeticMethod):  # needs a reference: only stage 2 has one
        return row == 1
    return row != 1 and method.stage in (STAGE_KINDS[row], "any")


def label_of(
    config: ComboConfig, params: StageParams | None = None, registry: MethodRegistry | None = None
) -> str | None:
    """The combo label a three-stage config corresponds to, or None for any other config."""
    params = params or StageParams()
    registry = registry or get_registry()
    if len(config.stages) != 3:
        return None
    bits = []
    for pair, stage in zip(params.table, config.stages, strict=True):
        name = registry.resolve(stage.merge_method).method.name()
        if name not in pair:
            return None
        bits.append(str(pair.index(name)))
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
    for row, pair in enumerate(params.table):  # the whole table: a bad one fails every label
        for name in pair:
            check_combo_method(row, name, registry)
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
