"""``frankenmerge``: greedy per-layer source selection by calibration loss.

Starting from S2 (the first source), for every layer index ``l`` in order, each
other source's layer ``l`` is placed into the current model and scored with the
caller's calibration callable (a small batch of the ``fitness`` split); the
layer that gives the lowest loss stays, and S2's layer stays unless another is
strictly better, so no choice raises the calibration loss. Non-layer tensors
come from S2. The choice is returned as concrete slices, written into the
generated config as mergekit ``passthrough`` slices, so the result replays
without re-scoring (also in mergekit itself).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, MutableMapping, Sequence

import torch

from evomerge.merge import MergekitAlias, ModelMergeContext, ModelMergeInfo, ModelMergeMethod
from evomerge.merge.base import MergeConfigError

LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_of(key: str) -> int | None:
    """The decoder-layer index of a state-dict key (``*.layers.{l}.*``), or None."""
    match = LAYER_RE.search(key)
    return int(match.group(1)) if match else None


def layer_groups(keys: Sequence[str]) -> dict[int, list[str]]:
    """Keys per layer index, in key order."""
    groups: dict[int, list[str]] = {}
    for key in keys:
        layer = layer_of(key)
        if layer is not None:
            groups.setdefault(layer, []).append(key)
    return dict(sorted(groups.items()))


def compact_slices(choice: Sequence[str], anchor: str) -> list[tuple[str, int, int]]:
    """Per-layer source names -> ``(source, start, end)`` runs, with zero-length ``anchor``
    slices first/last where needed: mergekit takes pre-layer tensors from the first slice's
    source and post-layer tensors from the last one's."""
    runs: list[tuple[str, int, int]] = []
    for layer, source in enumerate(choice):
        if runs and runs[-1][0] == source:
            runs[-1] = (source, runs[-1][1], layer + 1)
        else:
            runs.append((source, layer, layer + 1))
    if not runs or runs[0][0] != anchor:
        runs.insert(0, (anchor, 0, 0))
    if runs[-1][0] != anchor:
        runs.append((anchor, len(choice), len(choice)))
    return runs


def _copy_keys(
    dst: MutableMapping[str, torch.Tensor], src: Mapping[str, torch.Tensor], keys: Sequence[str]
) -> None:
    for key in keys:
        if dst[key].data_ptr() != src[key].data_ptr():
            dst[key].copy_(src[key])


def _score(ctx: ModelMergeContext) -> float:
    assert ctx.model is not None and ctx.calibration is not None
    with torch.no_grad():
        loss = float(ctx.calibration(ctx.model))
    return loss if math.isfinite(loss) else math.inf


class Frankenmerge(ModelMergeMethod):
    """Greedy layer-wise selection among the stage's sources (first source = S2)."""

    stage = "selection"
    # S2 may already be in place in the output (the engine streams stages 1-2 into it): a
    # layer of S2 is backed up before other sources are tried over it.
    in_place_first_source = True

    def name(self) -> str:
        return "frankenmerge"

    def mergekit_aliases(self) -> list[MergekitAlias]:
        # Before execution the stage is evomerge-only (it needs calibration);
        # after execution it is mergekit's own passthrough over concrete slices.
        return [MergekitAlias("frankenmerge"), MergekitAlias("passthrough", native=True)]

    def merge_model(self, ctx: ModelMergeContext) -> ModelMergeInfo:
        if ctx.slices is not None:
            replay_slices(ctx)
            return ModelMergeInfo(slices=list(ctx.slices))
        if ctx.model is None or ctx.calibration is None:
            raise MergeConfigError(
                "frankenmerge needs a calibration callable and a scratch model "
                "(MergeEngine(calibration=...), merge_combo(..., scratch_model=...))"
            )
        ctx.model.eval()
        state = ctx.model.state_dict()
        sources, names = ctx.sources, list(ctx.source_names)
        keys = list(sources[0])
        missing = [k for k in keys if k not in state]
        if missing:
            raise MergeConfigError(f"frankenmerge: scratch model has no tensor {missing[0]!r}")
        _copy_keys(state, sources[0], keys)
        current = _score(ctx)
        baseline = current
        choice: list[str] = []
        losses: list[dict[str, float]] = []
        for _layer, layer_keys in layer_groups(keys).items():
            first: Mapping[str, torch.Tensor] = sources[0]
            if any(first[k].data_ptr() == state[k].data_ptr() for k in layer_keys):
                first = {k: state[k].clone() for k in layer_keys}  # S2 is the output itself
            scores = {names[0]: current}
            best = 0
            for j in range(1, len(sources)):
                _copy_keys(state, sources[j], layer_keys)
                scores[names[j]] = _score(ctx)
                if scores[names[j]] < scores[names[best]]:
                    best = j
            _copy_keys(state, first if best == 0 else sources[best], layer_keys)
            current = scores[names[best]]
            choice.append(names[best])
            losses.append(scores)
        for key in keys:
            if ctx.out.get(key) is None:
                ctx.out[key] = state[key].detach().clone()
            elif ctx.out[key].data_ptr() != state[key].data_ptr():
                ctx.out[key].copy_(state[key])
        return ModelMergeInfo(
            slices=compact_slices(choice, names[0]),
            details={"baseline_loss": baseline, "final_loss": current, "layer_losses": losses},
        )


def replay_slices(ctx: ModelMergeContext) -> None:
    """Apply concrete passthrough slices as mergekit does (output layers numbered in slice order)."""
    assert ctx.slices is not None
    by_name = dict(zip(ctx.source_names, ctx.sources, strict=True))
    unknown = [s[0] for s in ctx.slices if s[0] not in by_name]
    if unknown or not ctx.slices:
        raise MergeConfigError(f"passthrough slices name unknown model {unknown[:1]} or are empty")
    keys = list(ctx.sources[0])
    groups = layer_groups(keys)
    first_layer_pos = min((keys.index(g[0]) for g in groups.values()), default=len(keys))
    out_layer = 0
    for source, start, end in ctx.slices:
        for layer in range(start, end):
            src = by_name[source]
            for key in groups.get(layer, []):
                _assign(ctx.out, _renumber(key, out_layer), src[key])
            out_layer += 1
    if out_layer != len(groups):
        raise MergeConfigError(
            f"passthrough slices give {out_layer} layers, the model has {len(groups)}"
        )
    pre, post = by_name[ctx.slices[0][0]], by_name[ctx.slices[-1][0]]
    written: set[int] = set()
    for pos, key in enumerate(keys):
        if layer_of(key) is None:
            if ctx.out.get(key) is not None and ctx.out[key].data_ptr() in written:
                continue  # a tied alias (lm_head = embed_tokens): the first name wins, as in mergekit
            _assign(ctx.out, key, (pre if pos < first_layer_pos else post)[key])
            written.add(ctx.out[key].data_ptr())


def _renumber(key: str, layer: int) -> str:
    """``key`` with its layer index replaced (mergekit numbers output layers in slice order)."""
    return LAYER_RE.sub(lambda m: re.sub(r"\d+", str(layer), m.group(0)), key, count=1)


def _assign(out: MutableMapping[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    if out.get(key) is None:
        out[key] = value.detach().clone()
    else:
        out[key].copy_(value)
