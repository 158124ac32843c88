"""``evomerge combos``: print, export and run the 3-stage merge combos ("000".."111")."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

app = typer.Typer(
    help="The eight 3-bit merge combos as multi-stage merge configs.", no_args_is_help=True
)

MODELS = typer.Option(..., "--models", help="The three input models (directories).")
BASE = typer.Option(None, "--base", help="Common ancestor, for --reference ancestor.")
REFERENCE = typer.Option(
    "stage1", "--reference", help="Task vectors against 'stage1' or 'ancestor'."
)
SEED = typer.Option(0, "--seed", help="Seed of the DARE masks.")
SETS = typer.Option(
    None, "--set", help="Method parameter, e.g. --set slerp.mode=multislerp --set ties.density=0.3"
)
CALIBRATION = typer.Option(
    None,
    "--calibration",
    help="Text file (from the fitness split) scoring frankenmerge's layer choice.",
)


@app.callback()
def _group() -> None:
    """The eight 3-bit merge combos as multi-stage merge configs."""


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _params(reference: str, sets: list[str] | None) -> Any:
    import yaml

    from evomerge.merge import StageParams

    methods: dict[str, dict[str, Any]] = {}
    for item in sets or []:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not method or not name:
            raise _fail(f"--set {item!r}: expected METHOD.PARAM=VALUE")
        methods.setdefault(method, {})[name] = yaml.safe_load(value)
    if reference not in ("stage1", "ancestor"):
        raise _fail(f"--reference {reference!r}: expected 'stage1' or 'ancestor'")
    return StageParams(reference=reference, methods=methods)  # type: ignore[arg-type]


@app.command("show")
def show(
    label: Optional[str] = typer.Argument(
        None, help="Combo label like 010; all eight when omitted."
    ),
    models: tuple[str, str, str] = MODELS,
    base: Optional[str] = BASE,
    reference: str = REFERENCE,
    seed: int = SEED,
    sets: Optional[list[str]] = SETS,
) -> None:
    """Print the generated multi-document merge YAML of a combo (frankenmerge not yet resolved)."""
    from evomerge.merge import COMBO_LABELS, MergeConfigError, UnknownMergeMethodError, combo_config

    params = _params(reference, sets)
    try:
        for i, one in enumerate([label] if label else list(COMBO_LABELS)):
            if i:
                typer.echo("\n# " + "=" * 70)
            typer.echo(combo_config(one, list(models), base, params, seed=seed).to_yaml(), nl=False)
    except (MergeConfigError, UnknownMergeMethodError) as exc:
        raise _fail(str(exc)) from None


def _execute(
    config: Any,
    names: list[str],
    base: str | None,
    out: Path,
    calibration: str | None,
    label: str | None,
) -> None:
    from evomerge.merge import MergeEngine
    from evomerge.merge.io import load_inputs, save_merged, text_calibration

    inputs, model = load_inputs(names, base)
    calib = text_calibration(names[0], calibration) if calibration else None
    engine = MergeEngine(calibration=calib)
    result = engine.run_config(
        config, inputs, out=model.state_dict(), scratch_model=model, label=label
    )
    save_merged(model, str(out), tokenizer_from=names[0], config_yaml=result.config_yaml)
    for log in result.stage_logs:
        note = f"  FALLBACK to linear: {log.fallback}" if log.fallback else ""
        typer.echo(f"stage {log.stage} {log.method:<13} {log.seconds:7.3f} s{note}")
    typer.echo(f"wrote {out} (config: {out / 'merge_config.yaml'})")


@app.command("export")
def export(
    label: str = typer.Argument(..., help="Combo label like 010."),
    models: tuple[str, str, str] = MODELS,
    out: Path = typer.Option(..., "--out", help="Output directory (save_pretrained)."),
    base: Optional[str] = BASE,
    reference: str = REFERENCE,
    seed: int = SEED,
    sets: Optional[list[str]] = SETS,
    calibration: Optional[str] = CALIBRATION,
) -> None:
    """Run one combo in memory and save the merged model, its tokenizer and its resolved config."""
    from evomerge.merge import MergeConfigError, UnknownMergeMethodError, combo_config

    params = _params(reference, sets)
    try:
        config = combo_config(label, list(models), base, params, seed=seed)
        if _needs_calibration(config) and not calibration:
            raise MergeConfigError(
                f"combo {label} uses frankenmerge, which needs --calibration FILE (fitness-split text)"
            )
        _execute(config, list(models), base, out, calibration, label)
    except (MergeConfigError, UnknownMergeMethodError) as exc:
        raise _fail(str(exc)) from None


@app.command("run")
def run(
    config_file: Path = typer.Argument(
        ..., help="Multi-document merge YAML (a recipe or combo config)."
    ),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    calibration: Optional[str] = CALIBRATION,
    engine: str = typer.Option(
        "evomerge", "--engine", help="'evomerge' (in memory) or 'mergekit' (disk to disk)."
    ),
) -> None:
    """Run any multi-stage merge YAML whose models are directories and earlier stage names."""
    from evomerge.merge import ComboConfig, MergeConfigError, UnknownMergeMethodError

    if not config_file.is_file():
        raise _fail(f"config file {str(config_file)!r} does not exist")
    text = config_file.read_text(encoding="utf-8")
    try:
        config = ComboConfig.from_yaml(text, source=str(config_file))
        if engine == "mergekit":
            from evomerge.merge.mergekit_bridge import run_with_mergekit

            run_with_mergekit(text, out, intermediate_dir=out.with_name(out.name + ".stages"))
            typer.echo(f"wrote {out} (mergekit)")
            return
        if engine != "evomerge":
            raise MergeConfigError(f"--engine {engine!r}: expected 'evomerge' or 'mergekit'")
        stage_names = {s.name for s in config.stages}
        names = [n for s in config.stages for n in s.input_names() if n not in stage_names]
        names = list(dict.fromkeys(names))
        anchors_base = {s.base_model for s in config.stages if s.anchor()}
        base = next(iter(anchors_base), None)
        inputs = [n for n in names if n != base]
        if _needs_calibration(config) and not calibration:
            raise MergeConfigError(f"{config_file}: frankenmerge needs --calibration FILE")
        _execute(config, inputs, base, out, calibration, None)
    except (MergeConfigError, UnknownMergeMethodError) as exc:
        raise _fail(str(exc)) from None


def _needs_calibration(config: Any) -> bool:
    from evomerge.merge import get_registry
    from evomerge.merge.base import ModelMergeMethod

    registry = get_registry()
    return any(
        isinstance(registry.resolve(s.merge_method).method, ModelMergeMethod) and s.slices is None
        for s in config.stages
    )
