"""Where ``Run`` used to live; it is now the :mod:`evomerge.run` package (one module per stage).

Kept so that ``from evomerge.evolution.run import Run, EXIT_BAD_INPUT`` (the CLI,
benchmarks, user scripts) keeps working.
"""

from __future__ import annotations

from evomerge.run import (
    EXIT_BAD_INPUT,
    EXIT_BELOW_TARGET,
    EXIT_PASS,
    RESIDENT_LIMIT,
    Run,
    RunOutcome,
    recipe_hash,
    resolve_inputs,
)

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_BELOW_TARGET",
    "EXIT_PASS",
    "RESIDENT_LIMIT",
    "Run",
    "RunOutcome",
    "recipe_hash",
    "resolve_inputs",
]
