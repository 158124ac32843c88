"""Stage 1 of a run: resolve and validate the inputs, claim the output dir, load the inputs.

Validation comes before the output dir is touched, so bad input writes nothing.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import PreTrainedModel

from evomerge.device import resolve_device, storage_dtype
from evomerge.evolution.checkpoint import Checkpoint
from evomerge.evolution.pool import ModelPool, blank_model, load_weights_, weights
from evomerge.evolution.recipe import Recipe, RecipeError
from evomerge.evolution.residency import (
    FileTensors,
    HostTensors,
    InputWeights,
    MemoryPlan,
    Residency,
    choose_residency,
    free_memory,
    size_text,
)
from evomerge.run.context import IN_FLIGHT, RESIDENT_LIMIT, RunContext

_T = TypeVar("_T")


@dataclass
class PreparedInputs:
    """The validated inputs, held where ``residency`` says, and what later stages build on them."""

    paths: list[Path]
    layout: Any  # evomerge.data.DataLayout: the demo corpora the tasks are written from
    device: torch.device
    model_config: Any  # the inputs' transformers config
    pool: ModelPool
    inputs: list[InputWeights]
    tokenizer: Any
    base_path: Path | None = None  # the inputs' common ancestor, when known
    residency: Residency = "device"
    architecture: str = ""
    plan: MemoryPlan | None = None  # what the run holds where, by the inputs' headers

    def load_base(self) -> InputWeights | None:
        """The ancestor's weights, held as the inputs are (genome strategies search against it)."""
        if self.base_path is None:
            return None
        return load_inputs([self.base_path], self.pool, self.residency, self.architecture)[0]

    def each_input_model(self) -> Iterator[PreTrainedModel]:
        """Each input as a model on the device, for scoring: itself when it is resident,
        else a pool slot it is copied into, given back when the next is asked for."""
        for held in self.inputs:
            if isinstance(held, PreTrainedModel):
                yield held
                continue
            slot = self.pool.acquire()
            try:
                load_weights_(slot, held)
                held.release()
                yield slot
            finally:
                self.pool.release(slot)


def resolve_inputs(
    recipe: Recipe, log: Callable[[str], None], progress: bool
) -> tuple[list[Path], Path | None]:
    """The three input dirs (making the demo family first when the recipe asks for it)."""
    if recipe.inputs.models is not None:
        return list(recipe.inputs.models), recipe.inputs.base_model
    from evomerge.phase1 import FamilySpec, make_family

    src = recipe.inputs.phase1
    assert src is not None
    family = make_family(
        src.out, FamilySpec.for_preset(src.preset, seed=src.seed), progress=progress, log=log
    )
    base = recipe.inputs.base_model or Path(family["base_model"])
    return [Path(p) for p in family["models"]], base


def prepare_out_dir(
    out: Path, *, resume: bool, overwrite: bool, keep: Sequence[Path | str | None] = ()
) -> None:
    """An empty output dir (or, with ``resume``, one that holds a checkpoint).

    ``--overwrite`` never deletes a dir that is or holds one of ``keep`` (the inputs, the
    recipe, task dirs), nor the working, home or root dir (evomerge/output_dir.py).
    """
    from evomerge.output_dir import replace_refusal

    if resume:
        if not Checkpoint(out).exists():
            raise RecipeError(f"{out}: --resume: no checkpoint in this output dir")
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RecipeError(
                f"{out}: output dir is not empty; use --resume to continue or --overwrite to start over"
            )
        refusal = replace_refusal(out, keep)
        if refusal is not None:
            raise RecipeError(f"output: {refusal}; --overwrite would delete it, so it is refused")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def load_inputs(
    paths: Sequence[Path], pool: ModelPool, residency: Residency = "device", architecture: str = ""
) -> list[InputWeights]:
    """Each input held where ``residency`` says, in the pool's storage dtype.

    ``device``: its weights copied into a pool slot (so the inputs count against
    the bound); ``host``: its weights in host memory, fetched per tensor;
    ``disk``: read from its safetensors files per tensor, never held.
    No input is ever held in two precisions.
    """
    from transformers import AutoModelForCausalLM

    if residency == "disk":
        template = pool.acquire()  # names, shapes, dtype and device of the run's models
        try:
            return [FileTensors.open(Path(p), architecture, template) for p in paths]
        finally:
            pool.release(template)
    held: list[InputWeights] = []
    for path in paths:
        loaded = AutoModelForCausalLM.from_pretrained(path, dtype=pool.dtype)
        if residency == "host":
            held.append(HostTensors(weights(loaded), pool.device))
        else:
            slot = pool.acquire()
            load_weights_(slot, weights(loaded))
            held.append(slot)
        del loaded
    return held


