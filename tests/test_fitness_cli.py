"""`evomerge eval` and `evomerge lm-eval --model evomerge` on a tiny saved model, offline."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.fitness import write_tasks
from evomerge.fitness.tasks import cloze_task_name, ppl_task_name
from evomerge.fitness.testing import (
    make_llama,
    make_tokenizer,
    stdlib_paragraphs,
    train_briefly,
    write_fixture_data,
)

runner = CliRunner()
TASKS = [ppl_task_name("technical", "fitness"), cloze_task_name("technical", "fitness")]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model dir, task dir): a briefly trained tiny Llama saved with its tokenizer."""
    root = tmp_path_factory.mktemp("fitness_cli")
    paragraphs = stdlib_paragraphs()
    tokenizer = make_tokenizer(paragraphs)
    model = train_briefly(make_llama(len(tokenizer)), tokenizer, paragraphs[72:], steps=30)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    task_dir = write_tasks(write_fixture_data(root / "data", paragraphs), root / "tasks")
    return root / "model", task_dir


def _eval(model: Path, task_dir: Path, *extra: str) -> dict:
    out = model.parent / "eval.json"
    args = ["eval", str(model), "--task-dir", str(task_dir), "--tasks", ",".join(TASKS)]
    result = runner.invoke(app, [*args, "--max-items", "3", "--json", str(out), *extra])
    assert result.exit_code == 0, result.output
    assert "total" in result.output and "word_perplexity" in result.output
    return json.loads(out.read_text())


def test_eval_prints_and_writes_every_term(saved: tuple[Path, Path]) -> None:
    model, task_dir = saved
    data = _eval(model, task_dir)
    fitness = data["fitness"]
    assert fitness["normalize"] == "none"  # no --reference: the seed's raw form
    assert set(fitness["terms"]) == {"perplexity", "accuracy", "speed", "memory"}
    raw = fitness["raw"]
    assert fitness["total"] == pytest.approx(
        0.4 / raw["perplexity"] + 0.3 * raw["accuracy"] + 0.2 / raw["speed"] + 0.1 / raw["memory"]
    )
    assert set(data["measurements"]["tasks"]) == set(TASKS)
    assert data["measurements"]["n_items"] == dict.fromkeys(TASKS, 3)
    assert data["versus_references"] is None  # no reference to compare with


def test_eval_draws_the_reports_documents_or_lm_evals_first(saved: tuple[Path, Path]) -> None:
    """--sample random draws N per task as the held-out report does (report_sample's fixed
    seed; the default on --split test, so `eval --split test --max-items N` scores what a
    run's report scored); --sample first is lm-eval's --limit, the default on --split
    fitness (where a run's own sample is the first N)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.fitness import FitnessConfig, FitnessHarness, TaskSuite
    from evomerge.run.report import report_sample

    model, task_dir = saved
    drawn, first = _eval(model, task_dir, "--sample", "random"), _eval(model, task_dir)
    assert (drawn["sample"], first["sample"]) == ("random", "first")
    out = model.parent / "eval-test.json"
    test_tasks = [ppl_task_name("technical", "test"), cloze_task_name("technical", "test")]
    args = ["eval", str(model), "--task-dir", str(task_dir), "--tasks", ",".join(test_tasks)]
    result = runner.invoke(app, [*args, "--split", "test", "--max-items", "3", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["sample"] == "random"  # the report's documents
    suite = TaskSuite(names=tuple(TASKS), include_paths=(task_dir.resolve(),))
    counts = suite.doc_counts()
    assert all(n > 3 for n in counts.values())
    tokenizer = AutoTokenizer.from_pretrained(model)
    loaded = AutoModelForCausalLM.from_pretrained(model)
    expected = {}
    for label, samples in (("drawn", report_sample(counts, 3)), ("first", None)):
        harness = FitnessHarness.build(
            suite,
            tokenizer,
            "cpu",
            config=FitnessConfig(max_items=3),
            samples=samples,
            model_config=loaded.config,
        )
        expected[label] = _flat(harness.measure(loaded, cost=False).tasks)
    assert _flat(drawn["measurements"]["tasks"]) == pytest.approx(expected["drawn"])
    assert _flat(first["measurements"]["tasks"]) == pytest.approx(expected["first"])
    assert expected["drawn"] != pytest.approx(expected["first"])


def _flat(tasks: dict) -> dict[str, float]:
    return {f"{task}/{metric}": v for task, ms in tasks.items() for metric, v in ms.items()}


def test_eval_normalises_against_references(saved: tuple[Path, Path]) -> None:
    model, task_dir = saved
    data = _eval(model, task_dir, "--reference", str(model))
    terms = data["fitness"]["terms"]
    assert data["fitness"]["normalize"] == "inputs"
    assert terms["perplexity"] == pytest.approx(1.0) and terms["accuracy"] == pytest.approx(1.0)
    assert terms["memory"] == 1.0  # same architecture, deterministic CPU memory
    # against itself: no difference any resample of the documents could show
    versus = data["versus_references"]
    assert versus["improvement"] == pytest.approx(data["fitness"]["total"] / 1.0 - 1.0)
    lo, hi = versus["interval"]
    assert lo <= versus["improvement"] <= hi and hi - lo < 1e-9
    assert versus["resamples"] + versus["skipped"] == 1000 and versus["level"] == 0.95


def test_eval_bad_inputs_are_one_line_errors(saved: tuple[Path, Path], tmp_path: Path) -> None:
    model, task_dir = saved
    result = runner.invoke(app, ["eval", str(tmp_path), "--task-dir", str(task_dir)])
    assert result.exit_code == 2 and "not a model directory (no config.json)" in result.output
    result = runner.invoke(
        app, ["eval", str(model), "--task-dir", str(task_dir), "--tasks", "nope"]
    )
    assert result.exit_code == 2 and "unknown task(s) nope" in result.output
    result = runner.invoke(app, ["eval", str(model), "--split", "train"])
    assert result.exit_code == 2 and "--split must be fitness or test" in result.output


def test_lm_eval_passthrough_runs_model_evomerge(saved: tuple[Path, Path], tmp_path: Path) -> None:
    """lm-eval's own CLI, `--model evomerge` from a directory, gives the fast harness's numbers."""
    model, task_dir = saved
    args = [
        "lm-eval",
        "--model",
        "evomerge",
        "--model_args",
        f"pretrained={model}",
        "--device",
        "cpu",
        "--no_default_tasks",
        "--tasks",
        ",".join(TASKS),
        "--include_path",
        str(task_dir),
        "--limit",
        "3",
        "--output_path",
        str(tmp_path / "out"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    lm_eval_results = json.loads(results_file.read_text())["results"]
    ours = _eval(model, task_dir, "--sample", "first")["measurements"]["tasks"]  # as --limit
    for task in TASKS:
        for metric, value in ours[task].items():
            assert lm_eval_results[task][f"{metric},none"] == pytest.approx(value, rel=1e-4)
