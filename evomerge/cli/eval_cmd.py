"""``evomerge eval``: composite fitness of one model; ``evomerge lm-eval``: lm-eval's CLI + our model type."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import typer

app = typer.Typer(help="Fitness evaluation.")

_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


def _why_not(path: Path) -> str:
    """What a path that is not a model dir is instead, when that is a common mistake."""
    from evomerge.evolution.model_dir import not_a_model_hint
    from evomerge.hub_cache import not_cached_hint

    if path.exists():
        return not_a_model_hint(path) if path.is_dir() else ""
    return not_cached_hint(path)


def _load(model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import evomerge

    evomerge.load_plugins()  # plugin model families load with AutoModel

    if not (model_dir / "config.json").is_file():
        raise _fail(f"{model_dir}: not a model directory (no config.json){_why_not(model_dir)}")
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:  # noqa: BLE001 - one clear line, not a traceback
        raise _fail(
            f"{model_dir}: cannot load model/tokenizer ({type(exc).__name__}: {exc})"
        ) from None
    return model, tokenizer


def _split_names(values: list[str] | None) -> list[str] | None:
    names = [n.strip() for v in values or [] for n in v.split(",") if n.strip()]
    return names or None


@app.command("eval")
def eval_command(
    model_dir: Path = typer.Argument(
        ..., help="Model directory (save_pretrained output), or a repo id in the local HF cache."
    ),
    tasks: Optional[list[str]] = typer.Option(
        None,
        "--tasks",
        help="Task names, repeatable or comma-separated (default: all generated tasks of --split).",
    ),
    split: str = typer.Option("fitness", "--split", help="fitness | test"),
    json_out: Optional[Path] = typer.Option(
        None, "--json", help="Write every term and metric as JSON here."
    ),
    task_dir: Optional[list[Path]] = typer.Option(
        None,
        "--task-dir",
        help="lm-eval task directories (default: generate from the prepared demo data).",
    ),
    reference: Optional[list[Path]] = typer.Option(
        None, "--reference", help="Input model dirs to normalise terms against (repeatable)."
    ),
    config: Optional[Path] = typer.Option(None, "--config", help="FitnessConfig YAML."),
    max_items: Optional[int] = typer.Option(
        None, "--max-items", help="Documents per task (default: the config's max_items, 200)."
    ),
    sample: Optional[str] = typer.Option(
        None,
        "--sample",
        help="random: N per task drawn with the held-out report's fixed seed (the default for "
        "--split test: --max-items N scores what a run's report scored); first: the first N, "
        "lm-eval's --limit (the default for --split fitness: the sample a run with "
        "fitness.sample: first starts from).",
    ),
    device: Optional[str] = typer.Option(None, "--device", help="Default: accelerate's device."),
) -> None:
    """Measure one model (perplexity, accuracy, speed, memory, plugin terms) and print its fitness."""
    import yaml
    from pydantic import ValidationError

    from evomerge.device import device_problem
    from evomerge.evolution.recipe import error_loc, yaml_problem
    from evomerge.fitness import CompositeFitness, FitnessConfig, FitnessHarness, TaskSuite
    from evomerge.fitness.tasks import generated_task_names, write_tasks
    from evomerge.fitness.terms import term_tasks

    if split not in ("fitness", "test"):
        raise _fail(f"--split must be fitness or test, got {split!r}")
    sample = sample or ("random" if split == "test" else "first")
    if sample not in ("random", "first"):
        raise _fail(f"--sample must be random or first, got {sample!r}")
    if max_items is not None and max_items < 1:
        raise _fail(f"--max-items must be at least 1, got {max_items}")
    problem = device_problem(device) if device is not None else None
    if problem is not None:
        raise _fail(f"--device: {problem}")
    # every path checked before the (long) measurements, not after them
    from evomerge.hub_cache import model_location

    model_dir = model_location(model_dir)  # a dir, or a repo id in the Hugging Face cache
    reference = [model_location(path) for path in reference or []]
    for path in reference:
        if not (path / "config.json").is_file():
            raise _fail(
                f"--reference: {path}: not a model directory (no config.json){_why_not(path)}"
            )
    for path in task_dir or []:
        if not path.is_dir():
            raise _fail(f"--task-dir: {path}: not a directory")
    if json_out is not None and not json_out.parent.is_dir():
        raise _fail(f"--json: {json_out.parent}: no such directory")
    try:
        cfg = FitnessConfig.from_yaml(config.read_text()) if config else FitnessConfig()
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in error_loc(tuple(err["loc"]))) or "(top level)"
        raise _fail(f"{config}: {field}: {err['msg']}") from None
    except yaml.YAMLError as exc:
        raise _fail(yaml_problem(Path(str(config)), exc)) from None
    except (OSError, ValueError) as exc:
        raise _fail(f"{config}: {exc}") from None
    updates: dict[str, Any] = {"split": split}
    if max_items is not None:
        updates["max_items"] = max_items
    cfg = cfg.model_copy(update=updates)
    names = _split_names(tasks) or cfg.tasks
    try:
        extra = term_tasks(cfg, split)  # the task-metric terms' tasks, the plugins' too
    except (KeyError, ValueError) as exc:
        raise _fail(f"{config or 'fitness'}: weights: {exc}") from None
    refs = list(reference or [])
    model, tokenizer = _load(model_dir)
    with tempfile.TemporaryDirectory(prefix="evomerge-tasks-") as tmp:
        if task_dir:
            include = [*task_dir, *cfg.task_dirs]
        else:
            from evomerge.data import prepare_data

            layout = prepare_data(progress=False)
            include = [
                write_tasks(layout, Path(tmp), domains=cfg.domains, splits=[split]),
                *cfg.task_dirs,
            ]
        chosen = tuple(names or generated_task_names(cfg.domains, split))
        suite = TaskSuite(
            names=chosen + tuple(t for t in extra if t not in chosen),
            include_paths=tuple(Path(p).resolve() for p in include),
            split=split,
        )
        try:
            picks = None
            if sample == "random" and cfg.max_items is not None:
                from evomerge.run.report import report_sample

                picks = report_sample(suite.doc_counts(), cfg.max_items)
            harness = FitnessHarness.build(
                suite, tokenizer, device, config=cfg, model_config=model.config, samples=picks
            )
        except (KeyError, ValueError, FileNotFoundError) as exc:
            message = str(exc.args[0] if isinstance(exc, KeyError) else exc)
            # the generated tasks live in a temporary dir that is gone when the user reads this
            message = message.replace(f" in {tmp}", " in the generated demo tasks")
            if message.startswith("unknown task"):
                message = f"--tasks: {message}"
            raise _fail(message) from None
        measured = harness.measure(model)
        ref_measured = {str(p): harness.measure(_load(p)[0]) for p in refs}
    if ref_measured:
        fitness = CompositeFitness.from_inputs(cfg, list(ref_measured.values()))
    else:
        fitness = CompositeFitness(cfg.model_copy(update={"normalize": "none"}))
    score = fitness.score(measured)
    _print(model_dir, score, measured, fitness)
    versus = _versus_references(cfg, harness.aggregate, measured, list(ref_measured.values()))
    if versus is not None:
        _print_versus(versus)
    if json_out:
        payload = {
            "model": str(model_dir),
            "split": split,
            "sample": sample,
            "fitness": score.to_dict(),
            "measurements": measured.to_dict(),
            "references": {k: v.to_dict() for k, v in ref_measured.items()},
            "versus_references": versus,
            "config": cfg.model_dump(mode="json"),
        }
        json_out.write_text(json.dumps(payload, indent=2) + "\n")


def _versus_references(
    cfg: Any, aggregate: Any, measured: Any, references: list[Any]
) -> dict[str, Any] | None:
    """The model's improvement over the references' mean, with a paired bootstrap interval
    over the documents (evomerge/fitness/bootstrap.py), as the run's held-out report gives
    one: is the difference more than these documents' luck? None without references."""
    import functools

    from evomerge.fitness.bootstrap import improvements_over_inputs, paired_bootstrap

    if not references:
        return None
    improvements = functools.partial(improvements_over_inputs, cfg)

    intervals = paired_bootstrap(
        references,
        {"model": measured},
        aggregate=aggregate,
        improvements=improvements,
        champion="model",
    )
    return {
        "improvement": improvements(references, {"model": measured})["model"],
        "interval": intervals["test_improvement"]["model"] if intervals else None,
        "resamples": intervals["resamples"] if intervals else 0,
        "skipped": intervals["skipped"] if intervals else 0,
        "level": intervals["level"] if intervals else None,
    }


