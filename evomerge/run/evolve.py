"""Stage 3 of a run: the evolution loop, wired to the merge engine, the scorer and the tracker.

The loop itself (:mod:`evomerge.evolution.loop`) knows only a ``merge`` and a
``score`` callable; this module makes them from the engine and the harness,
shards scoring over ``accelerate launch`` processes, and mirrors every
generation to the tracker, the live display and the log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from transformers import PreTrainedModel

from evomerge.evolution.checkpoint import Checkpoint
from evomerge.evolution.display import GenerationDisplay
from evomerge.evolution.loop import EvolutionLoop, LoopSettings, MergeFn
from evomerge.evolution.pool import weights
from evomerge.evolution.recipe import Recipe
from evomerge.evolution.residency import InputWeights
from evomerge.run.context import RunContext, recipe_hash, recipe_identity
from evomerge.run.prepare import PreparedInputs
from evomerge.run.reference import Reference


def merge_engine(recipe: Recipe, ref: Reference) -> Any:
    """The run's merge engine: the recipe's stage parameters, calibrated on the fitness split."""
    from evomerge.merge.combos import StageParams
    from evomerge.merge.engine import MergeEngine

    params = StageParams(methods=recipe.stages, table=recipe.combo_table())
    return MergeEngine(params, calibration=ref.harness.calibration_loss)


def make_merge(engine: Any) -> MergeFn:
    """The loop's ``merge``: a combo into ``out``, recorded as its resolved config (for lineage)."""

    def merge(
        label: str, parents: Sequence[InputWeights], out: PreTrainedModel, seed: int
    ) -> dict[str, Any]:
        result = engine.merge_combo(
            label, [weights(p) for p in parents], out=weights(out), seed=seed, scratch_model=out
        )
        return {
            "label": label,
            "config_yaml": result.config_yaml,
            "resolved_slices": result.resolved_slices,
            "fallbacks": [
                {"stage": s.stage, "method": s.method, "reason": s.fallback}
                for s in result.stage_logs
                if s.fallback
            ],
        }

    return merge


def make_score_many(ctx: RunContext, ref: Reference) -> Callable[..., list[Any]]:
    """Each process scores every n-th candidate; the results are gathered to all.

    ``harness``: the sample to score on (default: the run's fitness sample).
    """
    dist = ctx.dist

    def score_many(models: list[PreTrainedModel], harness: Any = None) -> list[Any]:
        if dist.num_processes == 1:
            return [ref.score(m, harness) for m in models]
        from accelerate.utils import gather_object

        from evomerge.fitness import FitnessScore

        mine = {
            i: ref.score(m, harness).to_dict()
            for i, m in enumerate(models)
            if i % dist.num_processes == dist.process_index
        }
        merged: dict[int, dict[str, Any]] = {}
        for part in gather_object([mine]):
            merged.update(part)
        return [FitnessScore(**merged[i]) for i in range(len(models))]

    return score_many


def loop_settings(recipe: Recipe) -> LoopSettings:
    evo = recipe.evolution
    early = evo.early_stop
    return LoopSettings(
        generations=evo.generations,
        sigma=evo.mutation.sigma,
        sigma_mode=evo.mutation.sigma_mode,
        operator=evo.mutation.operator,
        rate=evo.mutation.rate,
        min_diversity=evo.min_diversity,
        early_stop_min_improvement=None if early is None else early.min_improvement,
        early_stop_patience=5 if early is None else early.patience,
        seed=evo.seed,
    )


def open_tracker(ctx: RunContext, ref: Reference) -> Any:
    """The tracker (a context manager) on the main process; a null context elsewhere."""
    if not ctx.is_main:
        return contextlib.nullcontext(None)
    from evomerge.evolution.tracking import Tracker

    recipe = ctx.recipe
    return Tracker(
        ctx.out,
        run_name=recipe.name,
        project=recipe.tracking.project,
        wandb_mode=recipe.tracking.wandb_mode,
        config=recipe.model_dump(mode="json"),
        resume=ctx.resume,
        baseline=ref.input_mean,
        target=ref.input_mean * (1 + recipe.fitness.min_improvement),
    )


def on_generation(
    ctx: RunContext, tracker: Any, display: GenerationDisplay
) -> Callable[[dict[str, Any]], None]:
    """Mirror one evaluated generation to the tracker, the live line and the log (main process)."""

    def record_generation(record: dict[str, Any]) -> None:
        if tracker is None:
            return
        tracker.log_generation(record)
        display.update(record)
        ctx.log(
            f"gen {record['generation']:>3}  best {record['best_fitness']:.4f}  "
            f"diversity {record['diversity']:.3f}  resident {record['resident_models'] + 0}"
            + ("  (re-seeded)" if record["reseeded"] else "")
        )

    return record_generation


def evolve(
    ctx: RunContext,
    prep: PreparedInputs,
    ref: Reference,
    engine: Any,
    on_record: Callable[[dict[str, Any]], None],
    display: GenerationDisplay,
) -> Any:
    """Generation 0 (or the checkpoint's state on resume), then the strategy to the end.

    ``evolution.strategy`` picks the loop: the seed's weight loop
    (:class:`~evomerge.evolution.loop.EvolutionLoop`) for a strategy of kind
    ``weights``, else the genome loop (:class:`~evomerge.run.search.GenomeLoop`).
    """
    from evomerge.search.strategy import find_strategy

    loop: Any
    if find_strategy(ctx.recipe.evolution.strategy).kind == "weights":
        loop = seed_loop(ctx, prep, ref, engine, on_record)
    else:
        from evomerge.run.search import GenomeLoop

        loop = GenomeLoop(ctx, prep, ref, engine, on_record, make_score_many(ctx, ref))
    if ctx.resume:
        loop.resume()
        display.resumed(loop.state.generation)
        ctx.log(f"resumed after generation {loop.state.generation}")
    else:
        loop.start()
    loop.run()
    return loop


def seed_loop(
    ctx: RunContext,
    prep: PreparedInputs,
    ref: Reference,
    engine: Any,
    on_record: Callable[[dict[str, Any]], None],
) -> EvolutionLoop:
    """The user's loop: elites, mutated children, loser merging, re-seeding."""
    return EvolutionLoop(
        inputs=prep.inputs,
        pool=prep.pool,
        merge=make_merge(engine),
        score=ref.score,
        settings=loop_settings(ctx.recipe),
        checkpoint=Checkpoint(ctx.out),
        recipe_hash=recipe_hash(ctx.recipe),
        recipe_identity=recipe_identity(ctx.recipe),
        on_generation=on_record,
        on_progress=ctx.log,
        score_many=make_score_many(ctx, ref),
        is_main_process=ctx.is_main,
    )
