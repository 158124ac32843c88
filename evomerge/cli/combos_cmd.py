"""``evomerge combos``: print, export and run the 3-stage merge combos ("000".."111").

``show`` and ``export`` use the default combo table, or with ``--recipe`` the
recipe's own ``combos:`` and ``stages:``, so a user sees exactly what
``recipe run`` would merge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

app = typer.Typer(
    help="The eight 3-bit merge combos as multi-stage merge configs.", no_args_is_help=True
)

MODELS = typer.Option(
    None,
    "--models",
    help="The three input models (dirs, or repo ids in the local HF cache); default: the recipe's.",
)
BASE = typer.Option(None, "--base", help="Common ancestor, for --reference ancestor.")
RECIPE = typer.Option(
    None,
    "--recipe",
    help="Recipe whose combos table and stage parameters to use (--set overrides them).",
)
REFERENCE = typer.Option(
    "stage1", "--reference", help="Task vectors against 'stage1' or 'ancestor'."
)
SEED = typer.Option(0, "--seed", help="Seed of the DARE masks.")
SETS = typer.Option(
    None, "--set", help="Method parameter, e.g. --set slerp.mode=multislerp --set ties.density=0.3"
)
OVERWRITE = typer.Option(False, "--overwrite", help="Replace a non-empty --out dir.")
CALIBRATION = typer.Option(
    None,
    "--calibration",
    help="Text file (from the fitness split) scoring a whole-model method's layer choice.",
)


@app.callback()
def _group() -> None:
    """The eight 3-bit merge combos as multi-stage merge configs."""


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _check_label(label: str | None) -> None:
    """An empty label is a mistake, not "all eight" (omitting the label means that)."""
    if label is not None and not label.strip():
        raise _fail("combo label '': expected a 3-bit label like 010 (omit it for all eight)")


def _locate(names: list[str], base: str | None) -> tuple[list[str], str | None]:
    """Each model named as a dir: itself, or a Hugging Face repo id's cached snapshot
    (evomerge/hub_cache.py); one that is neither is a one-line error (a typo would
    otherwise surface mid-merge)."""
    from evomerge.hub_cache import model_dir

    found: list[str] = []
    for flag, name in [*(("--models", n) for n in names), *([("--base", base)] if base else [])]:
        try:
            found.append(str(model_dir(name)))
        except ValueError as exc:
            raise _fail(f"{flag}: {exc}") from None
    return found[: len(names)], (found[-1] if base else None)


def _check_config_dirs(config: Any, source: Path) -> None:
    """Every model a merge config names is a local dir, for either engine: mergekit would
    look a missing one up on the Hub (a download), and evomerge reads dirs only."""
    from evomerge.hub_cache import cached_snapshot, looks_like_repo_id, not_cached_hint

    for name in _config_paths(config):
        if Path(name).is_dir():
            continue
        snapshot = cached_snapshot(name) if looks_like_repo_id(name) else None
        where = (
            f" (the local Hugging Face cache has {name} at {snapshot}: name that dir in the config)"
            if snapshot is not None
            else ("" if Path(name).exists() else not_cached_hint(name))
        )
        raise _fail(
            f"{source}: model {name}: not a directory (a merge config names model dirs){where}"
        )


def _check_out(out: Path, overwrite: bool, keep: list[Any]) -> None:
    """A new or empty --out dir, or with --overwrite a non-empty one that holds nothing the
    command reads (``keep``): as `recipe run` asks, no silent mixing, no lost inputs."""
    from evomerge.output_dir import replace_refusal

    if out.exists() and not out.is_dir():
        raise _fail(f"--out: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise _fail(f"--out: {out} is not empty; use --overwrite to replace it")
        refusal = replace_refusal(out, keep)
        if refusal is not None:
            raise _fail(f"--out: {refusal}; not replaced")


def _check_sets(sets: list[str] | None, params: Any, label: str | None) -> None:
    """Each --set names a method of the combo table (else a typo would be silently ignored).

    One the table has but this combo does not run is only noted: a loop over the eight
    labels can pass the same --set to each.
    """
    table = [m for pair in params.table for m in pair]
    used = list(params.combo_methods(label)) if label is not None else table
    for item in sets or []:
        method = item.partition("=")[0].partition(".")[0]
        if method not in table:
            raise _fail(f"--set {item!r}: the combo table has {', '.join(table)}, not {method!r}")
        if method not in used:
            typer.echo(f"note: --set {item!r}: combo {label} does not run {method!r}", err=True)


def _load_recipe(path: Path | None) -> Any:
    """The recipe (every name in it resolved), or None without --recipe."""
    if path is None:
        return None
    from evomerge.evolution.recipe import RecipeError, load_recipe

    try:
        return load_recipe(path)
    except RecipeError as exc:
        raise _fail(str(exc)) from None


def _models(
    models: tuple[str, str, str] | None, base: str | None, recipe: Any
) -> tuple[list[str], str | None]:
    """--models/--base as given (dirs, or repo ids in the Hugging Face cache), else the
    recipe's inputs (explicit model dirs only, already located)."""
    if models is not None:
        return list(models), base
    if recipe is not None and recipe.inputs.models is not None:
        if base is None and recipe.inputs.base_model is not None:
            base = str(recipe.inputs.base_model)
        return [str(m) for m in recipe.inputs.models], base
    raise _fail("give --models M1 M2 M3 (or --recipe with `inputs.models`)")


