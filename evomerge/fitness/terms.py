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
from functools import lru_cache

from evomerge.fitness.measurements import Measurements


class UnknownFitnessTermError(KeyError):
    """A weight names a term no plugin registers."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


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


@lru_cache(maxsize=1)
def registered_fitness_terms() -> dict[str, FitnessTerm]:
    """Every term registered by a plugin, by name; a name registered twice is an error."""
    from evomerge.plugins import get_plugin_manager

    found: dict[str, FitnessTerm] = {}
    owners: dict[str, str] = {}
    for impl in get_plugin_manager().hook.evomerge_register_fitness_terms.get_hookimpls():
        terms: list[FitnessTerm] = impl.function() or []  # type: ignore[assignment]
        for term in terms:
            name = term.name()
            if name in found:
                raise ValueError(
                    f"fitness term {name!r} is registered by both {owners[name]!r} and {impl.plugin_name!r}"
                )
            found[name] = term
            owners[name] = impl.plugin_name
    return found


def get_fitness_term(name: str) -> FitnessTerm:
    """The term registered as ``name``, or a clear error listing those that exist."""
    terms = registered_fitness_terms()
    if name not in terms:
        known = ", ".join(sorted(terms)) or "none"
        raise UnknownFitnessTermError(
            f"no plugin registers fitness term {name!r}; registered: {known}"
        )
    return terms[name]
