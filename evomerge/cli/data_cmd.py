"""``evomerge data``: fetch and prepare the offline demo data (text domains, splits, eval files)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

app = typer.Typer(
    help="Offline demo data: text domains, splits, tokenizer, evaluation files.",
    no_args_is_help=True,
)


@app.callback()
def _group() -> None:
    """Offline demo data: text domains, splits, tokenizer, evaluation files."""


@app.command("prepare")
def prepare_cmd(
    cache: Path | None = typer.Option(
        None, "--cache", help="Data cache (default $EVOMERGE_CACHE or ~/.cache/evomerge)."
    ),
    force: bool = typer.Option(
        False, "--force", help="Rebuild even if already prepared (verified downloads are reused)."
    ),
    vocab_size: list[int] = typer.Option(
        [8192],
        "--vocab-size",
        help="Also train/cache the tokenizer of this vocab size (repeatable; 0 = none).",
    ),
) -> None:
    """Fetch the pinned sources, cut paragraphs, split by hash, write perplexity and cloze files."""
    from rich.console import Console
    from rich.table import Table

    from evomerge.data import DOMAINS, SPLITS, DataSourceError, get_tokenizer, prepare_data
    from evomerge.data.layout import EVAL_SPLITS

    console = Console()
    started = time.perf_counter()
    try:
        layout = prepare_data(cache, progress=True, force=force)
    except DataSourceError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    elapsed = time.perf_counter() - started

    table = Table(title="evomerge demo data")
    for name, justify in (
        ("domain", "left"),
        ("split", "left"),
        ("paragraphs", "right"),
        ("chars", "right"),
        ("cloze items", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for domain in DOMAINS:
        splits = layout.manifest["domains"][domain]["splits"]
        for split in SPLITS:
            entry = splits[split]
            cloze = str(entry["cloze_items"]) if split in EVAL_SPLITS else "-"
            table.add_row(domain, split, str(entry["paragraphs"]), f"{entry['chars']:,}", cloze)
    console.print(table)
    console.print(f"data: {layout.root}  ({elapsed:.1f} s)")
    for size in (v for v in vocab_size if v > 0):
        started = time.perf_counter()
        try:
            tokenizer = get_tokenizer(size, cache)
        except ValueError as exc:
            console.print(f"[red]error:[/red] --vocab-size: {exc}")
            raise typer.Exit(2) from None
        console.print(
            f"tokenizer: {tokenizer.name_or_path}  (vocab {len(tokenizer)}, {time.perf_counter() - started:.1f} s)"
        )