def _params(reference: str, sets: list[str] | None, recipe: Any = None) -> Any:
    import yaml

    from evomerge.merge import StageParams

    methods: dict[str, dict[str, Any]] = {}
    table: dict[str, Any] = {}
    if recipe is not None:
        methods = {name: dict(values) for name, values in recipe.stages.items()}
        table = {"table": recipe.combo_table()}
    for item in sets or []:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not method or not name:
            raise _fail(f"--set {item!r}: expected METHOD.PARAM=VALUE")
        methods.setdefault(method, {})[name] = yaml.safe_load(value)
    if reference not in ("stage1", "ancestor"):
        raise _fail(f"--reference {reference!r}: expected 'stage1' or 'ancestor'")
    return StageParams(reference=reference, methods=methods, **table)


@app.command("show")
def show(
    label: Optional[str] = typer.Argument(
        None, help="Combo label like 010; all eight when omitted."
    ),
    models: Optional[tuple[str, str, str]] = MODELS,
    base: Optional[str] = BASE,
    reference: str = REFERENCE,
    seed: int = SEED,
    sets: Optional[list[str]] = SETS,
    recipe_path: Optional[Path] = RECIPE,
) -> None:
    """Print the generated multi-document merge YAML of a combo (whole-model stages not yet resolved)."""
    from evomerge.merge import COMBO_LABELS, MergeConfigError, UnknownMergeMethodError, combo_config

    _check_label(label)
    recipe = _load_recipe(recipe_path)
    names, base = _models(models, base, recipe)  # as given: the config moves to other machines
    params = _params(reference, sets, recipe)
    try:
        configs = [
            combo_config(one, names, base, params, seed=seed)
            for one in ([label] if label is not None else list(COMBO_LABELS))
        ]
    except (MergeConfigError, UnknownMergeMethodError) as exc:
        raise _fail(str(exc)) from None
    _check_sets(sets, params, label)
    for i, config in enumerate(configs):
        if i:
            typer.echo("\n# " + "=" * 70)
        typer.echo(config.to_yaml(), nl=False)


def _execute(
    config: Any,
    names: list[str],
    base: str | None,
    out: Path,
    calibration: str | None,
    label: str | None,
    given: list[str] | None = None,
) -> None:
    """Merge in memory and save to ``out``; ``given``: the models and base as the user named
    them (repo ids, for the card), when not the dirs in ``names`` and ``base``."""
    from evomerge.evolution.model_dir import InputValidationError
    from evomerge.evolution.residency import file_input_set
    from evomerge.merge import MergeConfigError, MergeEngine
    from evomerge.merge.io import load_model, save_merged, text_calibration

    model = load_model(names[0])  # merged into; the inputs are read from their files
    try:
        inputs = file_input_set(names, base, model)
    except InputValidationError as exc:
        raise MergeConfigError(str(exc)) from None
    calib = text_calibration(names[0], calibration) if calibration else None
    engine = MergeEngine(calibration=calib)
    result = engine.run_config(
        config, inputs, out=model.state_dict(), scratch_model=model, label=label
    )
    from evomerge.output_dir import staged_dir
    from evomerge.run.model_card import merge_card

    with staged_dir(out) as staging:  # replaces --out only once the whole model is saved
        save_merged(model, str(staging), tokenizer_from=names[0], config_yaml=result.config_yaml)
        located = [*names, *([base] if base else [])]
        card = merge_card(staging, out.name, given or located, located, result.config_yaml, label)
        (staging / "README.md").write_text(card, encoding="utf-8")
    for log in result.stage_logs:
        note = f"  FALLBACK to linear: {log.fallback}" if log.fallback else ""
        typer.echo(f"stage {log.stage} {log.method:<13} {log.seconds:7.3f} s{note}")
    typer.echo(f"wrote {out} (config: {out / 'merge_config.yaml'})")


