"""`recipe run` with a genome strategy (cmaes) on the tiny demo family: honest crowning, KB
checkpoints, resume after a kill, lineage replay, and bad strategy input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from test_recipe_run import _recipe, check_model_card
from typer.testing import CliRunner

from evomerge import hookimpl
from evomerge.cli import app
from evomerge.evolution.checkpoint import Checkpoint, CheckpointError
from evomerge.evolution.recipe import load_recipe
from evomerge.evolution.run import Run
from evomerge.fitness import TaskMetricTerm
from evomerge.plugins import get_plugin_manager
from evomerge.run import search as search_module
from evomerge.run.context import recipe_hash, recipe_identity

CMAES: dict[str, Any] = {
    "generations": 2,
    "seed": 1,
    "strategy": "cmaes",
    "strategy_options": {"popsize": 4, "sigma0": 0.2},
    "layer_groups": 2,
    "selection": {"minibatch": "fresh", "validation_items": 8, "top_k": 2},
}


@pytest.fixture(autouse=True)
def _shared_cache(data_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVOMERGE_CACHE", str(data_cache_dir))


def _cmaes_recipe(tmp: Path, phase1: dict, out: str, **evolution: Any) -> Path:
    # the run's own fitness sample drawn at random (the seed strategy's runs take the first)
    return _recipe(tmp, phase1, out, evolution={**CMAES, **evolution}, fitness={"sample": "random"})


#: What the cmaes_run fixture's run built: its Reference (the own sample's harness) and
#: GenomeLoop (the validation sample), kept by spies that call the real functions.
BUILT: dict[str, Any] = {}


@pytest.fixture(scope="module")
def cmaes_run(
    tmp_path_factory: pytest.TempPathFactory, phase1_tiny: dict, data_cache_dir: Path
) -> Path:
    import os

    from evomerge.run import runner

    os.environ["EVOMERGE_CACHE"] = str(data_cache_dir)
    tmp = tmp_path_factory.mktemp("cmaes")
    real_reference, real_init = runner.reference_scores, search_module.GenomeLoop.__init__

    def reference(*args: Any) -> Any:
        BUILT["ref"] = real_reference(*args)
        return BUILT["ref"]

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        BUILT["loop"] = self

    with pytest.MonkeyPatch.context() as m:
        m.setattr(runner, "reference_scores", reference)
        m.setattr(search_module.GenomeLoop, "__init__", init)
        result = CliRunner().invoke(
            app, ["recipe", "run", str(_cmaes_recipe(tmp, phase1_tiny, "run")), "--quiet"]
        )
    assert result.exit_code in (0, 1), result.output
    return tmp / "run"


def test_champion_is_crowned_on_the_validation_sample(cmaes_run: Path) -> None:
    result = json.loads((cmaes_run / "result.json").read_text())
    search = result["search"]
    assert search["strategy"] == "cmaes"
    assert search["evaluations"] == 8 + 2 * 4  # generation 0, then 2 generations of 4
    # the candidates' combos, not every merge (crowning and the report merge some again)
    assert sum(result["merge_combo_usage"].values()) == search["evaluations"]
    crowning = search["crowning"]
    ids = [c["id"] for c in crowning]
    # the latest generations' bests, the CMA-ES mean and the best generation-0 combo
    assert result["best_gen0_id"] in ids and any("final" in i for i in ids)
    assert any(i.startswith("g0002-") for i in ids) and any(i.startswith("g0001-") for i in ids)
    winner = max(crowning, key=lambda c: c["validation_fitness"])
    assert result["champion_lineage"][-1]["id"] == winner["id"]
    # the champion's fitness is on the run's own fitness sample, like the seed strategy's
    assert result["fitness"] == pytest.approx(result["champion_lineage"][-1]["fitness"])
    assert torch.isfinite(torch.tensor(result["test_fitness"]))
    assert "loop_gain_test" in result and set(result["baselines_test_improvement"]) == {
        "uniform_average",
        "best_gen0",
    }
    resources = result["resources"]
    # genomes, not weights: a generation's checkpoint is KBs (one input's weights are MBs)
    weight_bytes = (cmaes_run / "champion" / "model.safetensors").stat().st_size
    assert 0 < resources["checkpoint_bytes_per_generation"] < min(weight_bytes, 1_000_000)
    assert resources["peak_host_bytes"] > 3 * weight_bytes  # the inputs alone are resident
    before = resources["peak_host_bytes_before_search"]
    after = resources["peak_host_bytes_after_search"]
    assert 3 * weight_bytes < before <= after <= resources["peak_host_bytes"]
    assert resources["peak_device_bytes"] is None  # CPU: no allocator peak
    # the plan: the inputs, their base and the 2 candidates in flight, all in host memory
    assert result["device"]["inputs"] == "device"
    assert resources["planned_device_weight_bytes"] == pytest.approx(6 * weight_bytes, rel=0.01)
    check_model_card(cmaes_run / "champion", result)
    assert "strategy `cmaes`" in (cmaes_run / "champion" / "README.md").read_text()
    # the population is genomes: beside the 3 inputs and their base, 2 models at a time
    assert result["resident_models"]["allocated"] <= 3 + 1 + search_module.IN_FLIGHT
    _check_timing(result["timing"], generations=3)


def test_the_own_sample_is_drawn_by_the_run_seed_and_kept_out_of_validation(
    cmaes_run: Path,
) -> None:
    """``fitness.sample: random``: generation 0 and the inputs' normalisation are scored on
    ``max_items`` documents per task drawn with the run's seed (not lm-eval's first N),
    recorded in result.json, and the validation sample the champion is crowned on is
    drawn from the other documents."""
    import random

    from evomerge.evolution.operators import derive_seed
    from evomerge.fitness import suite_for
    from evomerge.run.reference import own_sample
    from evomerge.run.search import DocSamples

    result = json.loads((cmaes_run / "result.json").read_text())
    recipe = load_recipe(cmaes_run.parent / "run.yaml")
    tasks = suite_for(cmaes_run / "tasks", split="fitness").load()
    counts = {name: len(task.eval_docs) for name, task in tasks.items()}
    drawn = own_sample(recipe, counts)
    assert drawn is not None and set(drawn) == set(counts)
    assert any(picks != list(range(8)) for picks in drawn.values())
    ref, loop = BUILT["ref"], BUILT["loop"]
    for name, picks in drawn.items():
        assert len(set(picks)) == 8 and picks == sorted(picks) and max(picks) < counts[name]
        # the run's own harness scored exactly the drawn documents, and says so
        scored = [doc for _, doc in ref.harness._plans[name].docs]
        assert scored == [tasks[name].eval_docs[i] for i in picks], name
        assert result["fitness_documents"][name] == {
            "scored": 8,
            "of": counts[name],
            "drawn": picks,
        }
        # the run's validation sample lies outside them
        assert len(loop.samples.validation[name]) == 8
        assert not set(loop.samples.validation[name]) & set(picks), name
    other = recipe.model_copy(deep=True)
    other.evolution.seed += 1
    assert own_sample(other, counts) != drawn  # another seed, other documents
    first = recipe.model_copy(deep=True)
    first.fitness.sample = "first"
    assert own_sample(first, counts) is None  # lm-eval's limit: the first 8
    # the default leaves the resume identity as it was, so older checkpoints still resume
    assert "sample" not in recipe_identity(first)["fitness"]
    assert recipe_identity(recipe)["fitness"]["sample"] == "random"
    # with the first 8, validation is what it was before fitness.sample existed
    seed = recipe.evolution.seed
    plain = DocSamples(counts, None, 8, 8, seed)
    for name, n in counts.items():
        old = sorted(random.Random(derive_seed(seed, "validation", name)).sample(range(8, n), 8))
        assert plain.validation[name] == old, name


def _check_timing(timing: dict, generations: int) -> None:
    """Every generation's wall time is split into merge, scoring and the rest."""
    assert timing["prepare_seconds"] > 0 and timing["reference_seconds"] > 0
    gens = timing["generations"]
    assert gens["count"] == generations
    assert gens["merge_seconds"] > 0 and gens["scoring_seconds"] > 0
    assert gens["merge_seconds"] + gens["scoring_seconds"] <= gens["seconds"] + 1e-3
    assert gens["bookkeeping_seconds"] >= -1e-3
    assert gens["seconds"] <= timing["search_seconds"] + 1e-3


