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
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out dir."),
    inputs: str = typer.Option(
        "disk",
        "--inputs",
        help="disk: read the inputs from their files per tensor; device: load them whole.",
    ),
) -> None:
    """Replay the champion's lineage from the three inputs and compare with the saved champion.

    Exit codes: 0 rebuilt (bit-identical, or no saved champion to compare with), 1 rebuilt
    but different from the saved one, 2 bad input (nothing written).
    """
    import json

    from rich.console import Console

    from evomerge.device import device_problem
    from evomerge.evolution.rebuild import (
        LineageError,
        read_result,
        rebuild_champion,
        save_rebuilt,
    )
    from evomerge.output_dir import replace_refusal, staged_dir
    from evomerge.run.model_card import write_model_card

    console = Console()
    err = Console(stderr=True)

    def fail(message: str) -> typer.Exit:
        err.print(f"[red]error:[/red] {message}", soft_wrap=True, markup=True, highlight=False)
        return typer.Exit(2)

    if inputs not in ("disk", "device"):
        raise fail(f"--inputs: {inputs!r} is not one of disk, device")
    problem = device_problem(device) if device != "auto" else "'auto': give cpu or cuda:N"
    if problem is not None:
        raise fail(f"--device: {problem}")
    if out is not None and out.exists() and not out.is_dir():
        raise fail(f"--out: {out} exists and is not a directory")
    if out is not None and out.is_dir() and any(out.iterdir()) and not overwrite:
        raise fail(f"--out: {out} is not empty; use --overwrite to replace it")
    try:
        if out is not None and out.is_dir() and any(out.iterdir()):  # --overwrite: is it safe?
            result, _ = read_result(result_json)
            inputs_of = result["inputs"]
            keep = [*inputs_of["models"], inputs_of.get("base_model"), result_json]
            refusal = replace_refusal(out, [*keep, result.get("model")])
            if refusal is not None:
                raise fail(f"--out: {refusal}; not replaced")
        model, comparison = rebuild_champion(result_json, device=device, inputs=inputs)  # type: ignore[arg-type]
    except LineageError as exc:
        raise fail(str(exc)) from None
    if out is not None:
        models = json.loads(result_json.read_text())["inputs"]["models"]
        with staged_dir(out) as staging:  # replaces --out only once the model is saved
            save_rebuilt(model, staging, Path(models[0]))
            if comparison.get("bit_identical"):
                state = "bit-identical to the champion the run saved"
            elif comparison.get("saved") is None:
                state = "the run's saved champion was gone, so not compared with it"
            else:  # the figures below are the saved champion's, not this model's
                state = (
                    f"differs from the champion the run saved by up to "
                    f"{comparison['max_abs_diff']:.3g}: the figures below are that one's"
                )
            write_model_card(
                staging,
                json.loads(result_json.read_text()),
                result_ref=f"Rebuilt on {device} from `{result_json.resolve()}` ({state}), which",
            )
        console.print(f"saved rebuilt champion to {out}")
    rebuilt = f"rebuilt {comparison['nodes']} lineage nodes"
    if comparison.get("saved") is None:
        console.print(
            f"{rebuilt}; the saved champion is gone (result.json `model`), so nothing was compared"
        )
    elif comparison["bit_identical"]:
        console.print(f"{rebuilt}: bit-identical to the run's champion, {comparison['saved']}")
    else:
        console.print(
            f"{rebuilt}: differs from the run's champion, {comparison['saved']}, by up to "
            f"{comparison['max_abs_diff']:.3g} (max |difference| of any weight)"
        )
    if comparison.get("bit_identical") is False:
        raise typer.Exit(1)
