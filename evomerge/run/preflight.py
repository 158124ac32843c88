"""What `recipe validate` and the start of `recipe run` both check, so "ok" means the run starts.

Every problem is a RecipeError naming the recipe file, line and field, then what is
wrong (for an input, the model dir and the check that failed, as docs/recipes.md shows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from evomerge.evolution.recipe import Recipe, RecipeError
from evomerge.evolution.residency import MemoryPlan
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
        if ": path: not a directory" in message and _missing(recipe, loc):
            from evomerge.hub_cache import not_cached_hint  # a repo id the cache lacks?

            message += not_cached_hint(recipe.given(loc) or "")
        if recipe.inputs.architecture and ": model_type: is " in message:
            loc = ("inputs", "architecture")  # the inputs are consistent; the recipe's name is not
        elif ": param_count: " in message:
            loc = ("inputs", "expected_params")
        raise RecipeError(f"{recipe.where(loc)}: {message}") from None


def _missing(recipe: Recipe, loc: tuple[Any, ...]) -> bool:
    """Whether the input at ``loc`` (inputs.models.N, inputs.base_model) is not there at all."""
    inputs = recipe.inputs
    if loc[:2] == ("inputs", "models") and len(loc) == 3 and inputs.models is not None:
        return not Path(inputs.models[loc[2]]).exists()
    if loc == ("inputs", "base_model") and inputs.base_model is not None:
        return not Path(inputs.base_model).exists()
    return False


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


def planned_device(recipe: Recipe, gpu_memory: int | None) -> torch.device:
    """The run's device; with ``gpu_memory`` (planning for a GPU machine from this one), the
    GPU the recipe names, ``cuda:0`` for ``auto``."""
    from evomerge.device import resolve_device

    name = recipe.device.device
    if gpu_memory is None:
        return resolve_device(name)
    if name == "auto":
        return torch.device("cuda", 0)
    if not name.startswith("cuda"):
        raise RecipeError(
            f"{recipe.where(('device', 'device'))}: is {name}; --gpu-memory plans a GPU run"
        )
    device = torch.device(name)
    return torch.device("cuda", device.index or 0)


def preflight(
    recipe: Recipe,
    *,
    gpu_memory: int | None = None,
    host_memory: int | None = None,
    processes: int = 1,
) -> MemoryPlan | None:
    """Everything `recipe run` checks before it writes, without reading any weights; the
    run's memory plan (None where the inputs are not there yet).

    The demo family (``inputs.phase1``) is made by the run, so its models are checked
    only when they are already there. ``gpu_memory`` / ``host_memory`` (bytes) plan for
    a machine with that much free instead of this one (the device check is then skipped;
    with ``gpu_memory`` alone, that machine's host memory is unknown, not this one's).
    ``processes``: as `accelerate launch --num_processes` will run it.
    """
    from evomerge.architectures import get_architecture
    from evomerge.device import storage_dtype
    from evomerge.evolution.residency import free_memory
    from evomerge.run.prepare import check_layer_groups, memory_plan

    if gpu_memory is None:
        check_device(recipe)
    device = planned_device(recipe, gpu_memory)
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
            return None  # `run` makes (or remakes) it first
        paths = [family / f"model_{i}" for i in (1, 2, 3)]
        base = recipe.inputs.base_model or family / "base"
    validated = checked_inputs(recipe, paths, base, scan=False)
    config = get_architecture(validated.architecture).config_class.from_pretrained(paths[0])
    check_layer_groups(recipe, config)
    if gpu_memory is None:  # this machine, as measured here (or its host memory as given)
        measured = free_memory(device)
        free = (measured[0], measured[1] if host_memory is None else host_memory)
    else:  # another machine: what was given of it, and nothing of this one
        free = (gpu_memory, host_memory)
    dtype = storage_dtype(recipe.device.storage, config)
    return memory_plan(
        recipe,
        validated.param_count,
        dtype,
        device,
        base is not None,
        processes=processes,
        free=free,
    )
