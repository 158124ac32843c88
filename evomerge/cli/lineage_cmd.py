"""``evomerge lineage``: rebuild a run's champion from its recorded lineage."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Champion lineage tools.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Champion lineage tools."""


@app.command("rebuild")
def rebuild_cmd(
    result_json: Path = typer.Argument(..., metavar="OUT/result.json"),
    out: Path | None = typer.Option(None, "--out", help="Also save the rebuilt model here."),
    device: str = typer.Option(
        "cpu", "--device", help="Device to rebuild on (the run's, for bit-identity)."
    ),
    inputs: str = typer.Option(
        "disk",
        "--inputs",
        help="disk: read the inputs from their files per tensor; device: load them whole.",
    ),
) -> None:
    """Replay the champion's lineage from the three inputs and compare with the saved champion."""
    import json

    from rich.console import Console

    from evomerge.evolution.rebuild import rebuild_champion, save_rebuilt

    console = Console()
    if inputs not in ("disk", "device"):
        console.print(f"--inputs: {inputs!r} is not one of disk, device")
        raise typer.Exit(2)
    model, comparison = rebuild_champion(result_json, device=device, inputs=inputs)  # type: ignore[arg-type]
    if out is not None:
        inputs = json.loads(result_json.read_text())["inputs"]["models"]
        save_rebuilt(model, out, Path(inputs[0]))
        console.print(f"saved rebuilt champion to {out}")
    console.print(comparison)
    if comparison.get("bit_identical") is False:
        raise typer.Exit(1)
