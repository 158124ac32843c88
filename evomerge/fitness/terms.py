"""Fitness terms: named inputs of the composite fitness, contributed by plugins.

A term turns :class:`Measurements` into one raw number and says whether higher
is better; its *goodness* is the raw value (higher is better) or its inverse
(lower is better), which is what the composite weighs. The built-in terms
(``perplexity``, ``accuracy``, ``speed``, ``memory``) live in
``evomerge.fitness.builtin_terms`` and are registered through the
``evomerge_register_fitness_terms`` hook exactly like a third-party term.
"""

from __future__ import annotations

import abc
import math

from evomerge.fitness.measurements import Measurements
from evomerge.registry import Registry, UnknownNameError


class UnknownFitnessTermError(UnknownNameError):
    """A weight names a term no plugin registers."""


class FitnessTerm(abc.ABC):
    """One input of the composite fitness (mergekit-style: an object with ``name()``)."""

    #: Whether a larger raw value is better (accuracy) or worse (perplexity, latency).
    higher_is_better: bool = True
    #: Cost terms (speed, memory) are equal for every candidate of one architecture up to
    #: measurement noise; differences below ``cost_tolerance`` are ignored for them.
    is_cost: bool = False
    #: Unit of the raw value, for tables.
    unit: str = ""

    @abc.abstractmethod
    def name(self) -> str:
        """The key used in ``FitnessConfig.weights`` and in every score."""

    @abc.abstractmethod
    def raw(self, measurements: Measurements) -> float:
        """The raw value of this term for one model's measurements."""

    def goodness(self, raw: float) -> float:
        """Higher-is-better form: ``raw`` or ``1/raw``."""
        if self.higher_is_better:
            return raw
        if raw <= 0 or math.isnan(raw):
            raise ValueError(f"fitness term {self.name()!r}: raw value {raw} cannot be inverted")
        return 1.0 / raw

    def description(self) -> str:
        """First line of the class docstring."""
        return (type(self).__doc__ or "").strip().splitlines()[0]


class TaskMetricTerm(FitnessTerm):
    """One lm-eval metric of one measured task, as a fitness term (e.g. a plugin's own task)."""

    def __init__(self, name: str, task: str, metric: str, *, higher_is_better: bool = True) -> None:
        self._name = name
        self.task = task
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.unit = metric

    def name(self) -> str:
        return self._name

    def raw(self, measurements: Measurements) -> float:
        try:
            return float(measurements.metric(self.task, self.metric))
        except KeyError as exc:
            raise KeyError(f"fitness term {self._name!r}: {exc.args[0]}") from None

    def description(self) -> str:
        return f"{self.metric} of lm-eval task {self.task}"


FITNESS_TERMS: Registry[FitnessTerm] = Registry(
    "fitness term",
    "evomerge_register_fitness_terms",
    FitnessTerm,
    key=lambda term: term.name(),
    error=UnknownFitnessTermError,
)


def registered_fitness_terms() -> dict[str, FitnessTerm]:
    """Every term registered by a plugin, by name; a name registered twice is an error."""
    return {name: entry.item for name, entry in FITNESS_TERMS.entries().items()}


def get_fitness_term(name: str) -> FitnessTerm:
    """The term registered as ``name``, or a clear error listing those that exist."""
    return FITNESS_TERMS.get(name)
