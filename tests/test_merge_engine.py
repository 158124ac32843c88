"""The in-memory engine on real tiny models: all 8 combos, frankenmerge's choice, fallbacks, caching."""

from __future__ import annotations

import math

import pytest
import torch

from evomerge.merge import (
    COMBO_LABELS,
    InputSet,
    MergeConfigError,
    MergeEngine,
    StageParams,
    TaskArithmeticMethod,
    get_method,
)
from evomerge.merge.inputs import tied_aliases


def _model_and_out(family):  # type: ignore[no-untyped-def]
    model = family.build()
    return model, model.state_dict()


@pytest.mark.parametrize("reference", ["stage1", "ancestor"])
def test_all_eight_combos_give_finite_distinct_models(tiny_llama_family, reference) -> None:  # type: ignore[no-untyped-def]
    family = tiny_llama_family
    engine = MergeEngine(StageParams(reference=reference), calibration=family.calibration())
    inputs = InputSet(family.models, base=family.base)
    results = {}
    for label in COMBO_LABELS:
        model, out = _model_and_out(family)
        pointers = {k: v.data_ptr() for k, v in out.items()}
        result = engine.merge_combo(label, inputs, out=out, seed=5, scratch_model=model)
        assert result.label == label
        assert [log.fallback for log in result.stage_logs] == [None, None, None]
        assert all(torch.isfinite(v).all() for v in out.values())
        assert {k: v.data_ptr() for k, v in out.items()} == pointers  # written in place
        assert math.isfinite(family.calibration()(model))
        results[label] = {k: v.clone() for k, v in out.items()}
        assert (result.resolved_slices is not None) == (label[2] == "0")
    # Every bit of the label matters: the 8 results are pairwise different.
    flat = {label: torch.cat([v.reshape(-1) for v in r.values()]) for label, r in results.items()}
    for a in COMBO_LABELS:
        for b in COMBO_LABELS:
            if a < b:
                assert not torch.allclose(flat[a], flat[b]), (a, b)


def test_stage_outputs_and_task_vectors_are_reused_across_combos(tiny_llama_family) -> None:  # type: ignore[no-untyped-def]
    family = tiny_llama_family
    engine = MergeEngine()
    inputs = InputSet(family.models)
    first = engine.merge_combo("011", inputs, out={}, seed=1)
    again = engine.merge_combo("001", inputs, out={}, seed=1)
    assert [log.cached for log in first.stage_logs] == [False, False, False]
    assert [log.cached for log in again.stage_logs] == [True, False, False]  # S1 reused
    assert len(inputs.delta_cache) == 1  # τ_i = M_i − S1 computed once for both
    cold = engine.merge_combo("001", InputSet(family.models, cache=False), out={}, seed=1)
    assert [log.cached for log in cold.stage_logs] == [False, False, False]


def test_cached_and_uncached_runs_agree_and_seed_reproduces(tiny_llama_family) -> None:  # type: ignore[no-untyped-def]
    family = tiny_llama_family
    engine = MergeEngine()
    warm = InputSet(family.models)
    engine.merge_combo("011", warm, out={}, seed=3)  # fills the caches
    out_warm: dict[str, torch.Tensor] = {}
    engine.merge_combo("001", warm, out=out_warm, seed=3)
    out_cold: dict[str, torch.Tensor] = {}
    engine.merge_combo("001", family.models, out=out_cold, seed=3)
    for key in out_cold:
        assert torch.equal(out_warm[key], out_cold[key]), key
    other: dict[str, torch.Tensor] = {}
    engine.merge_combo("001", family.models, out=other, seed=4)
    assert any(not torch.equal(other[k], out_cold[k]) for k in out_cold)


def test_linear_of_identical_models_is_the_model(tiny_llama_family) -> None:  # type: ignore[no-untyped-def]
    same = tiny_llama_family.models[0]
    out: dict[str, torch.Tensor] = {}
    result = MergeEngine().merge_combo("111", [same, same, same], out=out, seed=0)
    assert [log.fallback for log in result.stage_logs] == [None, None, None]
    for key, value in same.items():
        torch.testing.assert_close(out[key], value)