def test_genomes_rebuild_the_champion_bit_identically(cmaes_run: Path) -> None:
    from evomerge.evolution.rebuild import rebuild_champion

    _, comparison = rebuild_champion(cmaes_run / "result.json")
    assert comparison["bit_identical"], comparison


def test_searched_genome_exports_a_mergekit_config(cmaes_run: Path) -> None:
    """A searched genome's lineage config is plain mergekit YAML (per-layer-group conditionals)."""
    from evomerge.merge.config import ComboConfig

    result = json.loads((cmaes_run / "result.json").read_text())
    searched = [c["id"] for c in result["search"]["crowning"] if not c["id"].startswith("g0000")]
    assert searched
    config_yaml = result["champion_merge_config"]
    config = ComboConfig.from_yaml(config_yaml, source="result.json")
    # a searched genome's stages 2 and 3 pass stage 1 through (λ = 0, every layer from
    # stage 2), so its config is stage 1 alone; a generation-0 combo keeps all three
    searched_champion = not result["champion_lineage"][-1]["id"].startswith("g0000")
    assert len(config.stages) == (1 if searched_champion else 3)


def test_checkpoint_is_genomes_not_weights_and_resume_gives_the_same_champion(
    cmaes_run: Path, phase1_tiny: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = json.loads((cmaes_run / "result.json").read_text())
    recipe = load_recipe(_cmaes_recipe(tmp_path, phase1_tiny, "killed"))
    calls = {"n": 0}
    original = search_module.GenomeLoop._genome_into

    def dying(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 8 + 4 + 2:  # mid generation 2, after two of its merges
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(search_module.GenomeLoop, "_genome_into", dying)
        with pytest.raises(KeyboardInterrupt):
            Run(recipe, progress=False, log=lambda s: None).execute()
    checkpoint = tmp_path / "killed" / ".checkpoint"
    saved = json.loads((checkpoint / "state.json").read_text())
    assert saved["generation"] == 1
    assert not list(checkpoint.glob("*.safetensors"))  # no weights: genomes and scores only
    assert sum(f.stat().st_size for f in checkpoint.iterdir()) < 1_000_000
    changed = recipe.model_copy(deep=True)
    changed.fitness.max_items = 5  # a refused resume names what changed
    with pytest.raises(
        CheckpointError, match=r"recipe: fitness\.max_items: 8 in the checkpoint, 5 now;"
    ):
        Checkpoint(tmp_path / "killed").load_state(recipe_hash(changed), recipe_identity(changed))
    got = Run(recipe, resume=True, progress=False, log=lambda s: None).execute().result
    assert got["champion_lineage"][-1]["id"] == full["champion_lineage"][-1]["id"]
    assert got["fitness"] == full["fitness"]
    assert got["search"]["crowning"] == full["search"]["crowning"]
    from safetensors.torch import load_file

    wa = load_file(str(cmaes_run / "champion" / "model.safetensors"))
    wb = load_file(str(tmp_path / "killed" / "champion" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    ("evolution", "field", "needle"),
    [
        ({"strategy": "cmaess"}, "evolution.strategy", "unknown strategy 'cmaess'"),
        (
            {"strategy_options": {"popsize": 4, "sigmaa": 1}},
            "evolution.strategy_options.sigmaa",
            "Extra inputs are not permitted",
        ),
        (
            {"strategy_options": {"sigma0": -0.5}},
            "evolution.strategy_options.sigma0",
            "greater than 0",
        ),
        ({"layer_groups": 5}, "evolution.layer_groups", "5 layer groups but the inputs have 2"),
    ],
)
def test_bad_strategy_input_is_one_line_exit_2_nothing_written(
    evolution: dict[str, Any], field: str, needle: str, phase1_tiny: dict, tmp_path: Path
) -> None:
    recipe = _cmaes_recipe(tmp_path, phase1_tiny, "bad", **evolution)
    result = CliRunner().invoke(app, ["recipe", "run", str(recipe), "--quiet"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"{recipe}:" in text and field in text and needle in text, text
    assert not (tmp_path / "bad").exists()


class _McqTerm:
    """A plugin's TaskMetricTerm (docs/plugins.md) on a task of the user's own task dir
    (recipes/tasks: not a generated task, named in no fitness.tasks), held out or not."""

    def __init__(self, test_task: str | None) -> None:
        self.test_task = test_task

    @hookimpl
    def evomerge_register_fitness_terms(self) -> list[TaskMetricTerm]:
        return [TaskMetricTerm("mcq_acc", "example_mcq", "acc", test_task=self.test_task)]


def _plugin_term_run(tmp: Path, phase1: dict, test_task: str | None) -> Any:
    weights = {"perplexity": 0.4, "accuracy": 0.3, "speed": 0.2, "memory": 0.1, "mcq_acc": 0.3}
    evolution = {**CMAES, "generations": 1, "strategy_options": {"popsize": 2, "sigma0": 0.2}}
    tasks = Path(__file__).resolve().parents[1] / "recipes" / "tasks"
    fitness = {"weights": weights, "task_dirs": [str(tasks)]}
    recipe = _recipe(tmp, phase1, "run", evolution=evolution, fitness=fitness)
    pm = get_plugin_manager()
    pm.register(_McqTerm(test_task), name="test_mcq_term")  # the registries see it
    try:
        return CliRunner().invoke(app, ["recipe", "run", str(recipe), "--quiet"])
    finally:
        pm.unregister(name="test_mcq_term")


@pytest.mark.parametrize(
    ("test_task", "needle"),
    [
        (None, "names no test_task"),
        ("example_mcq", "test_task 'example_mcq' is a task the search scores"),
        ("example_mcq_tset", "unknown test_task 'example_mcq_tset'"),
    ],
)
def test_a_plugin_task_term_needs_a_held_out_test_task_before_anything_runs(
    test_task: str | None, needle: str, phase1_tiny: dict, tmp_path: Path
) -> None:
    result = _plugin_term_run(tmp_path, phase1_tiny, test_task)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "fitness.weights.mcq_acc" in text and needle in text, text
    assert not (tmp_path / "run").exists()


def test_a_plugin_task_term_is_searched_on_its_task_and_reported_on_its_test_task(
    phase1_tiny: dict, tmp_path: Path
) -> None:
    """Both of the term's tasks are scored although no fitness.tasks names them, the report
    reads the test task (it used to ask for the search's task and crash after the whole
    search), and the task counts once: as its own term, not in the pooled accuracy."""
    result = _plugin_term_run(tmp_path, phase1_tiny, "example_mcq_test")
    assert result.exit_code in (0, 1), result.output
    report = json.loads((tmp_path / "run" / "result.json").read_text())
    assert "mcq_acc" in report["champion_terms"]
    assert 0.0 <= report["champion_test_raw"]["mcq_acc"] <= 1.0
    assert set(report["fitness_documents"]) >= {"example_mcq"}
    assert set(report["held_out_documents"]) >= {"example_mcq_test"}
