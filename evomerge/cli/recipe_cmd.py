"""``evomerge recipe``: validate or run an evolution recipe.

Exit codes: 0 the champion met the recipe's targets, 1 evolution finished
below target (the champion is saved anyway), 2 bad input (nothing written).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(help="Validate and run evolution recipes.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Validate and run evolution recipes."""


def _load(recipe_path: Path, out: Path | None, generations: int | None):  # type: ignore[no-untyped-def]
    """The recipe with the command line's overrides; load_recipe has resolved every name in it."""
    from pydantic import ValidationError

    from evomerge.evolution.recipe import RecipeError, load_recipe

    recipe = load_recipe(recipe_path)
    if out is not None:
        recipe.output = out.resolve()
    if generations is not None:
        try:
            recipe.evolution.generations = generations
        except ValidationError as exc:
            raise RecipeError(f"--generations: {exc.errors()[0]['msg']}") from None
    return recipe


#: A memory size as people write it: 80GB, 80 GiB, 1.5tb, 512MB, or plain bytes.
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(|b|kb|mb|gb|tb|kib|mib|gib|tib)\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """Bytes in ``text``. By hand, not accelerate's ``convert_file_size_to_int``: that one
    reads a lower-case ``80gb`` as gigabits (10 GB), a trap in a memory option."""
    match = _SIZE.fullmatch(text)
    size = int(float(match[1]) * _UNITS[match[2].lower()]) if match else 0
    if size <= 0:
        raise ValueError(f"{text!r} is not a memory size (e.g. 80GB, 80GiB, 512MB)")
    return size


@app.command("validate")
def validate_cmd(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE.yaml"),
    schema_only: bool = typer.Option(
        False,
        "--schema-only",
        help="Only the file itself: no device or input-model checks (a recipe for another machine).",
    ),
    gpu_memory: str | None = typer.Option(
        None,
        "--gpu-memory",
        metavar="SIZE",
        help="Plan the run for a GPU with this much free memory (e.g. 80GB) instead of this "
        "machine's device.",
    ),
    host_memory: str | None = typer.Option(
        None,
        "--host-memory",
        metavar="SIZE",
        help="Plan the run for this much available host memory (e.g. 128GB) instead of this "
        "machine's.",
    ),
    processes: int = typer.Option(
        1,
        "--processes",
        metavar="N",
        help="Plan for `accelerate launch --num_processes N` (each process holds its own "
        "inputs and candidates).",
    ),
) -> None:
    """Check a recipe without running anything: its schema, every merge method (combos
    and stages), method parameter, fitness term, domain and task it names, the device,
    the input models' files, configs, tensor headers and tokenizers (not their weights),
    and whether the models the run holds fit the device (printed as its memory plan)."""
    from rich.console import Console
    from rich.markup import escape

    from evomerge.evolution.recipe import RecipeError
    from evomerge.run.preflight import preflight

    console = Console(stderr=True)
    plan = None
    try:
        sizes = {}
        for option, given in (("--gpu-memory", gpu_memory), ("--host-memory", host_memory)):
            try:
                sizes[option] = None if given is None else parse_size(given)
            except ValueError as exc:
                raise RecipeError(f"{option}: {exc}") from None
            if given is not None and schema_only:
                raise RecipeError(f"{option} plans the run's memory; --schema-only skips that")
        if processes < 1:
            raise RecipeError(f"--processes must be at least 1, got {processes}")
        recipe = _load(recipe_path, None, None)
        if not schema_only:
            plan = preflight(
                recipe,
                gpu_memory=sizes["--gpu-memory"],
                host_memory=sizes["--host-memory"],
                processes=processes,
            )
    except RecipeError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    out = Console()
    out.print(
        escape(
            f"{recipe_path}: ok ({recipe.evolution.generations} generations, "
            f"output {recipe.output})"
        )
    )
    if plan is not None:
        out.print(f"memory: {plan.describe()}", soft_wrap=True, highlight=False)


