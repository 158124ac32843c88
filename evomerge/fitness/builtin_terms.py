"""The seed's four fitness terms, registered as a plugin (listed in ``DEFAULT_PLUGINS``)."""

from __future__ import annotations

from evomerge import hookimpl
from evomerge.fitness.measurements import Measurements
from evomerge.fitness.terms import FitnessTerm

GIB = float(2**30)


class PerplexityTerm(FitnessTerm):
    """Perplexity on held-out text (pooled over the perplexity tasks; lower is better)."""

    higher_is_better = False
    unit = "ppl"

    def name(self) -> str:
        return "perplexity"

    def raw(self, measurements: Measurements) -> float:
        return measurements.perplexity


class AccuracyTerm(FitnessTerm):
    """Multiple-choice accuracy: argmax of summed choice log-likelihood (lm-eval's acc)."""

    unit = "acc"

    def name(self) -> str:
        return "accuracy"

    def raw(self, measurements: Measurements) -> float:
        return measurements.accuracy


class SpeedTerm(FitnessTerm):
    """Forward latency per 1,000 tokens on a fixed batch, median of repeats (lower is better)."""

    higher_is_better = False
    is_cost = True
    unit = "s/1k tok"

    def name(self) -> str:
        return "speed"

    def raw(self, measurements: Measurements) -> float:
        return measurements.time_per_1k_tokens


class MemoryTerm(FitnessTerm):
    """Peak inference memory of one forward of the fixed batch, weights included (lower is better)."""

    higher_is_better = False
    is_cost = True
    unit = "GiB"

    def name(self) -> str:
        return "memory"

    def raw(self, measurements: Measurements) -> float:
        return measurements.peak_memory_bytes / GIB


@hookimpl
def evomerge_register_fitness_terms() -> list[FitnessTerm]:
    """perplexity, accuracy, speed, memory."""
    return [PerplexityTerm(), AccuracyTerm(), SpeedTerm(), MemoryTerm()]
