"""load_recipe: errors name file:line and field; paths resolve against the recipe's folder; YAML round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.evolution.recipe import Recipe, RecipeError, load_recipe

GOOD = """\
name: round-trip
inputs:
  models: [m1, ../m2, /abs/m3]
  base_model: base
  expected_params: 791436
  params_tolerance: 0.1
stages:
  dare: {density: 0.3}
evolution:
  generations: 7
  mutation: {sigma: 0.02, sigma_mode: absolute, rate: 0.05}
  min_diversity: 0.25
  early_stop: null
  seed: 11
fitness:
  weights: {perplexity: 1.0, accuracy: 0.5}
  task_dirs: [tasks]
  min_improvement: 0.1
tracking: {wandb_mode: disabled, project: p}
device: {device: cpu, precision: bf16}
output: out/run
"""


def _write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _error(path: Path) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    return str(info.value)


def test_unknown_key_names_file_line_and_field(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "inputs:\n  models: [a, b, c]\nevolution:\n  generations: 3\n  generatons: 10\n"
    )
    assert _error(path) == f"{path}:5: evolution.generatons: Extra inputs are not permitted"
    nested = _write(
        tmp_path, "inputs:\n  models: [a, b, c]\nevolution:\n  mutation:\n    sigmaa: 1\n", "n.yaml"
    )
    assert _error(nested).startswith(f"{nested}:5: evolution.mutation.sigmaa: Extra inputs")
    top = _write(tmp_path, "inputs:\n  models: [a, b, c]\ngenerations: 3\n", "t.yaml")
    assert _error(top).startswith(f"{top}:3: generations: Extra inputs")


def test_wrong_type(tmp_path: Path) -> None:
    path = _write(tmp_path, "inputs:\n  models: [a, b, c]\nevolution:\n  generations: many\n")
    assert _error(path).startswith(
        f"{path}:4: evolution.generations: Input should be a valid integer"
    )
    lit = _write(
        tmp_path, "inputs:\n  models: [a, b, c]\ntracking:\n  wandb_mode: sometimes\n", "l.yaml"
    )
    assert _error(lit).startswith(
        f"{lit}:4: tracking.wandb_mode: Input should be 'offline', 'online' or 'disabled'"
    )
    bound = _write(tmp_path, "inputs:\n  models: [a, b, c]\n  params_tolerance: 2\n", "b.yaml")
    assert _error(bound).startswith(
        f"{bound}:3: inputs.params_tolerance: Input should be less than or equal to 1"
    )


def test_models_must_be_three(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\ninputs:\n  models:\n    - a\n    - b\n")
    assert (
        _error(path)
        == f"{path}:3: inputs: Value error, `models` must list exactly 3 model dirs, got 2"
    )


def test_exactly_one_of_models_and_phase1(tmp_path: Path) -> None:
    both = _write(tmp_path, "inputs:\n  phase1: {preset: tiny}\n  models: [a, b, c]\n", "both.yaml")
    assert "give exactly one of `models` (three paths) or `phase1`" in _error(both)
    neither = _write(tmp_path, "inputs:\n  architecture: trm_titans_mag\n", "neither.yaml")
    assert _error(neither).startswith(f"{neither}:2: inputs: Value error, give exactly one of")
    missing = _write(tmp_path, "name: no-inputs\n", "missing.yaml")
    assert _error(missing) == f"{missing}:1: inputs: Field required"
    only_phase1 = load_recipe(
        _write(tmp_path, "inputs:\n  phase1: {preset: tiny, seed: 3}\n", "p1.yaml")
    )
    assert only_phase1.inputs.models is None and only_phase1.inputs.phase1 is not None
    assert only_phase1.inputs.phase1.seed == 3


def test_not_a_recipe(tmp_path: Path) -> None:
    assert _error(tmp_path / "absent.yaml") == f"{tmp_path / 'absent.yaml'}: recipe file not found"
    bad = _write(tmp_path, "inputs:\n  models: [a, b\n", "bad.yaml")
    assert _error(bad).startswith(f"{bad}:3: invalid YAML")
    seq = _write(tmp_path, "- a\n- b\n", "seq.yaml")
    assert _error(seq).startswith(f"{seq}:1: a recipe must be a mapping")


def test_relative_paths_resolve_against_the_recipe_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "project" / "recipes"
    path = _write(folder, GOOD)
    monkeypatch.chdir(tmp_path)  # the current directory must not matter
    r = load_recipe(path)
    assert r.inputs.models == [folder / "m1", tmp_path / "project" / "m2", Path("/abs/m3")]
    assert r.inputs.base_model == folder / "base"
    assert r.fitness.task_dirs == [folder / "tasks"]
    assert r.output == folder / "out" / "run"
    p1 = load_recipe(_write(folder, "inputs:\n  phase1: {out: fam}\n", "p1.yaml"))
    assert p1.inputs.phase1 is not None and p1.inputs.phase1.out == folder / "fam"
    assert p1.output == folder / "runs" / "evomerge"  # defaults resolve too


def test_values_and_defaults(tmp_path: Path) -> None:
    r = load_recipe(_write(tmp_path, GOOD))
    assert r.evolution.generations == 7 and r.evolution.early_stop is None
    assert r.evolution.mutation.sigma_mode == "absolute" and r.evolution.mutation.rate == 0.05
    assert r.stages == {"dare": {"density": 0.3}}
    assert r.fitness.weights == {"perplexity": 1.0, "accuracy": 0.5}
    d = load_recipe(_write(tmp_path, "inputs:\n  models: [a, b, c]\n", "d.yaml"))
    assert d.evolution.early_stop is not None and d.evolution.early_stop.patience == 5
    assert d.tracking.wandb_mode == "offline" and d.evolution.population == 8


def test_to_yaml_round_trips(tmp_path: Path) -> None:
    first = load_recipe(_write(tmp_path, GOOD))
    dumped = first.to_yaml()
    second = load_recipe(
        _write(tmp_path / "elsewhere", dumped)
    )  # absolute paths now: folder no longer matters
    assert second == first
    assert second.to_yaml() == dumped
    assert Recipe.model_validate(first.model_dump(mode="json")) == first