@app.command("init")
def init_cmd(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE.yaml", help="The recipe to write."),
    models: tuple[str, str, str] = typer.Option(
        ...,
        "--models",
        help="The three fine-tunes: save_pretrained dirs, or repo ids in the local HF cache.",
    ),
    base: str | None = typer.Option(
        None, "--base", help="Their common ancestor (enables task-arithmetic genes)."
    ),
    generations: int = typer.Option(8, "--generations", help="CMA-ES generations."),
    task_dir: Path | None = typer.Option(
        None, "--task-dir", help="A folder of your own lm-eval task YAMLs (with --task)."
    ),
    task: str | None = typer.Option(
        None, "--task", help="Your lm-eval task, scored during the search (a weighted term)."
    ),
    test_task: str | None = typer.Option(
        None, "--test-task", help="Its held-out twin, scored only in the final report."
    ),
    metric: str | None = typer.Option(
        None, "--metric", help="The task's metric, from its metric_list (default: acc)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
) -> None:
    """Write a commented recipe for three fine-tunes: CMA-ES over per-layer-group merge
    weights, the demo tasks (and your own lm-eval task with --task-dir/--task/--test-task),
    the layer groups fitted to the inputs; their files are checked (headers only) first,
    and the run's memory plan is printed."""
    import os

    from rich.console import Console
    from rich.markup import escape

    from evomerge.evolution.recipe import RecipeError, load_recipe
    from evomerge.evolution.recipe_init import (
        InitModels,
        InitTask,
        recipe_name,
        render,
        task_problem,
        written_path,
    )
    from evomerge.evolution.validate import InputValidationError, validate_inputs
    from evomerge.hub_cache import model_dir
    from evomerge.run.preflight import check_output, preflight
    from evomerge.search.genome import decoder_layers

    err = Console(stderr=True)

    def fail(message: str) -> typer.Exit:
        err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)
        return typer.Exit(2)

    if generations < 1:
        raise fail(f"--generations must be at least 1, got {generations}")
    if recipe_path.is_dir() or (recipe_path.exists() and not overwrite):
        what = "is a directory" if recipe_path.is_dir() else "exists; use --overwrite to replace it"
        raise fail(f"{recipe_path}: {what}")
    if not recipe_path.parent.is_dir():
        raise fail(f"{recipe_path}: no such directory {recipe_path.parent}")
    own_task = (task_dir, task, test_task)
    if any(v is not None for v in own_task) and not all(v is not None for v in own_task):
        raise fail("--task-dir, --task and --test-task go together: give all three or none")
    if metric is not None and task is None:
        raise fail("--metric names the metric of --task: give --task-dir, --task and --test-task")
    own = None
    if task_dir is not None and task is not None and test_task is not None:
        if problem := task_problem(task_dir, task, test_task, metric or "acc"):
            raise fail(problem)
        where = written_path(str(task_dir), task_dir, recipe_path.parent)
        own = InitTask(where, task, test_task, metric or "acc", run_from=str(Path.cwd()))
    output = recipe_path.parent.resolve() / "runs" / recipe_name(recipe_path)
    try:
        check_output(output)  # the recipe's output: a dir or nothing yet
    except RecipeError as exc:
        raise fail(f"output: {exc}") from None
    named = [("--models", m) for m in models] + ([("--base", base)] if base else [])
    located: list[Path] = []
    for flag, name in named:
        try:
            located.append(model_dir(name))
        except ValueError as exc:
            raise fail(f"{flag}: {exc}") from None
    try:
        found = validate_inputs(
            located[:3],
            architecture=None,
            expected_params=None,
            base_model=located[3] if base else None,
            scan=False,
        )
    except InputValidationError as exc:
        message = str(exc)
        flag = "--base" if base and message.startswith(str(located[3])) else "--models"
        raise fail(f"{flag}: {message}") from None
    folder = recipe_path.parent
    written = [
        written_path(name, where, folder) for (_, name), where in zip(named, located, strict=True)
    ]
    init = InitModels(
        written[:3],
        written[3] if base else None,
        found.architecture,
        decoder_layers(found.tensor_names) or None,  # as the run groups them: by tensor names
        found.param_count,
    )
    # written beside the recipe (so its relative paths resolve the same), loaded and checked,
    # then moved into place: a failure leaves the old file, and no temporary one
    staged = recipe_path.with_name(f".tmp-{recipe_path.name}")
    try:
        staged.write_text(render(init, recipe_path, generations, own), encoding="utf-8")
        recipe = load_recipe(staged)
        read = [*(recipe.inputs.models or []), recipe.inputs.base_model]
        if [Path(p).resolve() for p in read if p is not None] != [p.resolve() for p in located]:
            raise RecipeError(f"its models resolve to {read}, not {located}")
        dirs = [Path(p).resolve() for p in recipe.fitness.task_dirs]
        if own is not None and task_dir is not None and dirs != [task_dir.resolve()]:
            raise RecipeError(f"its fitness.task_dirs resolve to {dirs}, not {task_dir}")
        os.replace(staged, recipe_path)
    except RecipeError as exc:  # a bug here, not bad input
        raise fail(f"internal: the recipe written does not read back: {exc}") from None
    finally:
        staged.unlink(missing_ok=True)
    out = Console(highlight=False)
    groups = recipe.evolution.layer_groups
    out.print(
        f"wrote {escape(str(recipe_path))} (three {found.architecture} fine-tunes of "
        f"{found.param_count / 1e6:,.1f}M parameters, {groups} layer groups, "
        f"{generations} generations)",
        soft_wrap=True,
    )
    try:
        plan = preflight(recipe)
    except RecipeError as exc:  # the device or its memory: the file is right for another machine
        err.print(f"note: on this machine: {escape(str(exc))}", soft_wrap=True, highlight=False)
        return
    if plan is not None:
        out.print(f"memory: {plan.describe()}", soft_wrap=True)


