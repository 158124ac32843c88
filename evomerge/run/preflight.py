"""What `recipe validate` and the start of `recipe run` both check, so "ok" means the run starts.

Every problem is a RecipeError naming the recipe file, line and field, then what is
wrong (for an input, the model dir and the check that failed, as docs/recipes.md shows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evomerge.evolution.recipe import Recipe, RecipeError
from evomerge.evolution.validate import InputValidationError, ValidatedInputs, validate_inputs


def input_location(recipe: Recipe, message: str) -> tuple[Any, ...]:
    """The recipe field an input problem belongs to: the input its message names first."""
    inputs = recipe.inputs
    if inputs.models is None:
        return ("inputs", "phase1")
    named: list[tuple[tuple[Any, ...], Path]] = [
        (("inputs", "models", i), Path(p)) for i, p in enumerate(inputs.models)
    ]
    if inputs.base_model is not None:
        named.append((("inputs", "base_model"), Path(inputs.base_model)))
    for loc, path in sorted(named, key=lambda item: -len(str(item[1]))):  # longest prefix first
        text = str(path)
        if message == text or message.startswith((text + ":", text + "/")):
            return loc
    return ("inputs", "models")


def checked_inputs(
    recipe: Recipe, paths: list[Path], base: Path | None, *, scan: bool = True
) -> ValidatedInputs:
    """``validate_inputs`` on the recipe's inputs, its errors as ``FILE:LINE: field: ...``."""
    try:
        return validate_inputs(
            paths,
            architecture=recipe.inputs.architecture,
            expected_params=recipe.inputs.expected_params,
            params_tolerance=recipe.inputs.params_tolerance,
            base_model=base,
            scan=scan,
        )
    except InputValidationError as exc:
        message = str(exc)
        loc = input_location(recipe, message)
        if recipe.inputs.architecture and ": model_type: is " in message:
            loc = ("inputs", "architecture")  # the inputs are consistent; the recipe's name is not
        elif ": param_count: " in message:
            loc = ("inputs", "expected_params")
        raise RecipeError(f"{recipe.where(loc)}: {message}") from None


def check_device(recipe: Recipe) -> None:
    """``device.device`` names a device this machine has (torch would fail mid-run otherwise)."""
    from evomerge.device import device_problem

    problem = device_problem(recipe.device.device)
    if problem is not None:
        raise RecipeError(f"{recipe.where(('device', 'device'))}: {problem}; use cpu or auto")


def check_output(out: Path, where: str = "output") -> None:
    """The output path is a dir or nothing yet (a file there would fail after the search)."""
    if out.exists() and not out.is_dir():
        raise RecipeError(f"{where}: {out} exists and is not a directory")


def preflight(recipe: Recipe) -> None:
    """Everything `recipe run` checks before it writes, without reading any weights.

    The demo family (``inputs.phase1``) is made by the run, so its models are checked
    only when they are already there.
    """
    from evomerge.architectures import get_architecture
    from evomerge.run.prepare import check_layer_groups

    check_device(recipe)
    check_output(recipe.output, recipe.where(("output",)))
    if recipe.inputs.models is not None:
        paths, base = list(recipe.inputs.models), recipe.inputs.base_model
    else:
        from evomerge.phase1 import FamilySpec
        from evomerge.phase1.make import reusable_family

        source = recipe.inputs.phase1
        assert source is not None
        family = Path(source.out)
        spec = FamilySpec.for_preset(source.preset, seed=source.seed)
        if reusable_family(family, spec) is None:
            return  # `run` makes (or remakes) it first
        paths = [family / f"model_{i}" for i in (1, 2, 3)]
        base = recipe.inputs.base_model or family / "base"
    validated = checked_inputs(recipe, paths, base, scan=False)
    arch = get_architecture(validated.architecture)
    check_layer_groups(recipe, arch.config_class.from_pretrained(paths[0]))