def test_frankenmerge_never_raises_calibration_loss(tiny_llama_family) -> None:  # type: ignore[no-untyped-def]
    family = tiny_llama_family
    calibration = family.calibration(seed=11)
    # Make the inputs disagree more, so some layers are worth taking from an input.
    models = [
        {
            k: v + (0.3 if i == 1 and ".layers.1." in k else 0.0) * torch.randn_like(v)
            for k, v in m.items()
        }
        for i, m in enumerate(family.models)
    ]
    engine = MergeEngine(calibration=calibration)
    model, out = _model_and_out(family)
    result = engine.merge_combo("010", models, out=out, seed=2, scratch_model=model)
    details = result.stage_logs[2].details
    assert details["final_loss"] <= details["baseline_loss"]
    for scores in details["layer_losses"]:
        chosen = min(scores.values())
        assert chosen <= scores["stage2"]
    assert calibration(model) == pytest.approx(details["final_loss"], rel=1e-6)
    # The recorded slices cover every layer in order and replay to the same tensors.
    slices = result.resolved_slices
    assert slices is not None
    layers = [layer for s in slices for layer in range(*s["layer_range"])]
    assert layers == list(range(family.config.num_hidden_layers))
    assert "merge_method: passthrough" in result.config_yaml
    inputs = InputSet(models)
    replay: dict[str, torch.Tensor] = {}
    MergeEngine().run_config(result.config, inputs, out=replay)
    for key in out:
        torch.testing.assert_close(replay[key], out[key])


def test_frankenmerge_without_calibration_is_a_clear_error(tiny_llama_family) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MergeConfigError, match="frankenmerge needs a calibration callable"):
        MergeEngine().merge_combo("000", tiny_llama_family.models, out={}, seed=0)


def _poison_dare(monkeypatch: pytest.MonkeyPatch) -> None:
    """DARE's merge puts one NaN into layer 1's up_proj: a bad stage 2 for the guard to catch."""
    dare = get_method("dare")
    assert isinstance(dare, TaskArithmeticMethod)
    original = dare.merge_deltas

    def poisoned(deltas, *, weights, name, params):  # type: ignore[no-untyped-def]
        merged = original(deltas, weights=weights, name=name, params=params)
        if name.endswith("layers.1.mlp.up_proj.weight"):
            merged[0, 0] = float("nan")
        return merged

    monkeypatch.setattr(dare, "merge_deltas", poisoned)


