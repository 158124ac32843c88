"""``evomerge recipe``: validate or run an evolution recipe.

Exit codes: 0 the champion met the recipe's targets, 1 evolution finished
below target (the champion is saved anyway), 2 bad input (nothing written).
"""

from __future__ import annotations

from pathlib import Path

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


@app.command("validate")
def validate_cmd(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE.yaml"),
    schema_only: bool = typer.Option(
        False,
        "--schema-only",
        help="Only the file itself: no device or input-model checks (a recipe for another machine).",
    ),
) -> None:
    """Check a recipe without running anything: its schema, every merge method (combos
    and stages), method parameter, fitness term, domain and task it names, the device,
    and the input models' files, configs, tensor headers and tokenizers (not their weights)."""
    from rich.console import Console

    from evomerge.evolution.recipe import RecipeError
    from evomerge.run.preflight import preflight

    console = Console(stderr=True)
    try:
        recipe = _load(recipe_path, None, None)
        if not schema_only:
            preflight(recipe)
    except RecipeError as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    Console().print(
        f"{recipe_path}: ok ({recipe.evolution.generations} generations, output {recipe.output})"
    )


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
    from evomerge.evolution.run import EXIT_BAD_INPUT, Run
    from evomerge.evolution.validate import InputValidationError

    console = Console()
    err = Console(stderr=True)
    if resume and overwrite:
        err.print("[red]error:[/red] --resume and --overwrite: give one (continue, or start over)")
        raise typer.Exit(EXIT_BAD_INPUT)
    try:
        recipe = _load(recipe_path, out, generations)
        outcome = Run(
            recipe, resume=resume, overwrite=overwrite, progress=not quiet, log=console.print
        ).execute()
    except (RecipeError, InputValidationError, CheckpointError) as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
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