@app.command("export")
def export(
    label: str = typer.Argument(..., help="Combo label like 010."),
    models: Optional[tuple[str, str, str]] = MODELS,
    out: Path = typer.Option(..., "--out", help="Output directory (save_pretrained)."),
    base: Optional[str] = BASE,
    reference: str = REFERENCE,
    seed: int = SEED,
    sets: Optional[list[str]] = SETS,
    calibration: Optional[str] = CALIBRATION,
    recipe_path: Optional[Path] = RECIPE,
    overwrite: bool = OVERWRITE,
) -> None:
    """Run one combo in memory and save the merged model, its tokenizer and its resolved config."""
    from evomerge.merge import MergeConfigError, UnknownMergeMethodError, combo_config

    _check_label(label)
    recipe = _load_recipe(recipe_path)
    names, base = _models(models, base, recipe)
    given = [*names, *([base] if base else [])]  # as the user named them, for the card
    names, base = _locate(names, base)
    params = _params(reference, sets, recipe)
    try:
        config = combo_config(label, names, base, params, seed=seed)
        _check_sets(sets, params, label)
        _check_out(out, overwrite, [*names, base, calibration, recipe_path])
        needs = _needs_calibration(config)
        if needs and not calibration:
            raise MergeConfigError(
                f"combo {label} uses {needs}, a whole-model method that needs "
                "--calibration FILE (fitness-split text)"
            )
        _execute(config, names, base, out, calibration, label, given)
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
    overwrite: bool = OVERWRITE,
) -> None:
    """Run any multi-stage merge YAML whose models are directories and earlier stage names."""
    from evomerge.merge import ComboConfig, MergeConfigError, UnknownMergeMethodError

    if not config_file.is_file():
        raise _fail(f"config file {str(config_file)!r} does not exist")
    try:
        text = config_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(f"{config_file}: not UTF-8 text (byte {exc.start})") from None
    try:
        config = ComboConfig.from_yaml(text, source=str(config_file))
        if engine not in ("evomerge", "mergekit"):
            raise MergeConfigError(f"--engine {engine!r}: expected 'evomerge' or 'mergekit'")
        _check_config_dirs(config, config_file)
        _check_out(out, overwrite, [config_file, calibration, *_config_paths(config)])
        if engine == "mergekit":
            from evomerge.fitness.offline import ensure_offline
            from evomerge.merge.mergekit_bridge import run_with_mergekit
            from evomerge.output_dir import staged_dir
            from evomerge.run.model_card import merge_card

            ensure_offline()  # mergekit looks up any name it cannot open on the Hub
            stages = out.resolve().with_name(out.resolve().name + ".stages")
            with staged_dir(out) as staging:  # replaces --out only once mergekit is done
                run_with_mergekit(text, staging, intermediate_dir=stages)
                paths = _config_paths(config)
                card = merge_card(staging, out.name, paths, paths, text, None, engine="mergekit")
                (staging / "README.md").write_text(card, encoding="utf-8")
            typer.echo(f"wrote {out} (mergekit)")
            return
        stage_names = {s.name for s in config.stages}
        names = [n for s in config.stages for n in s.input_names() if n not in stage_names]
        names = list(dict.fromkeys(names))
        anchors_base = {s.base_model for s in config.stages if s.anchor()}
        base = next(iter(anchors_base), None)
        inputs = [n for n in names if n != base]
        needs = _needs_calibration(config)
        if needs and not calibration:
            raise MergeConfigError(f"{config_file}: {needs} needs --calibration FILE")
        _execute(config, inputs, base, out, calibration, None)
    except (MergeConfigError, UnknownMergeMethodError) as exc:
        raise _fail(str(exc)) from None


def _config_paths(config: Any) -> list[str]:
    """The model paths a merge config reads (its inputs and base; stage names excluded)."""
    stage_names = {s.name for s in config.stages}
    named = [n for s in config.stages for n in s.input_names()]
    named += [s.base_model for s in config.stages if s.base_model]
    return [n for n in dict.fromkeys(named) if n not in stage_names]


def _needs_calibration(config: Any) -> str | None:
    """The first whole-model method left to choose its layers (it scores them), or None."""
    from evomerge.merge import get_registry
    from evomerge.merge.base import ModelMergeMethod

    registry = get_registry()
    for stage in config.stages:
        method = registry.resolve(stage.merge_method).method
        if isinstance(method, ModelMergeMethod) and stage.slices is None:
            return method.name()
    return None