def test_nan_stage_falls_back_to_linear_and_is_reported(tiny_llama_family, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _poison_dare(monkeypatch)
    models = tiny_llama_family.models
    inputs = InputSet(models)
    out: dict[str, torch.Tensor] = {}
    result = MergeEngine().merge_combo("001", inputs, out=out, seed=0)
    log = result.stage_logs[1]
    assert log.method == "dare"
    assert log.fallback == "NaN/Inf in 'model.layers.1.mlp.up_proj.weight'"
    assert result.fallbacks == ["stage 2 (dare): NaN/Inf in 'model.layers.1.mlp.up_proj.weight'"]
    assert result.stage_logs[0].fallback is None and result.stage_logs[2].fallback is None
    assert all(torch.isfinite(v).all() for v in out.values())
    # The fallback is the linear merge of the stage's inputs (M1, M2, M3 at 1/3 each).
    stage2 = next(t for t, stage_log in inputs.stage_cache.values() if stage_log.name == "stage2")
    for key in models[0]:
        torch.testing.assert_close(stage2[key], sum(m[key] for m in models) / 3)


@pytest.mark.parametrize("reference", ["stage1", "ancestor"])
def test_streamed_chains_equal_stage_by_stage_merges(tiny_llama_family, reference) -> None:  # type: ignore[no-untyped-def]
    """Without a stage cache, runs of tensor-wise stages go key by key (no intermediate
    state dicts; frankenmerge starts from S2 already in the output): bit-identical results."""
    family = tiny_llama_family
    engine = MergeEngine(StageParams(reference=reference), calibration=family.calibration())
    for label in COMBO_LABELS:
        results = []
        for stream in (True, False):
            model, out = _model_and_out(family)
            inputs = InputSet(family.models, base=family.base, cache=False)
            config = engine.combo_config(label, inputs, seed=5)
            result = engine.run_config(
                config, inputs, out=out, scratch_model=model, label=label, stream=stream
            )
            streamed = [bool(log.details.get("streamed")) for log in result.stage_logs]
            # dfs (label xx1) is tensor-wise: all three stages stream; frankenmerge does not.
            want = [True, True, label[2] == "1"] if stream else [False] * 3
            assert streamed == want, (label, stream)
            results.append((result.config_yaml, {k: v.clone() for k, v in out.items()}))
        (yaml_a, a), (yaml_b, b) = results
        assert yaml_a == yaml_b, label  # same resolved slices for frankenmerge
        for key in a:
            assert torch.equal(a[key], b[key]), (label, key)


def test_a_bad_streamed_stage_reruns_stage_by_stage(tiny_llama_family, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _poison_dare(monkeypatch)
    models = tiny_llama_family.models
    out: dict[str, torch.Tensor] = {}
    result = MergeEngine().merge_combo("001", InputSet(models, cache=False), out=out, seed=0)
    assert result.fallbacks == ["stage 2 (dare): NaN/Inf in 'model.layers.1.mlp.up_proj.weight'"]
    assert not any(log.details.get("streamed") for log in result.stage_logs)
    cached: dict[str, torch.Tensor] = {}
    MergeEngine().merge_combo("001", InputSet(models), out=cached, seed=0)
    for key in out:
        assert torch.equal(out[key], cached[key]), key


def test_a_kernel_that_raises_falls_back_to_linear_streamed_or_not(
    tiny_llama_family, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """docs/merging.md "Failures": an exception in a kernel is a linear stage, logged, on
    either path (the streamed one reruns the config stage by stage)."""
    dare = get_method("dare")

    def broken(deltas, *, weights, name, params):  # type: ignore[no-untyped-def]
        raise RuntimeError("my kernel is broken")

    monkeypatch.setattr(dare, "merge_deltas", broken)
    models = tiny_llama_family.models
    outs, cached = [], InputSet(models)
    for inputs in (cached, InputSet(models, cache=False)):
        out: dict[str, torch.Tensor] = {}
        result = MergeEngine().merge_combo("001", inputs, out=out, seed=0)
        assert result.fallbacks == ["stage 2 (dare): RuntimeError: my kernel is broken"]
        outs.append(out)
    stage2 = next(t for t, stage_log in cached.stage_cache.values() if stage_log.name == "stage2")
    for key in models[0]:  # the linear merge of the stage's inputs, M1 M2 M3 at 1/3 each
        torch.testing.assert_close(stage2[key], sum(m[key] for m in models) / 3)
    for key in outs[0]:  # streamed: rerun stage by stage, the same numbers
        assert torch.equal(outs[0][key], outs[1][key]), key


def test_bad_inputs_are_clear_errors(tiny_llama_family) -> None:  # type: ignore[no-untyped-def]
    models = tiny_llama_family.models
    short = dict(models[1])
    short.pop("lm_head.weight")
    with pytest.raises(MergeConfigError, match="input 2 has different tensors than input 1"):
        InputSet([models[0], short, models[2]])
    with pytest.raises(MergeConfigError, match="reference: ancestor needs a base model"):
        MergeEngine(StageParams(reference="ancestor")).merge_combo("011", models, out={}, seed=0)
    with pytest.raises(MergeConfigError, match="three bits"):
        MergeEngine().merge_combo("21", models, out={}, seed=0)


def test_tied_weights_are_merged_once() -> None:
    shared = torch.randn(4, 3)
    state = {"embed.weight": shared, "norm.weight": torch.ones(3), "lm_head.weight": shared}
    assert tied_aliases(state) == {"lm_head.weight": "embed.weight"}


def test_trm_titans_all_eight_combos(tiny_trm_family) -> None:  # type: ignore[no-untyped-def]
    family = tiny_trm_family
    calibration = family.calibration(shape=(1, 8))
    engine = MergeEngine(calibration=calibration)
    inputs = InputSet(family.models)
    assert inputs.aliases == {"lm_head.weight": "model.embed_tokens.weight"}  # tied head
    for label in COMBO_LABELS:
        model, out = _model_and_out(family)
        result = engine.merge_combo(label, inputs, out=out, seed=1, scratch_model=model)
        assert result.fallbacks == [], label
        assert all(torch.isfinite(v).all() for v in out.values()), label
        assert out["lm_head.weight"].data_ptr() == out["model.embed_tokens.weight"].data_ptr()
        assert math.isfinite(calibration(model))


def test_low_precision_inputs_are_merged_in_float32(tiny_llama_family) -> None:  # type: ignore[no-untyped-def]
    models = tiny_llama_family.models
    half = [{k: v.to(torch.bfloat16) for k, v in m.items()} for m in models]
    out: dict[str, torch.Tensor] = {}
    MergeEngine().merge_combo("011", half, out=out, seed=0)
    reference: dict[str, torch.Tensor] = {}
    MergeEngine().merge_combo(
        "011", [{k: v.float() for k, v in m.items()} for m in half], out=reference, seed=0
    )
    for key, value in out.items():
        assert value.dtype == torch.bfloat16
        torch.testing.assert_close(value, reference[key].to(torch.bfloat16))
