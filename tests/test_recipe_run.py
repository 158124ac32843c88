"""`evomerge recipe run` end to end on the tiny demo family: outputs, exit codes, resume, bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.evolution import loop as loop_module
from evomerge.evolution.recipe import load_recipe
from evomerge.evolution.run import Run

COMBOS = [f"{i:03b}" for i in range(8)]


def _recipe(tmp: Path, phase1: dict, out: str, **overrides: Any) -> Path:
    data: dict[str, Any] = {
        "name": "test-run",
        "inputs": {
            "models": phase1["models"],
            "base_model": phase1["base_model"],
            "architecture": "trm_titans_mag",
        },
        "evolution": {
            "generations": 3,
            "seed": 3,
            "mutation": {"sigma": 0.01, "sigma_mode": "relative", "rate": 0.05},
        },
        "fitness": {
            "max_items": 8,
            "report_max_items": 16,
            "time_repeats": 2,
            "time_seq_len": 64,
            "calibration_sequences": 2,
            "calibration_seq_len": 64,
        },
        "tracking": {"wandb_mode": "disabled"},
        "device": {"device": "cpu"},
        "output": str(tmp / out),
    }
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp / f"{out}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(autouse=True)
def _shared_cache(data_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVOMERGE_CACHE", str(data_cache_dir))


@pytest.fixture(scope="module")
def finished_run(
    tmp_path_factory: pytest.TempPathFactory, phase1_tiny: dict, data_cache_dir: Path
) -> tuple[Path, int]:
    import os

    os.environ["EVOMERGE_CACHE"] = str(data_cache_dir)
    tmp = tmp_path_factory.mktemp("run")
    recipe = _recipe(tmp, phase1_tiny, "full", tracking={"wandb_mode": "offline"})
    result = CliRunner().invoke(app, ["recipe", "run", str(recipe), "--quiet"])
    assert result.exit_code in (0, 1), result.output
    return tmp / "full", result.exit_code


def test_run_writes_every_output(finished_run: tuple[Path, int]) -> None:
    from transformers import AutoModelForCausalLM

    out, code = finished_run
    result = json.loads((out / "result.json").read_text())
    assert code == (0 if result["passed"] else 1)
    for key in (
        "model",
        "fitness",
        "improvement",
        "evolution_log",
        "merge_combo_usage",
        "champion_lineage",
        "test_improvement",
    ):
        assert key in result
    assert sorted(result["merge_combo_usage"]) == COMBOS
    assert all(result["merge_combo_usage"][c] >= 1 for c in COMBOS)  # generation 0 uses every combo
    log = result["evolution_log"]
    assert log["generations"] == 3 and len(log["best_fitness_per_gen"]) == 4 == len(
        log["diversity_per_gen"]
    )
    assert log["best_fitness_per_gen"] == sorted(log["best_fitness_per_gen"])
    assert result["resident_models"]["peak"] <= 12 and result["resident_models"]["allocated"] <= 12
    # the seed loop checkpoints its population's weights: at least 8 models' worth per generation
    weight_bytes = (out / "champion" / "model.safetensors").stat().st_size
    assert result["resources"]["checkpoint_bytes_per_generation"] > 7 * weight_bytes
    gens = result["timing"]["generations"]
    assert gens["count"] == 4 and gens["merge_seconds"] > 0 and gens["scoring_seconds"] > 0
    assert gens["merge_seconds"] + gens["scoring_seconds"] <= gens["seconds"] + 1e-3
    model = AutoModelForCausalLM.from_pretrained(out / "champion")
    assert model.config.model_type == "trm_titans_mag"
    assert [
        json.loads(line)["generation"]
        for line in (out / "evolution.jsonl").read_text().splitlines()
    ] == [0, 1, 2, 3]
    assert (out / "evolution.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "wandb").is_dir()  # offline W&B run inside the output
    assert not (out / ".checkpoint").exists()  # intermediate models are not left behind
    # the champion really scores what result.json says: fitness >= every input's
    assert result["fitness"] >= max(result["inputs"]["fitness"])
    check_model_card(out / "champion", result)
    card = (out / "champion" / "README.md").read_text()
    assert "plugin that registers the `trm_titans_mag` architecture" in card
    from evomerge.run.model_card import model_card

    # the run's own fitness sample: the first 8 per task (fitness.sample: first)
    assert {d["scored"] for d in result["fitness_documents"].values()} == {8}
    assert not any("drawn" in d for d in result["fitness_documents"].values())
    # 16 of each task's test documents, drawn at random (evomerge/run/report.py report_sample)
    documents = result["held_out_documents"]
    assert len(documents) == 6 and {d["scored"] for d in documents.values()} == {16}
    total = sum(d["of"] for d in documents.values())
    assert all(d["of"] > 16 for d in documents.values())
    assert f"never used for selection; 96 of {total:,} test documents of 6 tasks: 16 per " in card
    documents["small_task"] = {"scored": 5, "of": 5}
    fewer = "16 per task drawn at random with a fixed seed, the same for every run; all of any "
    assert fewer + "task with fewer)" in model_card(result)
    for d in documents.values():
        d["scored"] = d["of"]
    every = model_card(result)
    assert f"never used for selection; all {total + 5:,} test documents of its 7 tasks)" in every
    del result["held_out_documents"]  # a result.json from before the count was recorded
    assert "never used for selection; the first 16 per task)" in model_card(result)
    result["recipe"]["fitness"]["report_max_items"] = None  # null: the search's count
    assert "never used for selection; the first 8 per task)" in model_card(result)


def test_the_report_scores_the_drawn_documents(finished_run: tuple[Path, int]) -> None:
    """The held-out harness scores report_sample's documents (not lm-eval's first N), and
    result.json counts what was scored."""
    from evomerge.evolution.recipe import load_recipe
    from evomerge.fitness import suite_for
    from evomerge.run.reference import fitness_config
    from evomerge.run.report import held_out_scorer, report_sample

    out, _ = finished_run
    recipe = load_recipe(out.parent / "full.yaml")
    task_dir = out / "tasks"
    suite = suite_for(task_dir, split="test")
    tasks = suite.load()
    picks = report_sample({n: len(t.eval_docs) for n, t in tasks.items()}, 16)
    assert picks is not None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "champion")
    champion = AutoModelForCausalLM.from_pretrained(out / "champion")
    cfg = fitness_config(recipe, report=True)
    held = held_out_scorer(
        recipe, task_dir, tokenizer, torch.device("cpu"), champion.config, [champion]
    )
    assert cfg.max_items == 16
    for name, task in tasks.items():
        docs = [doc for _, doc in held.harness._plans[name].docs]
        assert docs == [task.eval_docs[i] for i in picks[name]], name
        assert held.documents[name] == {"scored": 16, "of": len(task.eval_docs)}


def check_model_card(champion: Path, result: dict) -> None:
    """champion/README.md: Hugging Face card metadata, and the held-out table from result.json
    (the champion beside both baselines and every input), the lineage's merge config."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(champion / "README.md")
    assert card.data.library_name == "transformers" and "evomerge" in card.data.tags
    text = card.text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == "| model | test fitness | vs the inputs' mean | 95 % interval |"
    lo, hi = result["held_out_intervals"]["test_improvement"]["champion"]
    assert rows[1] == (
        f"| **this model** | {result['test_fitness']:.4f} | {result['test_improvement']:+.1%} "
        f"| {lo:+.1%} to {hi:+.1%} |"
    )
    soup = result["baselines_test_fitness"]["uniform_average"]
    assert rows[2].startswith(f"| uniform average (soup) | {soup:.4f} |")
    assert rows[3].startswith(
        f"| best gen-0 combo | {result['baselines_test_fitness']['best_gen0']:.4f} |"
    )
    assert len(rows) == 4 + 3  # and the three inputs
    assert f"{result['loop_gain_test'] * 100:+.1f} percentage points (95% interval " in text
    assert f"on this split: {'met' if result['passed'] else 'not met'}." in text
    for i, path in enumerate(result["inputs"]["models"]):
        total = result["inputs"]["test_fitness"][i]
        assert rows[4 + i].startswith(f"| input {i + 1} (`{Path(path).name}`) | {total:.4f} |")
    weights = result["recipe"]["fitness"]["weights"]
    assert f"so the inputs average {sum(weights.values()):g}:" in text
    assert f"candidate `{result['champion_lineage'][-1]['id']}`" in text
    assert result["champion_merge_config"].rstrip() in text
    if result["inputs"]["base_model"]:  # whether the champion's own config merges the base
        anchored = "- model: base_model" in result["champion_merge_config"]
        role = (
            "stage-1 weights are task vectors against it" if anchored else "merge does not use it"
        )
        assert f"- their common base (the champion's {role}): `" in text


