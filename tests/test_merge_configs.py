"""Combo labels -> generated multi-document configs: contents, round trip, validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from evomerge.merge import COMBO_LABELS, ComboConfig, MergeConfigError, StageParams, combo_config
from evomerge.merge.combos import label_of

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["/m/one", "/m/two", "/m/three"]


@pytest.mark.parametrize("label", COMBO_LABELS)
@pytest.mark.parametrize("reference", ["stage1", "ancestor"])
def test_round_trip_and_label(label: str, reference: str) -> None:
    params = StageParams(
        reference=reference, methods={"slerp": {"mode": "multislerp"}} if label == "111" else {}
    )
    config = combo_config(label, MODELS, base="/m/base", params=params, seed=9)
    text = config.to_yaml()
    parsed = ComboConfig.from_yaml(text)
    assert parsed == config
    assert parsed.to_yaml() == text
    assert label_of(parsed) == label
    docs = list(yaml.safe_load_all(text))
    assert [d.get("name") for d in docs] == ["stage1", "stage2", None]
    assert docs[2]["models"][0]["model"] == "stage2"  # later stages name earlier ones


def test_generated_documents_follow_the_label() -> None:
    docs = list(yaml.safe_load_all(combo_config("110", MODELS, seed=4).to_yaml()))
    assert docs[0]["merge_method"] == "slerp_chain"
    assert [m["parameters"]["weight"] for m in docs[0]["models"]] == [1 / 3] * 3
    assert docs[1]["merge_method"] == "ties" and docs[1]["base_model"] == "stage1"
    assert docs[1]["parameters"] == {"lambda": 1.0, "density": 0.2, "normalize": True}
    assert docs[2]["merge_method"] == "frankenmerge"
    docs = list(yaml.safe_load_all(combo_config("001", MODELS, seed=4).to_yaml()))
    assert docs[0]["merge_method"] == "linear"
    assert docs[1]["merge_method"] == "dare" and docs[1]["parameters"]["seed"] == 4
    assert docs[1]["parameters"]["density"] == 0.1
    assert docs[2]["merge_method"] == "dfs"
    anchored = list(
        yaml.safe_load_all(
            combo_config(
                "011", MODELS, base="/m/base", params=StageParams(reference="ancestor")
            ).to_yaml()
        )
    )
    assert anchored[1]["merge_method"] == "evomerge_ties"
    assert anchored[1]["base_model"] == "/m/base"
    assert anchored[1]["models"][-1] == {"model": "stage1", "parameters": {"anchor": True}}
    multi = combo_config(
        "100", MODELS, params=StageParams(methods={"slerp": {"mode": "multislerp"}})
    )
    assert multi.stages[0].merge_method == "multislerp"


def test_parameter_overrides_are_written_out() -> None:
    params = StageParams(weights=(0.5, 0.3, 0.2), methods={"ties": {"density": 0.4, "lambda": 0.8}})
    doc = combo_config("011", MODELS, params=params).stages[1]
    assert doc.parameters == {"lambda": 0.8, "density": 0.4, "normalize": True}
    assert [m.parameters["weight"] for m in doc.models or [] if m.parameters] == [0.5, 0.3, 0.2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("merge_method: nope\nmodels: [{model: a}]\n", "no plugin registers merge method 'nope'"),
        ("merge_method: ties\nmodels: [{model: a}]\n", "'ties' needs a base_model"),
        (
            "merge_method: dare\nbase_model: b\nmodels: [{model: a}]\nparameters: {densty: 0.2}\n",
            "'dare' has no parameter 'densty'",
        ),
        (
            "merge_method: ties\nbase_model: b\nmodels: [{model: a}, {model: s, parameters: {anchor: true}}]\n",
            "write 'evomerge_ties' for reference: ancestor",
        ),
        (
            "merge_method: linear\nmodels: [{model: a}]\n---\nmerge_method: linear\nmodels: [{model: a}]\n",
            "needs a 'name'",
        ),
        ("merge_method: linear\n", "give exactly one of 'models' or 'slices'"),
        (
            "merge_method: dfs\nmodels: [{model: a, parameters: {weight: 1}}]\n",
            "'dfs' has no per-input parameter 'weight'",
        ),
    ],
)
def test_bad_configs_fail_with_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(MergeConfigError, match=message) as info:
        ComboConfig.from_yaml(text, source="recipe.yaml")
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("recipe.yaml")


def test_shipped_combo_recipes_match_the_generator() -> None:
    for label in COMBO_LABELS:
        path = ROOT / "recipes" / "combos" / f"combo-{label}.yaml"
        parsed = ComboConfig.from_yaml(path.read_text(), source=str(path))
        expected = combo_config(label, [f"runs/phase1-tiny/model_{i}" for i in (1, 2, 3)], seed=0)
        assert parsed.stages == expected.stages, label


def test_bad_label_and_missing_base() -> None:
    with pytest.raises(MergeConfigError, match="three bits like '010'"):
        combo_config("0101", MODELS)
    with pytest.raises(MergeConfigError, match="needs a base model"):
        combo_config("000", MODELS, params=StageParams(reference="ancestor"))


def test_a_custom_table_picks_the_methods_of_each_bit() -> None:
    params = StageParams(table=(("slerp", "linear"), ("ties", "dare"), ("dfs", "frankenmerge")))
    assert params.combo_methods("000") == ("slerp", "ties", "dfs")
    assert params.combo_methods("101") == ("linear", "ties", "frankenmerge")
    config = combo_config("011", MODELS, params=params)
    assert [s.merge_method for s in config.stages] == ["slerp_chain", "dare", "frankenmerge"]
    assert label_of(config, params) == "011"
    assert label_of(config) == "100"  # the same methods are combo 100 of the default table
    other = StageParams(table=(("slerp", "linear"), ("ties", "dare"), ("linear", "dfs")))
    assert label_of(config, other) is None  # frankenmerge is in no row of that table


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            (("ties", "slerp"), ("dare", "ties"), ("frankenmerge", "dfs")),
            "'ties' cannot fill the interpolation stage \\(declared stage='task_arithmetic'\\); "
            "methods that can: linear, slerp",
        ),
        (
            (("linear", "slerp"), ("dare", "dfs"), ("frankenmerge", "dfs")),
            "'dfs' cannot fill the task_arithmetic stage \\(declared stage='selection', "
            "not a TaskArithmeticMethod\\); methods that can: dare, ties",
        ),
        (
            (("linear", "slerp"), ("dare", "ties"), ("frankenmerge", "nope")),
            "no plugin registers merge method 'nope'",
        ),
    ],
)
def test_a_wrongly_staged_table_is_one_clear_error(table: tuple, message: str) -> None:
    from evomerge.merge import UnknownMergeMethodError

    with pytest.raises((MergeConfigError, UnknownMergeMethodError), match=message):
        combo_config("111", MODELS, params=StageParams(table=table))


def test_a_table_row_names_two_methods() -> None:
    with pytest.raises(ValueError, match="table row 0 names 'linear' twice"):
        StageParams(table=(("linear", "linear"), ("dare", "ties"), ("frankenmerge", "dfs")))
