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


def test_init_with_the_users_own_task(real_family, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """--task-dir/--task/--test-task write recipes/local-finetunes.yaml's fitness block: the
    task as a weighted term, searched on one task and reported on its held-out twin; bad
    task options are refused before anything is written, naming the option."""
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)  # the example task's data_files are relative to the repo root
    family = real_family("llama")
    tasks = repo / "recipes" / "tasks"
    recipe = tmp_path / "mine.yaml"
    own = ["--task-dir", str(tasks), "--task", "example_mcq", "--test-task", "example_mcq_test"]
    code, output = _init(recipe, "--models", *family.models, "--base", family.base, *own)
    assert code == 0, output
    text = recipe.read_text()
    assert "on your own lm-eval task example_mcq (its acc; held out:\n# example_mcq_test)" in text
    assert f"relative data_files from the working directory:\n# run it from {repo}." in text
    loaded = load_recipe(recipe)
    (spec,) = loaded.fitness.task_metrics
    assert (spec.name, spec.task, spec.test_task, spec.metric) == (
        "example_mcq",
        "example_mcq",
        "example_mcq_test",
        "acc",
    )
    assert loaded.fitness.task_dirs == [tasks]
    assert loaded.fitness.weights == {"perplexity": 0.4, "accuracy": 0.2, "example_mcq": 0.4}
    assert CliRunner().invoke(app, ["recipe", "validate", str(recipe)]).exit_code == 0

    models = ["--models", *family.models]
    refused = tmp_path / "refused.yaml"
    for args, message in [
        (own[:4], "error: --task-dir, --task and --test-task go together: give all three or none"),
        (
            [*own[:5], "nope"],
            f"error: --test-task: unknown task 'nope': not defined in {tasks} (it has: "
            "example_mcq, example_mcq_test)",
        ),
        (
            [*own[:5], "example_mcq"],
            "error: --test-task: 'example_mcq' is --task too; the held-out report needs a task "
            "of documents the search never scored",
        ),
        (
            [*own, "--metric", "f1"],
            "error: --metric: 'f1' is not in example_mcq's metric_list (acc)",
        ),
        (
            ["--metric", "acc"],
            "error: --metric names the metric of --task: give --task-dir, --task and --test-task",
        ),
    ]:
        code, output = _init(refused, *models, *args)
        assert (code, output) == (2, message)
    monkeypatch.chdir(tmp_path)  # lm-eval would not find the data files from here
    code, output = _init(refused, *models, *own)
    assert code == 2 and output.startswith(f"error: --task: {tasks / 'example_mcq.yaml'}: ")
    assert "(relative to the working directory" in output
    assert not refused.exists()


def test_init_quotes_task_names_and_dirs_yaml_would_misread(
    real_family, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """A task folder named ``tasks,v2`` and tasks named ``on`` / ``yes`` (YAML 1.1 booleans):
    the recipe reads back that folder and those names."""
    family = real_family("llama")
    folder = tmp_path / "tasks,v2"
    folder.mkdir()
    data = tmp_path / "rows.jsonl"
    data.write_text('{"context": "a", "choices": ["b", "c"], "label": 0}\n')
    for name in ("on", "yes"):
        (folder / f"{name}.yaml").write_text(
            f"task: '{name}'\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
            "doc_to_text: context\ndoc_to_choice: choices\ndoc_to_target: label\n"
            "metric_list:\n  - metric: acc\n"
        )
    recipe = tmp_path / "odd.yaml"
    args = ["--task-dir", str(folder), "--task", "on", "--test-task", "yes"]
    code, output = _init(recipe, "--models", *family.models, *args)
    assert code == 0, output
    loaded = load_recipe(recipe)
    assert loaded.fitness.task_dirs == [folder]
    (spec,) = loaded.fitness.task_metrics
    assert (spec.name, spec.task, spec.test_task) == ("on", "on", "yes")
    assert loaded.fitness.weights == {"perplexity": 0.4, "accuracy": 0.2, "on": 0.4}
