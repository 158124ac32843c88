"""`evomerge recipe run`: the stages of a run in order, each in its own module.

1. :mod:`~evomerge.run.prepare` — resolve and validate the inputs, claim the
   output dir, load the inputs into the model pool (bad input writes nothing);
2. :mod:`~evomerge.run.reference` — the fitness harness, the inputs' scores and
   the shared cost every candidate is judged against;
3. :mod:`~evomerge.run.evolve` — the evolution loop, checkpointed after every
   evaluated generation (a killed run resumes), tracked and displayed;
4. :mod:`~evomerge.run.report` — the champion, the held-out scores beside the
   honest baselines, ``result.json``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Any

from evomerge.evolution.display import GenerationDisplay
from evomerge.evolution.recipe import Recipe
from evomerge.run.context import EXIT_BELOW_TARGET, EXIT_PASS, RunContext, RunOutcome
from evomerge.run.evolve import evolve, merge_engine, on_generation, open_tracker
from evomerge.run.prepare import prepare_inputs
from evomerge.run.reference import reference_scores
from evomerge.run.report import peak_host_bytes, summary_line, write_report

#: result.json keys mirrored into the W&B run summary
SUMMARY_KEYS = (
    "fitness",
    "improvement",
    "test_improvement",
    "baselines_test_improvement",
    "loop_gain_test",
    "best_gen0_id",
    "passed",
)


class Run:
    """One evolution run; `execute()` runs the stages and returns the outcome."""

    def __init__(
        self,
        recipe: Recipe,
        *,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        self.recipe = recipe
        self.resume = resume
        self.overwrite = overwrite
        self.progress = progress
        self.log = log

    def execute(self) -> RunOutcome:
        from accelerate import PartialState

        ctx = RunContext(
            self.recipe, self.resume, self.overwrite, self.progress, self.log, PartialState()
        )
        clock = time.perf_counter()
        prep = prepare_inputs(ctx)
        ctx.stage_seconds["prepare"] = time.perf_counter() - clock
        clock = time.perf_counter()
        ref = reference_scores(ctx, prep)
        ctx.stage_seconds["reference"] = time.perf_counter() - clock
        ctx.peak_host_bytes_before_search = peak_host_bytes()
        engine = merge_engine(ctx.recipe, ref)
        display = GenerationDisplay(ctx.recipe.evolution.generations, enabled=ctx.show_progress)
        with open_tracker(ctx, ref) as tracker, display:
            clock = time.perf_counter()
            loop = evolve(ctx, prep, ref, engine, on_generation(ctx, tracker, display), display)
            ctx.stage_seconds["search"] = time.perf_counter() - clock
            ctx.peak_host_bytes_after_search = peak_host_bytes()
            ctx.dist.wait_for_everyone()
            if not ctx.is_main:  # the main process writes the report; the others are done
                return RunOutcome(EXIT_PASS, ctx.out, {})
            result = write_report(ctx, prep, ref, loop, engine)
            tracker.finish(
                {k: result[k] for k in SUMMARY_KEYS if k in result},
                held_out=_held_out_marks(result),
                held_out_ranges=(result.get("held_out_intervals") or {}).get("test_improvement"),
            )
        shutil.rmtree(ctx.out / ".checkpoint", ignore_errors=True)  # intermediates are not kept
        self.log(summary_line(result, loop.state.champion_id))
        code = EXIT_PASS if result["passed"] else EXIT_BELOW_TARGET
        return RunOutcome(code, ctx.out, result)


def _held_out_marks(result: dict[str, Any]) -> dict[str, float]:
    """Test-split improvements over the inputs' mean, champion first, for the plot."""
    return {"champion": result["test_improvement"], **result["baselines_test_improvement"]}