@pytest.mark.parametrize("inputs", ["disk", "device"])
def test_lineage_rebuilds_the_champion_bit_identically(
    finished_run: tuple[Path, int], inputs: str
) -> None:
    """Every node of the seed loop's lineage (combos of combos, mutations stepping toward the
    inputs) replays exactly, the inputs read from their files or loaded whole."""
    from evomerge.evolution.rebuild import rebuild_champion

    out, _ = finished_run
    _, comparison = rebuild_champion(out / "result.json", inputs=inputs)  # type: ignore[arg-type]
    assert comparison["bit_identical"], comparison


def test_lineage_rebuild_out_saves_the_champion_with_its_card(
    finished_run: tuple[Path, int], tmp_path: Path
) -> None:
    """The rebuilt dir is the champion again: same weights, and its card pointing at the
    result.json it was rebuilt from."""
    from safetensors.torch import load_file

    out, _ = finished_run
    rebuilt = tmp_path / "rebuilt"
    result = CliRunner().invoke(
        app, ["lineage", "rebuild", str(out / "result.json"), "--out", str(rebuilt)]
    )
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert f"saved rebuilt champion to {rebuilt}" in said
    assert f"lineage nodes: bit-identical to the run's champion, {out / 'champion'}" in said
    wa = load_file(str(out / "champion" / "model.safetensors"))
    wb = load_file(str(rebuilt / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    report = json.loads((out / "result.json").read_text())
    check_model_card(rebuilt, report)
    card = (rebuilt / "README.md").read_text()
    assert (
        f"Rebuilt on cpu from `{(out / 'result.json').resolve()}` (bit-identical to the "
        "champion the run saved), which holds every figure" in card
    )


def test_lineage_rebuild_refuses_an_unknown_inputs_mode(finished_run: tuple[Path, int]) -> None:
    out, _ = finished_run
    result = CliRunner().invoke(
        app, ["lineage", "rebuild", str(out / "result.json"), "--inputs", "host"]
    )
    assert result.exit_code == 2 and "--inputs: 'host' is not one of disk, device" in result.output


def test_report_scores_the_loop_against_honest_baselines(
    finished_run: tuple[Path, int], data_cache_dir: Path
) -> None:
    """The soup and the best generation-0 combo are scored held out; loop_gain_test is the difference."""
    import math

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.evolution.pool import load_weights_, weights
    from evomerge.run.report import held_out_scorer

    out, _ = finished_run
    result = json.loads((out / "result.json").read_text())
    gains = result["baselines_test_improvement"]
    assert sorted(gains) == ["best_gen0", "uniform_average"]
    assert sorted(result["baselines_test_fitness"]) == sorted(gains)
    assert all(
        math.isfinite(v) for v in [*gains.values(), *result["baselines_test_fitness"].values()]
    )
    assert result["loop_gain_test"] == result["test_improvement"] - max(gains.values())
    assert result["best_gen0_id"].startswith("g0000-")
    assert result["best_gen0_fitness"] == result["evolution_log"]["best_fitness_per_gen"][0]
    # the baseline really is that combo: rebuilt from its lineage, it scores what it was selected with
    assert result["best_gen0_replayed_fitness"] == pytest.approx(
        result["best_gen0_fitness"], abs=1e-9
    )
    # the soup is the plain mean of the inputs: score an independently computed one
    paths = result["inputs"]["models"]
    models = [AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval() for p in paths]
    states = [weights(m) for m in models]
    soup = AutoModelForCausalLM.from_pretrained(paths[0], dtype=torch.float32).eval()
    load_weights_(soup, {k: torch.stack([s[k] for s in states]).mean(0) for k in states[0]})
    recipe = load_recipe(out.parent / "full.yaml")
    held = held_out_scorer(
        recipe,
        out / "tasks",
        AutoTokenizer.from_pretrained(paths[0]),
        torch.device("cpu"),
        models[0].config,
        models,
    )
    assert [s.total for s in held.input_scores] == pytest.approx(
        result["inputs"]["test_fitness"], abs=1e-6
    )
    expected = held.score(soup, "uniform_average").total
    assert abs(expected - result["baselines_test_fitness"]["uniform_average"]) < 1e-6
    assert held.improvement(expected) == pytest.approx(gains["uniform_average"], abs=1e-6)

    # the bootstrap's figures: on the measured documents (each picked once, in order) they
    # are the report's own; its intervals hold the report's figures
    from evomerge.fitness.bootstrap import resampled

    champion = AutoModelForCausalLM.from_pretrained(out / "champion", dtype=torch.float32).eval()
    held.score(champion, "champion")
    every = {task: list(range(n)) for task, n in held.input_measurements[0].n_items.items()}
    for figures in (
        held.improvements(
            [copy.copy(m) for m in held.input_measurements],
            {k: copy.copy(m) for k, m in held.measured.items()},
        ),
        held.improvements(
            [resampled(m, every, held.harness.aggregate) for m in held.input_measurements],
            {k: resampled(m, every, held.harness.aggregate) for k, m in held.measured.items()},
        ),
    ):
        assert figures["champion"] == pytest.approx(result["test_improvement"], abs=1e-9)
        assert figures["uniform_average"] == pytest.approx(held.improvement(expected), abs=1e-9)
    intervals = result["held_out_intervals"]
    assert intervals["resamples"] + intervals["skipped"] == 1000 and intervals["level"] == 0.95
    assert intervals["skipped"] < 50
    assert sorted(intervals["test_improvement"]) == [
        "best_gen0", "champion", "input_1", "input_2", "input_3", "uniform_average"
    ]  # fmt: skip
    lo, hi = intervals["test_improvement"]["champion"]
    assert lo < result["test_improvement"] < hi
    lo, hi = intervals["loop_gain_test"]
    assert lo < result["loop_gain_test"] < hi
    for lead in intervals["champion_lead"].values():
        assert 0.0 <= lead["share_ahead"] <= 1.0 and lead["interval"][0] <= lead["interval"][1]


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, calls: int, where: str) -> None:
    """Simulate a kill: raise after `calls` generation steps, at the boundary or mid-generation."""
    original = loop_module.EvolutionLoop.step
    count = {"n": 0}

    def step(self: loop_module.EvolutionLoop) -> None:
        count["n"] += 1
        if count["n"] > calls:
            if where == "mid":  # die inside the generation, after merging started
                self.merge = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())  # type: ignore[method-assign]
            else:
                raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(loop_module.EvolutionLoop, "step", step)


