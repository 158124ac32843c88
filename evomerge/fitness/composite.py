"""The composite fitness ``Σ_t w_t · term_t`` over registered fitness terms.

For each term ``t`` with weight ``w_t`` (``FitnessConfig.weights``), let
``g_t(m)`` be its goodness on model ``m`` (``acc``, ``1/ppl``, ``1/time``,
``1/mem``, ...). Then

- ``normalize: none``:   ``term_t(m) = g_t(m)`` — the seed's raw formula.
- ``normalize: inputs``: ``term_t(m) = g_t(m) / r_t`` with ``r_t`` the mean of
  ``g_t`` over the input models (:meth:`CompositeFitness.from_inputs`), so the
  inputs' terms average exactly 1.0 and the inputs' totals average ``Σ w_t``.

Cost terms (speed, memory) only differ between candidates of one architecture
by measurement noise: when a reference exists, a cost term within
``cost_tolerance`` of it (``|g/r - 1| < tol``) is set to the reference (1.0
normalised), so noise never moves a ranking. ``cost_tolerance: auto`` is
``max(0.05, 3·noise)`` with ``noise`` the larger of the inputs' relative spread
of median latencies (same architecture: their differences are noise) and the
median relative IQR of the timed repeats within one measurement.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from evomerge.fitness.config import FitnessConfig
from evomerge.fitness.cost import noise_stats
from evomerge.fitness.measurements import Measurements
from evomerge.fitness.terms import FitnessTerm, get_fitness_term

#: Smallest automatic cost tolerance (5 %): below it, timing differences never matter.
AUTO_TOLERANCE_FLOOR = 0.05


class NormalisationError(ValueError):
    """The inputs' mean goodness of a term is not positive: nothing to normalise by (e.g.
    every input wrong on every item of a small sample)."""


def timing_noise(inputs: Sequence[Measurements]) -> float:
    """Relative latency noise seen on the inputs (0 when they carry no timings)."""
    medians = [m.time_per_1k_tokens for m in inputs if m.time_samples]
    spread = 0.0
    if len(medians) >= 2:
        spread = statistics.pstdev(medians) / statistics.mean(medians)
    within = [noise_stats(m.time_samples)["rel_iqr"] for m in inputs if len(m.time_samples) >= 2]
    return max(spread, statistics.median(within) if within else 0.0)


@dataclass(frozen=True)
class FitnessScore:
    """``total`` and its parts: ``terms`` (unweighted), ``weighted`` and ``raw`` (per term name)."""

    total: float
    terms: dict[str, float]
    weighted: dict[str, float]
    raw: dict[str, float]
    normalize: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CompositeFitness:
    """Scores :class:`Measurements` with the config's weights and (optional) input reference."""

    def __init__(
        self,
        config: FitnessConfig,
        reference: dict[str, float] | None = None,
        *,
        cost_tolerance: float | None = None,
    ) -> None:
        self.config = config
        if cost_tolerance is None:
            cost_tolerance = (
                AUTO_TOLERANCE_FLOOR if config.cost_tolerance == "auto" else config.cost_tolerance
            )
        #: The tolerance in use (``auto`` resolved by :meth:`from_inputs`).
        self.cost_tolerance = float(cost_tolerance)
        self.terms: list[tuple[FitnessTerm, float]] = [
            (get_fitness_term(name, config), weight)
            for name, weight in config.weights.items()
            if weight
        ]
        self.reference = reference
        if config.normalize == "inputs" and reference is None:
            raise ValueError(
                "normalize: inputs needs the input models' measurements: use CompositeFitness.from_inputs"
            )

    @classmethod
    def from_inputs(cls, config: FitnessConfig, inputs: Sequence[Measurements]) -> CompositeFitness:
        """Reference ``r_t`` = mean goodness of each term over the input models."""
        if not inputs:
            raise ValueError("from_inputs needs at least one input model's measurements")
        reference: dict[str, float] = {}
        for term, _ in cls(config.model_copy(update={"normalize": "none"})).terms:
            mean = sum(term.goodness(term.raw(m)) for m in inputs) / len(inputs)
            if not mean > 0:
                raise NormalisationError(
                    f"fitness term {term.name()!r}: the inputs' mean goodness is {mean}, cannot "
                    "normalise by it; use normalize: none or give the term weight 0"
                )
            reference[term.name()] = mean
        tolerance = None
        if config.cost_tolerance == "auto":
            tolerance = max(AUTO_TOLERANCE_FLOOR, 3.0 * timing_noise(inputs))
        return cls(config, reference, cost_tolerance=tolerance)

    def score(self, measurements: Measurements) -> FitnessScore:
        """The composite fitness of one model's measurements."""
        terms: dict[str, float] = {}
        weighted: dict[str, float] = {}
        raw: dict[str, float] = {}
        tol = self.cost_tolerance
        for term, weight in self.terms:
            name = term.name()
            raw[name] = term.raw(measurements)
            good = term.goodness(raw[name])
            if self.reference is not None:
                ref = self.reference[name]
                if term.is_cost and abs(good / ref - 1.0) < tol:
                    good = ref
                value = good / ref if self.config.normalize == "inputs" else good
            else:
                value = good
            terms[name] = value
            weighted[name] = weight * value
        return FitnessScore(
            total=sum(weighted.values()),
            terms=terms,
            weighted=weighted,
            raw=raw,
            normalize=self.config.normalize,
        )
