"""One evolution run, as stages with one job each: prepare → reference → evolve → report.

``Run(recipe).execute()`` (:mod:`evomerge.run.runner`) is what ``evomerge recipe
run`` calls; the stages are importable on their own for tests and benchmarks.
"""

from __future__ import annotations

from evomerge.run.context import (
    EXIT_BAD_INPUT,
    EXIT_BELOW_TARGET,
    EXIT_CRASH,
    EXIT_INTERRUPTED,
    EXIT_PASS,
    EXIT_TERMINATED,
    RESIDENT_LIMIT,
    RunOutcome,
    recipe_hash,
)
from evomerge.run.prepare import resolve_inputs
from evomerge.run.runner import Run

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_BELOW_TARGET",
    "EXIT_CRASH",
    "EXIT_INTERRUPTED",
    "EXIT_PASS",
    "EXIT_TERMINATED",
    "RESIDENT_LIMIT",
    "Run",
    "RunOutcome",
    "recipe_hash",
    "resolve_inputs",
]