def _after_a_stop(recipe: Any) -> str:
    """What a stopped run can do next: resume where a generation was checkpointed, else
    start over (--resume finds no checkpoint before generation 0 is done)."""
    from evomerge.evolution.checkpoint import Checkpoint

    if recipe is not None and Checkpoint(Path(recipe.output)).exists():
        return "`evomerge recipe run ... --resume` continues from the last finished generation"
    return (
        "no generation had finished, so there is nothing to resume: run it again with --overwrite"
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler's stop, ``kill``): stopped like Ctrl-C, resumable."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While the run lasts, SIGTERM stops it as Ctrl-C does (the last finished generation's
    checkpoint stays, the hint says how to resume) instead of killing it without a word."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers
        return

    def terminated(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:  # None: a handler set from C, which Python cannot put back
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@app.command("run")
def run_cmd(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE.yaml"),
    out: Path | None = typer.Option(
        None, "--out", help="Output dir (overrides the recipe's `output`)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the output dir's checkpoint."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Start over in a non-empty output dir."
    ),
    generations: int | None = typer.Option(
        None, "--generations", help="Override evolution.generations."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Run generation 0 and the evolution loop; write champion/, result.json and plots."""
    from rich.console import Console

    from evomerge.evolution.checkpoint import CheckpointError
    from evomerge.evolution.recipe import RecipeError
    from evomerge.evolution.validate import InputValidationError
    from evomerge.run import (
        EXIT_BAD_INPUT,
        EXIT_CRASH,
        EXIT_INTERRUPTED,
        EXIT_TERMINATED,
        Run,
    )

    console = Console()
    err = Console(stderr=True)
    if resume and overwrite:
        err.print("[red]error:[/red] --resume and --overwrite: give one (continue, or start over)")
        raise typer.Exit(EXIT_BAD_INPUT)
    recipe = None
    try:
        with _sigterm_interrupts():
            recipe = _load(recipe_path, out, generations)
            outcome = Run(
                recipe, resume=resume, overwrite=overwrite, progress=not quiet, log=console.print
            ).execute()
    except (RecipeError, InputValidationError, CheckpointError) as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt as exc:
        stopped = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        err.print(f"{stopped}: {_after_a_stop(recipe)}", soft_wrap=True)
        code = EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
        raise typer.Exit(code) from None
    except Exception:
        import traceback

        traceback.print_exc()
        err.print(
            f"[red]error:[/red] the run stopped on an unexpected error (above; exit "
            f"{EXIT_CRASH}, a bug to report): {_after_a_stop(recipe)}",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_CRASH) from None
    result = outcome.result
    if not result:  # a non-main process of `accelerate launch`: the main one reports
        raise typer.Exit(outcome.exit_code)
    verdict = "[green]PASS[/green]" if result["passed"] else "[yellow]BELOW TARGET[/yellow]"
    console.print(
        f"{verdict}: improvement {result['improvement']:+.1%} (fitness split), "
        f"{result['test_improvement']:+.1%} (held-out test split), target {result['min_improvement']:+.0%}; "
        f"champion in {result['model']}"
    )
    raise typer.Exit(outcome.exit_code)
