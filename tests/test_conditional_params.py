"""Per-tensor (conditional) parameters: mergekit's semantics, in the engine and in mergekit itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from evomerge.merge import ComboConfig, InputSet, MergeEngine
from evomerge.merge.base import MergeConfigError
from evomerge.merge.conditional import (
    is_conditional,
    resolve_params_for,
    resolve_weights_for,
    value_for,
)

GROUP1 = "model.layers.1."


@pytest.fixture(scope="module")
def inputs(tiny_llama_family, tiny_llama_dirs) -> InputSet:  # type: ignore[no-untyped-def]
    return InputSet(
        tiny_llama_family.models,
        base=tiny_llama_family.base,
        names=tiny_llama_dirs["models"],
        base_name=tiny_llama_dirs["base"],
    )


@pytest.mark.parametrize(
    "setting",
    [
        0.25,
        {"value": 0.4},
        {"filter": "layers.1.", "value": 0.4},
        [{"filter": "layers.1.", "value": 0.7}, {"value": 0.2}],
        [{"filter": "mlp", "value": 0.1}, {"filter": "*", "value": 0.9}, {"value": 0.3}],
        [{"filter": "nothing-matches", "value": 0.7}],
        [{"filter": "layers.0.", "value": 1}, {"filter": "layers.", "value": 2.5}],
    ],
)
@pytest.mark.parametrize(
    "name",
    [
        "model.layers.1.mlp.up_proj.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "lm_head.weight",
    ],
)
def test_value_for_matches_mergekit_evaluate_setting(setting: Any, name: str) -> None:
    from mergekit.config import ConditionalParameter, evaluate_setting

    parsed: Any = setting
    if isinstance(setting, dict):
        parsed = ConditionalParameter.model_validate(setting)
    elif isinstance(setting, list):
        parsed = [ConditionalParameter.model_validate(e) for e in setting]
    assert value_for(setting, name) == evaluate_setting(name, parsed, validate=lambda v: v)
    assert is_conditional(setting) == (not isinstance(setting, float))


def test_resolve_helpers_and_errors() -> None:
    w = [[{"filter": GROUP1, "value": 2.0}, {"value": 1.0}], 1.0]
    assert resolve_weights_for(w, "model.layers.1.x") == [2.0, 1.0]
    assert resolve_weights_for(w, "lm_head.weight") == [1.0, 1.0]
    params = {"density": [{"filter": GROUP1, "value": 0.9}, {"value": 0.3}], "lambda": 1.0}
    assert resolve_params_for(params, "model.layers.1.x") == {"density": 0.9, "lambda": 1.0}
    from evomerge.merge.registry import get_method

    ties = get_method("ties")
    resolved = ties.resolve({"density": [{"filter": GROUP1, "value": "0.5"}]})
    # validated entry by entry, and mergekit's fall-back to the default written out
    assert resolved["density"] == [{"filter": GROUP1, "value": 0.5}, {"value": 0.2}]
    with pytest.raises(MergeConfigError, match="expected float"):
        ties.resolve({"density": [{"filter": GROUP1, "value": "dense"}]})
    with pytest.raises(MergeConfigError, match="gradient"):
        ties.resolve({"density": [0.1, 0.5]})
    from evomerge.merge.base import MethodParameter

    required = MethodParameter("alpha", float)
    with pytest.raises(MergeConfigError, match="needs a last entry without 'filter'"):
        required.validate([{"filter": GROUP1, "value": 0.5}], method="m")
    assert required.validate([{"value": 1}], method="m") == [{"value": 1.0}]
    with pytest.raises(MergeConfigError, match="'filter' and 'value'"):
        ties.resolve({"density": {"filter": GROUP1}})
    with pytest.raises(MergeConfigError, match="'filter' and 'value'"):
        ties.resolve({"density": [{"filtr": GROUP1, "value": 0.5}]})


def _stage_yaml(
    method: str, paths: list[str], weights: list[Any], params: dict[str, Any], base: str | None
) -> str:
    doc: dict[str, Any] = {"merge_method": method}
    if base is not None:
        doc["base_model"] = base
    doc["models"] = [
        {"model": p, "parameters": {"weight": w}} for p, w in zip(paths, weights, strict=True)
    ]
    if params:
        doc["parameters"] = params
    doc["dtype"] = "float32"
    return yaml.safe_dump(doc, sort_keys=False)


def _run(text: str, inputs: InputSet) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    MergeEngine().run_config(ComboConfig.from_yaml(text), inputs, out=out)
    return out


def _grouped(group1: Any, default: Any) -> list[dict[str, Any]]:
    return [{"filter": GROUP1, "value": group1}, {"value": default}]


GROUPS = {  # method -> (weights, shared params) for [layer-1 group, everything else]
    "linear": ([(0.7, 0.1), (0.2, 0.3), (0.1, 0.6)], {}),
    "ties": (
        [(0.5, 1.0), (0.3, 0.5), (0.2, 0.8)],
        {"density": (0.9, 0.3), "lambda": (0.6, 1.2)},
    ),
}


@pytest.mark.parametrize("method", sorted(GROUPS))
def test_per_group_config_equals_unconditional_config_per_tensor(
    method: str, inputs: InputSet, tiny_llama_dirs
) -> None:  # type: ignore[no-untyped-def]
    weights, params = GROUPS[method]
    paths = tiny_llama_dirs["models"]
    base = tiny_llama_dirs["base"] if method == "ties" else None
    grouped = _run(
        _stage_yaml(
            method,
            paths,
            [_grouped(*w) for w in weights],
            {k: _grouped(*v) for k, v in params.items()},
            base,
        ),
        inputs,
    )
    plain = [
        _run(
            _stage_yaml(
                method, paths, [w[g] for w in weights], {k: v[g] for k, v in params.items()}, base
            ),
            inputs,
        )
        for g in (0, 1)
    ]
    assert any(GROUP1 in k for k in grouped) and any(GROUP1 not in k for k in grouped)
    for key, value in grouped.items():
        expected = plain[0 if GROUP1 in key else 1][key]
        assert torch.equal(value, expected), key
    # the groups really differ, so the test would catch a conditional that is ignored
    assert not torch.equal(
        plain[0]["model.layers.1.mlp.up_proj.weight"], plain[1]["model.layers.1.mlp.up_proj.weight"]
    )


def test_conditional_linear_matches_mergekit_run_merge(
    inputs: InputSet, tiny_llama_dirs, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from transformers import AutoModelForCausalLM

    weights, _ = GROUPS["linear"]
    text = _stage_yaml(
        "linear", tiny_llama_dirs["models"], [_grouped(*w) for w in weights], {}, None
    )
    ours = _run(text, inputs)
    run_merge(
        MergeConfiguration.model_validate(yaml.safe_load(text)),
        str(tmp_path / "out"),
        options=MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True),
    )
    theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32)
    state = theirs.state_dict()
    assert set(state) <= set(ours)
    for key, value in state.items():
        assert (ours[key] - value).abs().max().item() <= 1e-6, key
