"""``Measurements``: everything one evaluation of one model produced, before any weighting."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Measurements:
    """Raw results of :meth:`FitnessHarness.measure` for one model.

    ``tasks`` holds every lm-eval metric of every task, keyed like lm-eval's
    results without the ``,none`` filter suffix (``"acc"``, ``"word_perplexity"``;
    other filters keep it: ``"acc,my_filter"``). ``perplexity`` pools the chosen
    perplexity metric over all rolling-loglikelihood tasks (``exp(-Σ ll / Σ
    words)``, i.e. weighted by each document's words), ``accuracy`` is the mean
    ``acc`` over all multiple-choice items.
    """

    tasks: dict[str, dict[str, float]]
    perplexity: float = math.nan
    accuracy: float = math.nan
    #: Median forward latency, seconds per 1,000 tokens (nan when cost was not measured).
    time_per_1k_tokens: float = math.nan
    #: Peak inference memory in bytes, weights included (0 when not measured).
    peak_memory_bytes: int = 0
    n_items: dict[str, int] = field(default_factory=dict)
    time_samples: list[float] = field(default_factory=list)
    #: Wall-clock seconds the whole measurement took.
    seconds: float = 0.0
    #: Each task's per-document values, ``{task: {(metric, filter): [one per document]}}``,
    #: in document order, before aggregation: what the held-out report resamples
    #: (evomerge/fitness/bootstrap.py). Not in ``to_dict``: logs keep the aggregates.
    per_doc: dict[str, dict[tuple[str, str], list[Any]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def metric(self, task: str, metric: str) -> float:
        """One task metric, or a clear error naming what exists."""
        if task not in self.tasks:
            raise KeyError(
                f"task {task!r} was not measured; measured: {', '.join(sorted(self.tasks))}"
            )
        values = self.tasks[task]
        if metric not in values:
            raise KeyError(
                f"task {task!r} has no metric {metric!r}; it has {', '.join(sorted(values))}"
            )
        return values[metric]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (floats, ints, strings only)."""
        out = asdict(self)
        out.pop("per_doc")
        return out
