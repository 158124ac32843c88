"""Fitness: lm-eval tasks over local data, a fast in-process harness, the composite score.

Typical use in an evolution run::

    suite = suite_for(write_tasks(layout, run_dir / "tasks"), split="fitness")
    harness = FitnessHarness.build(suite, tokenizer, config=cfg, model_config=m1.config)
    fitness = CompositeFitness.from_inputs(cfg, [harness.measure(m) for m in (m1, m2, m3)])
    score = fitness.score(harness.measure(candidate))   # score.total, score.terms, score.raw

Submodules import lm-eval lazily; ``evomerge.fitness.lm_eval_adapter`` registers
the ``evomerge`` model type with lm-eval when imported.
"""

from __future__ import annotations

from evomerge.fitness.composite import CompositeFitness, FitnessScore
from evomerge.fitness.config import DEFAULT_WEIGHTS, FitnessConfig
from evomerge.fitness.harness import FitnessHarness
from evomerge.fitness.measurements import Measurements
from evomerge.fitness.tasks import TaskSuite, suite_for, write_tasks
from evomerge.fitness.terms import (
    FitnessTerm,
    TaskMetricTerm,
    UnknownFitnessTermError,
    get_fitness_term,
    registered_fitness_terms,
)

__all__ = [
    "DEFAULT_WEIGHTS",
    "CompositeFitness",
    "FitnessConfig",
    "FitnessHarness",
    "FitnessScore",
    "FitnessTerm",
    "Measurements",
    "TaskMetricTerm",
    "TaskSuite",
    "UnknownFitnessTermError",
    "get_fitness_term",
    "registered_fitness_terms",
    "suite_for",
    "write_tasks",
]
