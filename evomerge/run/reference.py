"""Stage 2 of a run: the fitness harness, and the inputs' scores every candidate is judged against.

The composite fitness is normalised by the inputs' measurements, and every
candidate shares the inputs' cost (:func:`evomerge.fitness.cost.shared_cost`).
Both are measured once, by the main process, saved beside the checkpoint and
reused on resume, so a resumed run scores exactly as the original did.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from evomerge.evolution.checkpoint import atomic_write_bytes
from evomerge.evolution.recipe import Recipe
from evomerge.fitness.cost import apply_shared_cost, shared_cost
from evomerge.run.context import RunContext
from evomerge.run.prepare import PreparedInputs


def fitness_config(recipe: Recipe, *, report: bool = False) -> Any:
    """The harness's FitnessConfig from the recipe: the search's (``max_items`` documents per
    task), or with ``report`` the held-out report's: ``report_max_items`` per task, and
    where that is null the search's ``max_items``, so the report pools its tasks in the
    proportions the search selected on (the pooled terms weigh each task by its number of
    documents; every test document would weigh the larger tasks more)."""
    from evomerge.fitness import FitnessConfig

    data = recipe.fitness.model_dump()
    report_items = data.pop("report_max_items")
    data.pop("min_improvement")
    data.pop("sample")  # which documents: the harness's ``samples`` (own_sample below)
    if report and report_items is not None:
        data["max_items"] = report_items
    if recipe.device.precision == "bf16":
        data["precision"] = "bf16"
    return FitnessConfig.model_validate(data)


def broadcast(payload: dict[str, Any]) -> dict[str, Any]:
    """The main process's ``payload`` on every process (itself when there is one process)."""
    from accelerate import PartialState

    if PartialState().num_processes == 1:
        return payload
    from accelerate.utils import broadcast_object_list

    box = [payload]
    broadcast_object_list(box, from_process=0)
    return box[0]


@dataclass
class Reference:
    """The selection split's harness and scorer, and the inputs' scores on it."""

    task_dir: Path
    harness: Any  # FitnessHarness on the fitness split
    composite: Any  # CompositeFitness normalised by the inputs
    input_scores: list[Any]
    shared_cost: dict[str, Any]
    #: The run's own fitness documents per task (``fitness.sample: random``); None: the
    #: first ``max_items`` of each (lm-eval's ``limit``), or every document.
    sample: dict[str, list[int]] | None
    #: Per task, the fitness documents scored ``of`` how many there are (and which, where
    #: drawn): result.json ``fitness_documents``.
    documents: dict[str, dict[str, Any]]

    @property
    def doc_counts(self) -> dict[str, int]:
        """Documents per fitness task (what the search's samples are drawn from)."""
        return {name: d["of"] for name, d in self.documents.items()}

    @property
    def input_mean(self) -> float:
        """The inputs' mean fitness: the baseline every improvement is measured from."""
        return sum(s.total for s in self.input_scores) / len(self.input_scores)

    def score(self, model: PreTrainedModel, harness: Any = None) -> Any:
        """One candidate's fitness (no cost timing: it shares the inputs' cost).

        ``harness``: another sample of the fitness split (a search minibatch or the
        validation sample), normalised by the same input reference.
        """
        measured = (harness or self.harness).measure(model, cost=False)
        return self.composite.score(apply_shared_cost(measured, self.shared_cost))


def fitness_suite(recipe: Recipe, task_dir: Path) -> Any:
    """The fitness split's task suite (the recipe's tasks and task dirs)."""
    from evomerge.fitness import suite_for
    from evomerge.fitness.terms import term_tasks

    cfg = fitness_config(recipe)
    return suite_for(
        task_dir,
        domains=recipe.fitness.domains,
        split="fitness",
        tasks=cfg.tasks,
        extra_dirs=cfg.task_dirs,
        extra_tasks=term_tasks(cfg, "fitness"),
    )


def reference_scores(ctx: RunContext, prep: PreparedInputs) -> Reference:
    """Write the tasks, build the fitness-split harness, and score the inputs."""
    from evomerge.fitness import CompositeFitness, FitnessHarness, write_tasks

    domains = ctx.recipe.fitness.domains
    with ctx.dist.main_process_first():
        task_dir = write_tasks(prep.layout, ctx.out / "tasks", domains=domains)
    cfg = fitness_config(ctx.recipe)
    suite = fitness_suite(ctx.recipe, task_dir)
    counts = suite.doc_counts()
    sample = own_sample(ctx.recipe, counts)
    harness = FitnessHarness.build(
        suite,
        prep.tokenizer,
        prep.device,
        config=cfg,
        model_config=prep.model_config,
        samples=sample,
    )
    measurements = [harness.measure(m) for m in prep.each_input_model()]
    composite, shared = _normalisation(ctx, CompositeFitness, cfg, measurements)
    for m in measurements:
        apply_shared_cost(m, shared)
    scores = [composite.score(m) for m in measurements]
    scored = measurements[0].n_items  # what was scored, not what was asked for
    documents = {
        name: {"scored": scored[name], "of": n, **({"drawn": sample[name]} if sample else {})}
        for name, n in counts.items()
    }
    return Reference(task_dir, harness, composite, scores, shared, sample, documents)


def own_sample(recipe: Recipe, counts: dict[str, int]) -> dict[str, list[int]] | None:
    """The run's own fitness documents per task (``fitness.sample``); None: lm-eval's
    first ``max_items`` of each (or every document).

    Seeded by the run's seed, not fixed as the report's draw is: seeds of one recipe then
    average over which documents selection starts from, as well as over the search, while
    the report still compares them all on the same test documents."""
    if recipe.fitness.sample == "first":
        return None
    from evomerge.run.documents import drawn_sample

    return drawn_sample(counts, recipe.fitness.max_items, "fitness", recipe.evolution.seed)


def _normalisation(
    ctx: RunContext, composite_cls: Any, cfg: Any, measurements: Sequence[Any]
) -> tuple[Any, dict[str, Any]]:
    """The composite's reference and the shared cost: measured now, or on resume the run's own."""
    ref_file = ctx.out / ".checkpoint" / "reference.json"
    if ctx.resume and ref_file.exists():
        saved = json.loads(ref_file.read_text())
        return composite_cls(cfg, saved["reference"]), saved["shared_cost"]
    composite = composite_cls.from_inputs(cfg, measurements)
    payload = {"reference": composite.reference, "shared_cost": shared_cost(measurements)}
    payload = broadcast(payload)  # every process uses the main process's numbers
    if ctx.is_main:
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(ref_file, json.dumps(payload).encode())
    return composite_cls(cfg, payload["reference"]), payload["shared_cost"]