@pytest.mark.parametrize("where", ["boundary", "mid"])
def test_resume_after_kill_gives_the_same_champion(
    where: str,
    finished_run: tuple[Path, int],
    phase1_tiny: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    full = json.loads((finished_run[0] / "result.json").read_text())
    recipe = load_recipe(_recipe(tmp_path, phase1_tiny, "killed"))
    with monkeypatch.context() as m:
        _interrupt_after(m, 1, where)
        with pytest.raises(KeyboardInterrupt):
            Run(recipe, progress=False, log=lambda s: None).execute()
    assert (tmp_path / "killed" / ".checkpoint" / "state.json").exists()
    outcome = Run(recipe, resume=True, progress=False, log=lambda s: None).execute()
    got = outcome.result
    assert got["champion_lineage"][-1]["id"] == full["champion_lineage"][-1]["id"]
    assert got["fitness"] == full["fitness"]
    # the best generation-0 combo survives the checkpoint: the same baselines after resume
    assert got["best_gen0_id"] == full["best_gen0_id"]
    assert got["baselines_test_fitness"] == pytest.approx(full["baselines_test_fitness"], abs=1e-9)
    from safetensors.torch import load_file

    wa = load_file(str(finished_run[0] / "champion" / "model.safetensors"))
    wb = load_file(str(tmp_path / "killed" / "champion" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigterm_stops_the_run_like_ctrl_c_and_it_resumes(
    phase1_tiny: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch scheduler's SIGTERM after generation 1: exit 143 with the resume hint, the
    checkpoint kept, and --resume finishes the run."""
    import os
    import signal

    original = loop_module.EvolutionLoop.step
    count = {"n": 0}

    def step(self: loop_module.EvolutionLoop) -> None:
        count["n"] += 1
        if count["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` from outside
        original(self)

    recipe = _recipe(tmp_path, phase1_tiny, "termed", evolution={"generations": 2})
    before = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as m:
        m.setattr(loop_module.EvolutionLoop, "step", step)
        result = CliRunner().invoke(app, ["recipe", "run", str(recipe), "--quiet"])
    assert result.exit_code == 143, result.output
    said = " ".join(result.output.split())
    assert "terminated (SIGTERM):" in said and "--resume" in said, said
    assert (tmp_path / "termed" / ".checkpoint" / "state.json").exists()
    assert signal.getsignal(signal.SIGTERM) is before  # the handler lasts as long as the run
    resumed = CliRunner().invoke(app, ["recipe", "run", str(recipe), "--quiet", "--resume"])
    assert resumed.exit_code in (0, 1), resumed.output
    assert (tmp_path / "termed" / "result.json").exists()


def _expect_exit_2(recipe: Path, needle: str) -> None:
    result = CliRunner().invoke(app, ["recipe", "run", str(recipe), "--quiet"])
    assert result.exit_code == 2, result.output
    assert needle in " ".join(result.output.split())


def test_bad_inputs_exit_2_and_write_nothing(tmp_path: Path, phase1_tiny: dict) -> None:
    models = phase1_tiny["models"]
    two = _recipe(tmp_path, phase1_tiny, "two", inputs={"models": models[:2]})
    _expect_exit_2(two, "exactly 3")
    assert not (tmp_path / "two").exists()
    params = _recipe(tmp_path, phase1_tiny, "params", inputs={"expected_params": 25_000_000})
    _expect_exit_2(params, "param")
    assert not (tmp_path / "params").exists()
    missing = _recipe(
        tmp_path,
        phase1_tiny,
        "missing",
        inputs={"models": [models[0], models[1], str(tmp_path / "nope")]},
    )
    _expect_exit_2(missing, "nope")
    assert not (tmp_path / "missing").exists()
    typo = tmp_path / "typo.yaml"
    valid = _recipe(tmp_path, phase1_tiny, "valid")
    typo.write_text(valid.read_text().replace("generations:", "generationz:"))
    _expect_exit_2(typo, "generationz")


def test_accelerate_two_processes_equal_one(
    finished_run: tuple[Path, int], phase1_tiny: dict, data_cache_dir: Path, tmp_path: Path
) -> None:
    """`accelerate launch` with 2 CPU processes (gloo) shards scoring and finds the same champion."""
    import os
    import subprocess
    import sys

    one = json.loads((finished_run[0] / "result.json").read_text())
    recipe = _recipe(tmp_path, phase1_tiny, "two-procs")
    env = {
        **os.environ,
        "EVOMERGE_CACHE": str(data_cache_dir),
        "OMP_NUM_THREADS": "1",  # two processes on a 2-core machine: one thread each
        "CUDA_VISIBLE_DEVICES": "",
    }
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--cpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    proc = subprocess.run(
        [*launch, "-m", "evomerge", "recipe", "run", str(recipe), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    two = json.loads((tmp_path / "two-procs" / "result.json").read_text())
    assert two["champion_lineage"][-1]["id"] == one["champion_lineage"][-1]["id"]
    assert two["fitness"] == pytest.approx(one["fitness"], rel=1e-6)
    assert two["evolution_log"]["best_fitness_per_gen"] == pytest.approx(
        one["evolution_log"]["best_fitness_per_gen"], rel=1e-6
    )
    assert two["merge_combo_usage"] == one["merge_combo_usage"]
    # the held-out report too: no timing of the champion alone (it once read 1.49x "faster")
    assert two["test_improvement"] == pytest.approx(one["test_improvement"], rel=1e-6)
    assert two["champion_test_terms"]["speed"] == 1.0 == one["champion_test_terms"]["speed"]
    assert two["best_gen0_id"] == one["best_gen0_id"]
    assert two["baselines_test_fitness"] == pytest.approx(one["baselines_test_fitness"], rel=1e-6)