def check_layer_groups(recipe: Recipe, config: Any) -> None:
    """``evolution.layer_groups`` fits the inputs' decoder layers (before anything is written)."""
    layers = getattr(config, "num_hidden_layers", None)
    groups = recipe.evolution.layer_groups
    if isinstance(layers, int) and groups > layers:
        raise RecipeError(
            f"{recipe.where(('evolution', 'layer_groups'))}: {groups} layer groups but the "
            f"inputs have {layers} decoder layers"
        )


def prepare_inputs(ctx: RunContext) -> PreparedInputs:
    """Validate the inputs, claim the output dir, and load the inputs into the model pool."""
    from transformers import AutoTokenizer

    from evomerge.architectures import get_architecture
    from evomerge.data import prepare_data
    from evomerge.run.preflight import check_device, check_output, checked_inputs

    recipe = ctx.recipe
    check_device(recipe)  # before the demo family is made: nothing is written for bad input
    check_output(ctx.out)
    with ctx.dist.main_process_first():  # one process makes the demo family / data
        paths, base = resolve_inputs(recipe, ctx.log, ctx.show_progress)
        layout = prepare_data(progress=ctx.show_progress)
    validated = checked_inputs(recipe, paths, base)
    for warning in validated.warnings:
        ctx.log(f"warning: {warning}")
    arch = get_architecture(validated.architecture)
    config = arch.config_class.from_pretrained(paths[0])
    check_layer_groups(recipe, config)
    device = resolve_device(recipe.device.device)
    dtype = storage_dtype(recipe.device.storage, config)
    plan = _together(
        ctx,
        lambda: memory_plan(
            recipe,
            validated.param_count,
            dtype,
            device,
            base is not None,
            processes=ctx.dist.num_processes,
        ),
    )
    residency = plan.residency
    if ctx.is_main:
        ctx.log(f"memory: {plan.describe()}")
    source = recipe._source[0] if recipe._source else None
    keep = [*paths, base, source, *recipe.fitness.task_dirs]
    if recipe.inputs.phase1 is not None:
        keep.append(recipe.inputs.phase1.out)
    _together(
        ctx,
        lambda: (
            prepare_out_dir(ctx.out, resume=ctx.resume, overwrite=ctx.overwrite, keep=keep)
            if ctx.is_main
            else None
        ),
    )
    ctx.dist.wait_for_everyone()

    def factory() -> PreTrainedModel:
        return blank_model(arch.model_class, config, device=device, dtype=dtype)

    pool = ModelPool(factory, capacity=RESIDENT_LIMIT, dtype=dtype, device=device)
    inputs = load_inputs(paths, pool, residency, validated.architecture)
    tokenizer = AutoTokenizer.from_pretrained(paths[0])
    return PreparedInputs(
        [Path(p) for p in paths],
        layout,
        device,
        config,
        pool,
        inputs,
        tokenizer,
        Path(base) if base is not None else None,
        residency,
        validated.architecture,
        plan,
    )


