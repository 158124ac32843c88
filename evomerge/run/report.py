"""Stage 4 of a run: save the champion, score it and two honest baselines held out, write result.json.

The held-out test split is never used for selection. Beside the champion it
scores the two models a user gets without the loop: the uniform average of
the three inputs (a model soup, no search at all) and the best generation-0
combo (the eight fixed combos, no evolution). ``loop_gain_test`` is how much
the loop adds over the better of the two on that split.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from evomerge.device import device_report
from evomerge.evolution.checkpoint import atomic_write_bytes
from evomerge.evolution.lineage import LineageNode
from evomerge.evolution.loop import LoopState
from evomerge.evolution.pool import load_weights_, weights
from evomerge.evolution.rebuild import replay_node
from evomerge.evolution.recipe import Recipe
from evomerge.evolution.residency import InputWeights, MemoryPlan
from evomerge.evolution.tracking import HELD_OUT_LABELS, read_log
from evomerge.fitness.cost import apply_shared_cost, shared_cost
from evomerge.fitness.measurements import Measurements
from evomerge.merge.combos import COMBO_LABELS
from evomerge.run.context import RESIDENT_LIMIT, RunContext
from evomerge.run.model_card import write_model_card
from evomerge.run.prepare import PreparedInputs
from evomerge.run.reference import Reference, fitness_config

UNIFORM_AVERAGE, BEST_GEN0, CHAMPION = "uniform_average", "best_gen0", "champion"


@dataclass
class HeldOut:
    """The test split's scorer, normalised by the inputs on that split, and the inputs' scores."""

    harness: Any  # FitnessHarness on the test split
    fitness: Any  # CompositeFitness normalised by the inputs' test measurements
    shared: dict[str, Any]
    input_scores: list[Any]
    #: The inputs' test measurements as measured (their own cost), what ``fitness`` was
    #: normalised by; and each scored model's (``score(label=...)``): the bootstrap's data.
    input_measurements: list[Measurements] = field(default_factory=list)
    measured: dict[str, Measurements] = field(default_factory=dict)
    #: Per task, the test documents scored (report_sample's draw) ``of`` how many it has.
    documents: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def input_mean(self) -> float:
        return sum(s.total for s in self.input_scores) / len(self.input_scores)

    def score(self, model: PreTrainedModel, label: str | None = None) -> Any:
        """A model of the inputs' architecture: it shares their cost, as in selection, so timing
        noise cannot move the held-out figures (a champion timed alone once measured 1.49x
        "faster" while the other process was exiting). ``label`` keeps its measurements for
        :meth:`intervals`."""
        measured = apply_shared_cost(self.harness.measure(model, cost=False), self.shared)
        if label is not None:
            self.measured[label] = measured
        return self.fitness.score(measured)

    def improvement(self, total: float) -> float:
        """``total``'s improvement over the inputs' mean on the test split."""
        return (total - self.input_mean) / abs(self.input_mean)

    def improvements(
        self, inputs: list[Measurements], models: dict[str, Measurements]
    ) -> dict[str, float]:
        """Every figure's improvement over the inputs' mean, as ``held_out_scorer`` and
        ``score`` compute it (the shared cost; tested equal to the report's own figures)."""
        from evomerge.fitness.bootstrap import improvements_over_inputs

        return improvements_over_inputs(
            self.fitness.config,
            inputs,
            models,
            prepare=lambda m: apply_shared_cost(m, self.shared),
        )

    def intervals(self, champion: str = CHAMPION, seed: int = 0) -> dict[str, Any] | None:
        """Bootstrap intervals of the held-out figures (evomerge/fitness/bootstrap.py); None
        without the champion and a baseline scored by label."""
        from evomerge.fitness.bootstrap import paired_bootstrap

        if champion not in self.measured or len(self.measured) < 2 or not self.input_measurements:
            return None
        return paired_bootstrap(
            self.input_measurements,
            self.measured,
            aggregate=self.harness.aggregate,
            improvements=self.improvements,
            champion=champion,
            seed=seed,
        )


def held_out_scorer(
    recipe: Recipe,
    task_dir: Path,
    tokenizer: Any,
    device: torch.device,
    model_config: Any,
    inputs: Iterable[PreTrainedModel],
) -> HeldOut:
    """Build the test-split harness (``report_max_items`` documents per task, null: the
    search's ``max_items``, drawn by :func:`report_sample`) and score the inputs."""
    from evomerge.fitness import CompositeFitness, FitnessHarness, suite_for
    from evomerge.fitness.terms import term_tasks

    cfg = fitness_config(recipe, report=True)
    suite = suite_for(
        task_dir,
        domains=recipe.fitness.domains,
        split="test",
        tasks=None,
        extra_dirs=cfg.task_dirs,
        extra_tasks=term_tasks(cfg, "test"),
    )
    counts = suite.doc_counts()
    samples = report_sample(counts, cfg.max_items)
    harness = FitnessHarness.build(
        suite, tokenizer, device, config=cfg, model_config=model_config, samples=samples
    )
    measured = [harness.measure(m) for m in inputs]
    as_measured = [copy.copy(m) for m in measured]  # apply_shared_cost edits in place
    fitness = CompositeFitness.from_inputs(cfg, measured)
    shared = shared_cost(measured)
    scores = [fitness.score(apply_shared_cost(m, shared)) for m in measured]
    scored = measured[0].n_items  # what was scored, not what was asked for
    documents = {name: {"scored": scored[name], "of": n} for name, n in counts.items()}
    return HeldOut(harness, fitness, shared, scores, as_measured, documents=documents)


def report_sample(counts: dict[str, int], most: int | None) -> dict[str, list[int]] | None:
    """Which test documents the report scores: ``most`` per task, a seeded random sample
    (why not the first ``most``: evomerge/run/documents.py), the same for every run and
    seed, so seeds and recipes compare on one sample; None (every document) when no task
    has more. ``evomerge eval --max-items`` draws the same sample."""
    from evomerge.run.documents import drawn_sample

    return drawn_sample(counts, most, "report")


def save_champion(
    out: Path, champion: PreTrainedModel, tokenizer: Any, source: Path | None = None
) -> Path:
    """``OUT/champion`` (model + tokenizer), replaced atomically.

    ``source`` (the first input's dir): its ``generation_config.json`` goes with the
    champion, so the champion generates as the inputs did (save_pretrained would
    write transformers' defaults derived from the model config instead).
    """
    champion_dir = out / "champion"
    tmp = out / ".tmp-champion"
    shutil.rmtree(tmp, ignore_errors=True)
    champion.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if source is not None and (source / "generation_config.json").is_file():
        shutil.copyfile(source / "generation_config.json", tmp / "generation_config.json")
    shutil.rmtree(champion_dir, ignore_errors=True)
    os.replace(tmp, champion_dir)
    return champion_dir


def uniform_average_into(engine: Any, inputs: Sequence[InputWeights], out: PreTrainedModel) -> str:
    """The inputs' uniform average (``linear``, weights 1/3) into ``out``; its merge config."""
    from evomerge.merge.config import ComboConfig, ModelEntry, StageDoc
    from evomerge.merge.inputs import InputSet

    group = InputSet([weights(m) for m in inputs], cache=False)
    soup = StageDoc(merge_method="linear", models=[ModelEntry(model=n) for n in group.names])
    config = ComboConfig(stages=[soup], comment="uniform average of the inputs (model soup)")
    return engine.run_config(
        config, group, out=weights(out), scratch_model=out, label=UNIFORM_AVERAGE
    ).config_yaml


def score_baselines(
    ctx: RunContext,
    prep: PreparedInputs,
    ref: Reference,
    engine: Any,
    state: LoopState,
    held: HeldOut,
) -> dict[str, Any]:
    """Test-split totals of the soup and of the best generation-0 combo (rebuilt from its lineage).

    The rebuilt combo is scored on the fitness split too (``replayed_fitness``):
    equal to the fitness it was selected with, it shows the replay is that model.
    """
    out: dict[str, Any] = {"totals": {}, "configs": {}, "replayed_fitness": None}
    slot = prep.pool.acquire()  # one population slot: the population is released
    try:
        out["configs"][UNIFORM_AVERAGE] = uniform_average_into(engine, prep.inputs, slot)
        out["totals"][UNIFORM_AVERAGE] = held.score(slot, UNIFORM_AVERAGE).total
        if state.best_gen0 is not None:
            node = LineageNode.from_json(state.best_gen0)
            replay_node(engine, node, prep.inputs, prep.inputs, slot)
            out["totals"][BEST_GEN0] = held.score(slot, BEST_GEN0).total
            out["configs"][BEST_GEN0] = node.merge_record["config_yaml"]
            out["replayed_fitness"] = ref.score(slot).total
        else:  # a checkpoint from before best_gen0 was recorded
            ctx.log("warning: the checkpoint does not name the best generation-0 combo")
    finally:
        prep.pool.release(slot)
    return out


def _checks(
    state: LoopState, ref: Reference, held: HeldOut, test_total: float, target: float
) -> dict[str, bool]:
    improvement = (state.champion_fitness - ref.input_mean) / abs(ref.input_mean)
    return {
        "min_improvement_fitness_split": improvement >= target,
        "min_improvement_test_split": held.improvement(test_total) >= target,
        "beats_each_input_fitness_split": all(
            state.champion_fitness > s.total for s in ref.input_scores
        ),
        "beats_each_input_test_split": all(test_total > s.total for s in held.input_scores),
    }


def _baseline_figures(
    held: HeldOut, baselines: dict[str, Any], test_improvement: float, state: LoopState
) -> dict[str, Any]:
    """The result.json keys of the baselines; ``loop_gain_test`` against the better of them."""
    totals = baselines["totals"]
    improvements = {name: held.improvement(total) for name, total in totals.items()}
    gen0 = state.best_gen0 or {}
    return {
        "baselines_test_fitness": totals,
        "baselines_test_improvement": improvements,
        "loop_gain_test": test_improvement - max(improvements.values()),
        "best_gen0_id": gen0.get("id"),
        "best_gen0_fitness": gen0.get("fitness"),
        "best_gen0_replayed_fitness": baselines["replayed_fitness"],
        "baselines_merge_config": baselines["configs"],
    }


def _evolution_log(state: LoopState) -> dict[str, Any]:
    return {
        "generations": state.generation,
        "stopped_early": state.stopped_early,
        "best_fitness_per_gen": state.best_fitness_per_gen,
        "diversity_per_gen": state.diversity_per_gen,
        "reseeded_generations": state.reseeded_generations,
    }


def _search_figures(ctx: RunContext, loop: Any) -> dict[str, Any]:
    """The strategy, its evaluations, and (genome strategies) the validation crowning."""
    evo = ctx.recipe.evolution
    out: dict[str, Any] = {"strategy": evo.strategy}
    history = getattr(loop, "history", None)
    if history is not None:
        out.update(
            evaluations=len(history),
            layer_groups=evo.layer_groups,
            embedding_group=evo.embedding_group,
            selection=evo.selection.model_dump(mode="json"),
            crowning=loop.crowning,
            champion_genome=json.loads(loop.champion_genome.to_json()),
        )
    return out


def _lineage(loop: Any) -> dict[str, Any]:
    """The champion's lineage, and its merge config: its own if a combo, else its nearest combo ancestor's."""
    ancestry = loop.book.ancestry(loop.state.champion_id or "")
    combos = [n for n in ancestry if n.kind in ("combo", "genome")]
    return {
        "champion_lineage": [n.to_json() for n in ancestry],
        "champion_merge_config": combos[-1].merge_record.get("config_yaml") if combos else None,
    }


def _intervals(ctx: RunContext, held: HeldOut) -> dict[str, Any] | None:
    """The bootstrap intervals, never fatal: the figures they qualify are written anyway."""
    try:
        intervals = held.intervals(seed=ctx.recipe.evolution.seed)
    except Exception as exc:  # noqa: BLE001 - reported, and the result keeps its figures
        ctx.log(f"warning: no held-out intervals: {exc}")
        return None
    if intervals is None:
        ctx.log("warning: no held-out intervals: no resample of the test documents could be scored")
    elif intervals["skipped"]:
        ctx.log(
            f"warning: held-out intervals from {intervals['resamples']} resamples; "
            f"{intervals['skipped']} drew documents every input scored 0 on and were skipped"
        )
    return intervals


def build_result(
    ctx: RunContext,
    prep: PreparedInputs,
    ref: Reference,
    loop: Any,  # EvolutionLoop or run.search.GenomeLoop: .state, .book, .finish()
    held: HeldOut,
    test_champion: Any,
    baselines: dict[str, Any],
    champion_dir: Path,
) -> dict[str, Any]:
    """Every figure of result.json (the Phase-3 handoff), in its documented order."""
    state, target = loop.state, ctx.recipe.fitness.min_improvement
    test_improvement = held.improvement(test_champion.total)
    checks = _checks(state, ref, held, test_champion.total, target)
    return {
        "model": str(champion_dir),
        "fitness": state.champion_fitness,
        "improvement": (state.champion_fitness - ref.input_mean) / abs(ref.input_mean),
        "test_fitness": test_champion.total,
        "test_improvement": test_improvement,
        **_baseline_figures(held, baselines, test_improvement, state),
        # how far the test documents' sample could move these figures
        "held_out_intervals": _intervals(ctx, held),
        "held_out_documents": held.documents,
        # the run's own fitness sample (generation 0, the normalisation): fitness.sample
        "fitness_documents": ref.documents,
        "min_improvement": target,
        "checks": checks,
        # pass/fail is judged on the held-out split: the fitness split was optimised on
        "passed": checks["min_improvement_test_split"] and checks["beats_each_input_test_split"],
        "evolution_log": _evolution_log(state),
        "merge_combo_usage": {label: state.combo_usage.get(label, 0) for label in COMBO_LABELS},
        "champion_terms": state.champion_terms,
        "search": _search_figures(ctx, loop),
        "inputs": {
            "models": [str(p) for p in prep.paths],
            "base_model": str(prep.base_path) if prep.base_path is not None else None,
            "fitness": [s.total for s in ref.input_scores],
            "test_fitness": [s.total for s in held.input_scores],
            "test_terms": [s.terms for s in held.input_scores],
        },
        "champion_test_terms": test_champion.terms,
        "champion_test_raw": test_champion.raw,
        **_lineage(loop),
        "fallbacks": state.fallbacks,
        "shared_cost": ref.shared_cost,
        "resident_models": {
            "limit": RESIDENT_LIMIT,
            "peak": prep.pool.peak_live,
            "allocated": prep.pool.allocated,
        },
        "device": {
            **device_report(prep.device, prep.pool.dtype),
            "inputs": prep.residency,
            "eval_batch_tokens": ref.harness.batch_tokens,  # fitness.batch_tokens, resolved
        },
        "resources": resources(
            prep.device,
            loop.checkpoint,
            ctx.peak_host_bytes_before_search,
            ctx.peak_host_bytes_after_search,
            prep.plan,
        ),
        "timing": timing(ctx.stage_seconds, read_log(ctx.out)),
        "recipe": ctx.recipe.model_dump(mode="json"),
    }


def peak_host_bytes() -> int:
    """This process's peak resident set size so far, in bytes."""
    import resource

    # ru_maxrss is KiB on Linux (bytes on macOS)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def resources(
    device: torch.device,
    checkpoint: Any,
    before_search: int | None = None,
    after_search: int | None = None,
    plan: MemoryPlan | None = None,
) -> dict[str, int | None]:
    """What the run cost: this process's peak host RSS (also as it stood before the search
    began: inputs, libraries, harness; and when it ended, before the report), the device
    allocator's peak beside the weights the memory plan put there (the rest is eval
    batches and merge temporaries), and the most bytes one generation's checkpoint wrote
    (KBs for genome strategies, weights for ``seed``)."""
    peak_device = None
    if device.type == "cuda":
        from evomerge.fitness.cost import process_peak_memory

        peak_device = process_peak_memory(device)
    return {
        "peak_host_bytes": peak_host_bytes(),
        "peak_host_bytes_before_search": before_search,
        "peak_host_bytes_after_search": after_search,
        "peak_device_bytes": peak_device,
        "planned_device_weight_bytes": plan.device_bytes if plan is not None else None,
        "checkpoint_bytes_per_generation": int(checkpoint.max_save_bytes),
    }


