"""`evomerge recipe init`: a recipe for three real fine-tunes, checked, then run as written."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.evolution.recipe import load_recipe


def _init(recipe: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["recipe", "init", str(recipe), *args])
    return result.exit_code, " ".join(result.output.split())


def test_init_writes_a_recipe_that_validates_and_runs(
    real_family, data_cache_dir: Path, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Three llama fine-tunes and their base: relative paths that resolve back to them, the
    layer groups fitted to their 2 decoder layers, the memory plan; `recipe run` on the
    file as written (one generation) gives a champion and the held-out report."""
    monkeypatch.setenv("EVOMERGE_CACHE", str(data_cache_dir))
    family = real_family("llama")
    recipe = tmp_path / "my-merge.yaml"
    code, output = _init(recipe, "--models", *family.models, "--base", family.base)
    assert code == 0, output
    assert output.startswith(f"wrote {recipe} (three llama fine-tunes of ")
    assert "M parameters, 2 layer groups, 8 generations) memory: " in output
    assert "memory: 4 inputs and 2 candidates of " in output
    text = recipe.read_text()
    assert text.startswith(
        "# Made by `evomerge recipe init` for three llama fine-tunes of one base"
    )
    assert "\n    - ../" in text  # relative to the recipe's folder: they move together
    loaded = load_recipe(recipe)
    assert [str(m) for m in loaded.inputs.models or []] == list(family.models)
    assert str(loaded.inputs.base_model) == family.base
    assert loaded.evolution.strategy == "cmaes" and loaded.evolution.layer_groups == 2
    assert loaded.name == "my-merge" and loaded.output == tmp_path / "runs" / "my-merge"
    validated = CliRunner().invoke(app, ["recipe", "validate", str(recipe)])
    assert validated.exit_code == 0, validated.output

    run = CliRunner().invoke(app, ["recipe", "run", str(recipe), "--generations", "1", "--quiet"])
    assert run.exit_code in (0, 1), run.output
    result = json.loads((tmp_path / "runs" / "my-merge" / "result.json").read_text())
    assert result["search"]["strategy"] == "cmaes" and "loop_gain_test" in result
    assert (tmp_path / "runs" / "my-merge" / "champion" / "README.md").is_file()


def test_init_without_a_base_and_its_refusals(real_family, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    family = real_family("llama")
    recipe = tmp_path / "r.yaml"
    code, output = _init(recipe, "--models", *family.models)
    assert code == 0, output
    assert "memory: 3 inputs and 2 candidates of " in output
    assert "base_model" not in recipe.read_text()
    assert load_recipe(recipe).inputs.base_model is None

    before = recipe.read_text()
    code, output = _init(recipe, "--models", *family.models)
    assert code == 2 and output == f"error: {recipe}: exists; use --overwrite to replace it"
    other = real_family("qwen2")
    mixed = tmp_path / "mixed.yaml"
    code, output = _init(mixed, "--models", family.models[0], family.models[1], other.models[2])
    assert code == 2 and output.startswith(f"error: --models: {other.models[2]}/config.json:")
    missing = tmp_path / "missing.yaml"
    code, output = _init(missing, "--models", *family.models[:2], str(tmp_path / "gone"))
    assert code == 2 and output == (
        f"error: --models: {tmp_path / 'gone'}: not a directory (expected a save_pretrained "
        "model dir)"
    )
    assert not mixed.exists() and not missing.exists() and recipe.read_text() == before


def test_init_reads_back_what_it_checked(real_family, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Paths and names YAML would misread are quoted; a symlinked model stays the link;
    --overwrite replaces; --base problems name --base; a file where the output goes is
    refused before anything is written."""
    family = real_family("llama")
    odd = tmp_path / "project"
    odd.mkdir()
    names = ["yes", "ft #1", "a: b"]
    for name, src in zip(names, family.models, strict=True):
        (odd / name).symlink_to(src, target_is_directory=True)
    (odd / "*base").symlink_to(family.base, target_is_directory=True)
    recipe = odd / "null.yaml"
    args = ["--models", *(str(odd / n) for n in names), "--base", str(odd / "*base")]
    code, output = _init(recipe, *args)
    assert code == 0, output
    text = recipe.read_text()
    assert '    - "yes"\n' in text and '    - "a: b"\n' in text and '  base_model: "*base"' in text
    loaded = load_recipe(recipe)
    assert [str(m) for m in loaded.inputs.models or []] == list(family.models)
    assert loaded.name == "null" and str(loaded.inputs.base_model) == family.base

    code, output = _init(recipe, *args, "--generations", "3", "--overwrite")
    assert code == 0 and load_recipe(recipe).evolution.generations == 3
    assert not list(odd.glob(".tmp-*"))

    code, output = _init(tmp_path / "b.yaml", "--models", *family.models, "--base", str(odd))
    assert code == 2 and output.startswith(f"error: --base: {odd}: config: no config.json")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "taken").write_text("a file")
    code, output = _init(tmp_path / "taken.yaml", "--models", *family.models)
    assert code == 2 and output.startswith("error: output: ")
    assert "runs/taken exists and is not a directory" in output
    assert not (tmp_path / "taken.yaml").exists() and not (tmp_path / "b.yaml").exists()
