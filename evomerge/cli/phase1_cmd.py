"""``evomerge phase1``: make the demo Phase-1 family (three related TRM x Titans-MAG models)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="The demo Phase-1 model family.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """The demo Phase-1 model family."""


@app.command("make")
def make_cmd(
    out: Path = typer.Option(
        ..., "--out", help="Output directory for base/, model_1..3/ and phase1.json."
    ),
    preset: str = typer.Option("tiny", "--preset", help="tiny (CPU, minutes) or phase1-25m (GPU)."),
    seed: int = typer.Option(0, "--seed", help="Seed for init, data order and fine-tuning."),
    cache: Path | None = typer.Option(
        None, "--cache", help="Data cache (default $EVOMERGE_CACHE or ~/.cache/evomerge)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Train a shared base on all three domains, then one specialist per domain from it."""
    from rich.console import Console
    from rich.table import Table

    from evomerge.phase1 import FamilySpec, make_family

    console = Console()
    try:
        spec = FamilySpec.for_preset(preset, seed=seed)
    except ValueError as exc:
        console.print(f"[red]error:[/red] --preset: {exc}")
        raise typer.Exit(2) from None
    result = make_family(out, spec, cache_dir=cache, progress=not quiet, log=console.print)
    table = Table(title=f"Phase-1 family ({preset}) — test split")
    table.add_column("model")
    domains = result["domains"]
    for domain in domains:
        table.add_column(f"{domain} ppl", justify="right")
        table.add_column(f"{domain} acc", justify="right")
    rows = {"base": result["base_metrics"], **result["metrics"]}
    for name, m in rows.items():
        cells = []
        for domain in domains:
            cells += [
                f"{m['per_domain'][domain]['perplexity']:.2f}",
                f"{m['per_domain'][domain]['accuracy']:.3f}",
            ]
        table.add_row(name, *cells)
    console.print(table)
    console.print(f"wrote {Path(out) / 'phase1.json'}")