def timing(stages: dict[str, float], records: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the wall time went: this process's stages, and the generations of the log
    (all of them, across resumes) split into merging, scoring and the rest (strategy,
    harness builds for new minibatches, diversity, checkpoints, tracking)."""
    seconds = sum(float(r["seconds"]) for r in records)
    merge = sum(float(r.get("merge_seconds", 0.0)) for r in records)
    scoring = sum(float(r.get("scoring_seconds", 0.0)) for r in records)
    return {
        **{f"{stage}_seconds": round(s, 3) for stage, s in stages.items()},
        "generations": {
            "count": len(records),
            "seconds": round(seconds, 3),
            "merge_seconds": round(merge, 3),
            "scoring_seconds": round(scoring, 3),
            "bookkeeping_seconds": round(seconds - merge - scoring, 3),
        },
    }


def write_report(
    ctx: RunContext, prep: PreparedInputs, ref: Reference, loop: Any, engine: Any
) -> dict[str, Any]:
    """Save the champion, score it and the baselines on the test split, write ``result.json``."""
    champion = prep.pool.acquire()
    load_weights_(champion, loop.finish())  # the population is done: its slots are free
    champion_dir = save_champion(ctx.out, champion, prep.tokenizer, prep.paths[0])
    held = held_out_scorer(
        ctx.recipe,
        ref.task_dir,
        prep.tokenizer,
        prep.device,
        prep.model_config,
        prep.each_input_model(),
    )
    test_champion = held.score(champion, CHAMPION)
    baselines = score_baselines(ctx, prep, ref, engine, loop.state, held)
    result = build_result(ctx, prep, ref, loop, held, test_champion, baselines, champion_dir)
    atomic_write_bytes(ctx.out / "result.json", json.dumps(result, indent=2, default=str).encode())
    try:  # after result.json: a card that cannot be written must not cost the run's result
        write_model_card(champion_dir, result)
    except Exception as exc:  # noqa: BLE001 - any failure is reported, none is fatal
        ctx.log(f"warning: champion/README.md not written: {exc}")
    return result


def summary_line(result: dict[str, Any], champion_id: str | None) -> str:
    """The console's one-line verdict: the champion on both splits, and what the loop itself added."""
    base = result["baselines_test_improvement"]
    shown = ", ".join(f"{HELD_OUT_LABELS.get(k, k)} {v:+.1%}" for k, v in base.items())
    intervals = result.get("held_out_intervals") or {}
    gain = intervals.get("loop_gain_test")
    sure = f", {intervals['level']:.0%} interval {gain[0]:+.1%}..{gain[1]:+.1%}" if gain else ""
    return (
        f"champion {champion_id}: fitness {result['fitness']:.4f} "
        f"({result['improvement']:+.1%} vs inputs; test split {result['test_improvement']:+.1%}; "
        f"baselines on test: {shown}; loop gain {result['loop_gain_test']:+.1%}{sure})"
    )