def _print_versus(versus: dict[str, Any]) -> None:
    from rich.console import Console

    line = f"vs the references' mean: {versus['improvement']:+.2%}"
    if versus["interval"]:
        lo, hi = versus["interval"]
        line += (
            f" ({versus['level']:.0%} interval {lo:+.2%} to {hi:+.2%} over "
            f"{versus['resamples']:,} paired bootstrap resamples of the documents"
            + (
                f"; {versus['skipped']:,} more drew documents every reference scored 0 on"
                if versus["skipped"]
                else ""
            )
            + ")"
        )
    Console(highlight=False).print(line)


def _print(model_dir: Path, score: Any, measured: Any, fitness: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"fitness of {model_dir} (normalize: {score.normalize})")
    for col in ("term", "raw", "unit", "term value", "weight", "weighted"):
        table.add_column(col, justify="left" if col in ("term", "unit") else "right")
    for term, weight in fitness.terms:
        name = term.name()
        table.add_row(
            name,
            f"{score.raw[name]:.6g}",
            term.unit,
            f"{score.terms[name]:.6g}",
            f"{weight:g}",
            f"{score.weighted[name]:.6g}",
        )
    table.add_row("total", "", "", "", "", f"{score.total:.6g}", style="bold")
    console.print(table)
    tasks = Table(title="lm-eval metrics")
    for col in ("task", "metric", "value", "items"):
        tasks.add_column(col)
    for task, metrics in measured.tasks.items():
        for metric, value in metrics.items():
            tasks.add_row(task, metric, f"{value:.6g}", str(measured.n_items.get(task, "")))
    console.print(tasks)


