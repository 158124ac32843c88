"""How sure the held-out report can be: a paired bootstrap over the test documents.

The report's figures (the champion's improvement over the inputs' mean, the
baselines', the loop gain) come from one finite sample of test documents; a gain
of a point or two can be that sample's luck. Resampling the documents of each task
with replacement, *the same documents for every model* (paired, so what the
models share cancels), and recomputing every figure as the report does —
aggregates with lm-eval's own functions, the composite normalised by the inputs'
resampled means — gives each figure a percentile interval and the share of
resamples in which the champion stays ahead of each baseline. Written by hand:
the figures are a composite of aggregates, not a statistic scipy's ``bootstrap``
resamples from one array, and the resampling is a few lines.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from evomerge.fitness.composite import CompositeFitness, NormalisationError
from evomerge.fitness.config import FitnessConfig
from evomerge.fitness.measurements import Measurements

#: Resamples per report: the 2.5 % / 97.5 % percentiles of 1,000 move by a few tenths
#: of a point from seed to seed, well under the gaps they are read against.
RESAMPLES = 1000
LEVEL = 0.95


def improvements_over_inputs(
    config: FitnessConfig,
    inputs: Sequence[Measurements],
    models: Mapping[str, Measurements],
    *,
    prepare: Callable[[Measurements], Measurements] | None = None,
) -> dict[str, float]:
    """Each model's composite improvement over the inputs' mean (the inputs' own as
    ``input_1``...), normalised by these inputs as the run's report normalises by its
    inputs; ``prepare`` (the report's shared cost) is applied to each measurement before
    it is scored. On the measured documents these are the report's figures; on a resample,
    the figures that sample of documents would have given."""
    fitness = CompositeFitness.from_inputs(config, inputs)
    ready = prepare or (lambda m: m)
    totals = {f"input_{i + 1}": fitness.score(ready(m)).total for i, m in enumerate(inputs)}
    mean = sum(totals.values()) / len(totals)
    totals.update((name, fitness.score(ready(m)).total) for name, m in models.items())
    return {name: (total - mean) / abs(mean) for name, total in totals.items()}


def resample(m: Measurements, picks: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """``m``'s per-document values at the picked documents (``{task: indices}``)."""
    return {
        task: {key: [values[i] for i in picks[task]] for key, values in raw.items()}
        for task, raw in m.per_doc.items()
    }


def resampled(
    m: Measurements,
    picks: Mapping[str, Sequence[int]],
    aggregate: Callable[[Mapping[str, Any]], Measurements],
) -> Measurements:
    """``m`` over the picked documents: aggregates recomputed, its cost figures kept (they
    are measured once per model, not per document)."""
    out = aggregate(resample(m, picks))
    out.time_per_1k_tokens, out.peak_memory_bytes = m.time_per_1k_tokens, m.peak_memory_bytes
    out.time_samples = list(m.time_samples)
    return out


def _percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default rule)."""
    pos = q * (len(ordered) - 1)
    i = int(pos)
    if i + 1 >= len(ordered):
        return ordered[-1]
    return ordered[i] + (ordered[i + 1] - ordered[i]) * (pos - i)


def _interval(values: list[float], level: float) -> list[float]:
    ordered = sorted(values)
    tail = (1.0 - level) / 2.0
    return [_percentile(ordered, tail), _percentile(ordered, 1.0 - tail)]


def paired_bootstrap(
    inputs: Sequence[Measurements],
    models: Mapping[str, Measurements],
    *,
    aggregate: Callable[[Mapping[str, Any]], Measurements],
    improvements: Callable[[list[Measurements], dict[str, Measurements]], dict[str, float]],
    champion: str,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> dict[str, Any] | None:
    """Percentile intervals of each model's held-out improvement, of the champion's lead
    over each other model, and of the loop gain (the champion over the best of the others;
    None when ``models`` holds the champion alone).

    ``aggregate`` turns resampled per-document values into :class:`Measurements` (the
    harness's own); ``improvements(inputs, models)`` scores a resample as the report does
    and returns each model's improvement over the inputs' mean (inputs too, as
    ``input_1``...). Every task keeps its number of documents. A resample that cannot be
    scored (a term the inputs all score 0 on, which cannot normalise) is skipped and
    counted; None when none could be.
    """
    first = inputs[0].per_doc
    sizes = {task: len(next(iter(raw.values()), [])) for task, raw in first.items()}
    rng = random.Random(seed)
    skipped = 0
    draws: dict[str, list[float]] = {}
    leads: dict[str, list[float]] = {name: [] for name in models if name != champion}
    gains: list[float] = []
    for _ in range(resamples):
        picks = {task: [rng.randrange(n) for _ in range(n)] for task, n in sizes.items()}
        try:
            got = improvements(
                [resampled(m, picks, aggregate) for m in inputs],
                {name: resampled(m, picks, aggregate) for name, m in models.items()},
            )
        except NormalisationError:  # e.g. no input right on a resample: nothing to divide by
            skipped += 1
            continue
        for name, value in got.items():
            draws.setdefault(name, []).append(value)
        for name in leads:
            leads[name].append(got[champion] - got[name])
        if leads:
            gains.append(got[champion] - max(got[name] for name in leads))
    if not draws:
        return None
    return {
        "method": "paired bootstrap over each task's test documents",
        "resamples": len(draws[champion]),
        "skipped": skipped,
        "level": level,
        "seed": seed,
        "test_improvement": {name: _interval(v, level) for name, v in draws.items()},
        "champion_lead": {
            name: {
                "interval": _interval(v, level),
                "share_ahead": sum(x > 0 for x in v) / len(v),
                "share_tied": sum(x == 0 for x in v) / len(v),  # e.g. the champion *is* it
            }
            for name, v in leads.items()
        },
        "loop_gain_test": _interval(gains, level) if gains else None,
    }