def _together(ctx: RunContext, check: Callable[[], _T]) -> _T:
    """``check()``'s value; if it raises a RecipeError in any process, every process raises it
    (gathered across `accelerate launch`, so none is left waiting at a barrier alone)."""
    refusal: str | None = None
    value: Any = None
    try:
        value = check()
    except RecipeError as exc:
        refusal = str(exc)
    if ctx.dist.num_processes > 1:
        from accelerate.utils import gather_object

        refusal = next((r for r in gather_object([refusal]) if r), None)
    if refusal is not None:
        raise RecipeError(refusal)
    return value


def memory_plan(
    recipe: Recipe,
    params: int,
    dtype: torch.dtype,
    device: torch.device,
    has_base: bool,
    *,
    processes: int = 1,
    free: tuple[int | None, int | None] | None = None,
) -> MemoryPlan:
    """What the run will hold where, with ``device.inputs`` resolved: for ``auto``, whether
    inputs and candidates fit the device.

    ``free``: (the GPU's free bytes, the host's available bytes), as measured here when
    None (`recipe validate --gpu-memory/--host-memory` plans for another machine);
    ``processes``: how many `accelerate launch` runs, each holding its own inputs and
    candidates. A run whose candidates (and resident inputs) alone exceed the device, or
    whose ``host`` inputs exceed host memory, is refused before anything is written,
    naming what would make it fit.
    """
    from evomerge.search.strategy import find_strategy

    model_bytes = params * dtype.itemsize
    seed_loop = find_strategy(recipe.evolution.strategy).kind == "weights"
    # the seed loop holds its whole population; genome strategies what is in flight (each
    # process merges a whole part: evomerge/run/search.py) and load the base to search from
    candidates = RESIDENT_LIMIT - 3 if seed_loop else max(IN_FLIGHT, processes)
    device_free, host_available = free_memory(device) if free is None else free
    inputs = 3 + (has_base and not seed_loop)
    residency = choose_residency(
        recipe.device.inputs,
        device=device,
        input_bytes=model_bytes * inputs,
        candidate_bytes=model_bytes * candidates,
        device_free=device_free,
        host_available=host_available,
        processes=processes,
    )
    plan = MemoryPlan(
        model_bytes,
        dtype,
        inputs,
        candidates,
        residency,
        device,
        device_free,
        host_available,
        processes,
    )
    short = plan.shortfall()
    if short is None:
        return plan
    where, held, room = short
    room_word = "available" if where == "host" or device.type == "cpu" else "free"
    each = f" in each of {processes} processes" if processes > 1 else ""
    if where == "host":  # a GPU run's `host` inputs: every process holds its copy
        raise RecipeError(
            f"{recipe.where(('device', 'inputs'))}: the inputs and base{each} in host memory "
            f"take {size_text(held)}, but {size_text(room)} is {room_word} "
            "(device.inputs: disk leaves them in their files)"
        )
    fixes = []
    if seed_loop:
        fixes.append(f"a genome strategy (evolution.strategy: cmaes) holds {IN_FLIGHT}")
    if dtype.itemsize > 2:
        fixes.append("device.storage: bf16 halves every model")
    if plan.inputs_on_device:
        fixes.append("device.inputs: disk leaves the inputs in their files")
    if processes > 1:
        fixes.append("fewer processes")
    field = ("evolution", "strategy") if seed_loop else ("device", "storage")
    models = f"{candidates} candidates" + (" and the inputs" if plan.inputs_on_device else "")
    models += f" of {size_text(model_bytes)} each"
    if processes == 1:
        holds = f"the run holds {models} on {device}"
    elif device.type == "cpu":  # one memory for all
        holds = f"the {processes} processes hold {models}, per process, on {device}"
    else:
        holds = f"each of the {processes} processes holds {models} on its GPU"
    raise RecipeError(
        f"{recipe.where(field)}: {holds}: {size_text(held)}, but {size_text(room)} is "
        f"{room_word}" + (f" ({'; '.join(fixes)})" if fixes else "")
    )