NO_DEFAULT_TASKS = "--no_default_tasks"


@app.command("lm-eval", context_settings=_PASSTHROUGH, add_help_option=False)
def lm_eval_command(ctx: typer.Context) -> None:
    """lm-eval's own CLI with `--model evomerge` registered; `--no_default_tasks`: index --include_path only."""
    import lm_eval.tasks
    from lm_eval.__main__ import cli_evaluate

    import evomerge.fitness.lm_eval_adapter  # noqa: F401  # registers --model evomerge

    args = list(ctx.args)
    original = lm_eval.tasks.TaskManager
    if NO_DEFAULT_TASKS in args:
        args.remove(NO_DEFAULT_TASKS)
        lm_eval.tasks.TaskManager = _include_path_only(original)  # type: ignore[misc]
    argv, sys.argv = sys.argv, ["lm-eval", *args]
    try:
        cli_evaluate()
    finally:
        sys.argv = argv
        lm_eval.tasks.TaskManager = original  # type: ignore[misc]


def _include_path_only(base: type) -> type:
    """A TaskManager that skips indexing lm-eval's ~14,700 built-in task YAMLs (a minute on 2 cores).

    lm-eval's CLI does ``from lm_eval.tasks import TaskManager`` at call time,
    so swapping the attribute for the duration of the call is enough.
    """

    class IncludePathOnly(base):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["include_defaults"] = False
            super().__init__(*args, **kwargs)

    return IncludePathOnly
