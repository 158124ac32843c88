"""The held-out bootstrap (evomerge/fitness/bootstrap.py) on hand-made per-document values:
what its intervals, leads, ties and skipped resamples mean. The real-model check (its
figures on the measured documents equal the report's) is in tests/test_recipe_run.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from evomerge.fitness.bootstrap import paired_bootstrap
from evomerge.fitness.composite import NormalisationError
from evomerge.fitness.measurements import Measurements

KEY = ("acc", "none")


def _model(correct: list[float]) -> Measurements:
    return Measurements(tasks={}, per_doc={"t": {KEY: correct}})


def _aggregate(per_doc: Mapping[str, Any]) -> Measurements:
    values = per_doc["t"][KEY]
    return Measurements(tasks={}, accuracy=sum(values) / len(values), per_doc=dict(per_doc))


def _improvements(inputs: list[Measurements], models: dict[str, Measurements]) -> dict[str, float]:
    """Accuracy over the inputs' mean accuracy, as the report normalises a term."""
    mean = sum(m.accuracy for m in inputs) / len(inputs)
    if not mean > 0:
        raise NormalisationError("no input right on this resample")
    figures = {f"input_{i + 1}": m.accuracy / mean - 1 for i, m in enumerate(inputs)}
    return figures | {name: m.accuracy / mean - 1 for name, m in models.items()}


def _run(models: dict[str, Measurements], inputs: list[Measurements], **kw: Any) -> Any:
    return paired_bootstrap(
        inputs,
        models,
        aggregate=_aggregate,
        improvements=_improvements,
        champion="champion",
        resamples=400,
        **kw,
    )


def test_a_champion_right_wherever_the_baseline_is_leads_in_every_resample() -> None:
    inputs = [_model([1, 0] * 20), _model([0, 1] * 20), _model([1, 1, 0, 0] * 10)]
    baseline = [1.0, 0.0, 0.0, 1.0] * 10
    champion = [1.0, 1.0, 0.0, 1.0] * 10  # the baseline's items, and more
    got = _run({"champion": _model(champion), "soup": _model(baseline)}, inputs)
    lead = got["champion_lead"]["soup"]
    assert lead["share_ahead"] == 1.0 and lead["share_tied"] == 0.0 and lead["interval"][0] > 0
    lo, hi = got["test_improvement"]["champion"]
    assert lo < 0.5 < hi  # 30/40 right over the inputs' 20/40: +50 %
    assert got["resamples"] == 400 and got["skipped"] == 0
    assert got == _run({"champion": _model(champion), "soup": _model(baseline)}, inputs)  # seeded
    assert got != _run({"champion": _model(champion), "soup": _model(baseline)}, inputs, seed=1)


def test_the_same_model_twice_is_a_tie_not_a_loss() -> None:
    inputs = [_model([1, 0] * 20), _model([0, 1] * 20), _model([1, 1, 0, 0] * 10)]
    same = [1.0, 1.0, 0.0, 1.0] * 10
    got = _run({"champion": _model(same), "best_gen0": _model(list(same))}, inputs)
    lead = got["champion_lead"]["best_gen0"]
    assert lead == {"interval": [0.0, 0.0], "share_ahead": 0.0, "share_tied": 1.0}
    assert got["loop_gain_test"] == [0.0, 0.0]


def test_resamples_that_cannot_normalise_are_skipped_and_counted() -> None:
    """One document in ten is the only one any input gets right: resamples that miss it
    have nothing to divide by."""
    inputs = [_model([1.0] + [0.0] * 9) for _ in range(3)]
    got = _run({"champion": _model([1.0] * 10), "soup": _model([1.0] + [0.0] * 9)}, inputs)
    assert 0 < got["skipped"] < 400 and got["resamples"] + got["skipped"] == 400
    never = [_model([0.0] * 10) for _ in range(3)]
    assert _run({"champion": _model([1.0] * 10), "soup": _model([0.0] * 10)}, never) is None


def test_the_report_draws_a_spread_sample_the_same_for_every_run() -> None:
    """Not the first N (one stretch of a file in source order): N drawn at random with a
    fixed seed, so seeds and recipes are judged on the same documents."""
    from evomerge.run.report import report_sample

    counts = {"ppl_dialogue": 718, "ppl_technical": 139, "cloze_small": 40}
    picks = report_sample(counts, 64)
    assert picks is not None and picks == report_sample(dict(counts), 64)
    for name in ("ppl_dialogue", "ppl_technical"):
        chosen = picks[name]
        assert len(chosen) == len(set(chosen)) == 64 and chosen == sorted(chosen)
        assert chosen != list(range(64)) and max(chosen) > counts[name] // 2
        assert all(0 <= i < counts[name] for i in chosen)
    assert picks["cloze_small"] == list(range(40))  # fewer than N: every one
    # pinned: every run, seed and process draws these (benchmark rows compare on them),
    # and each task its own draw
    assert report_sample({"evomerge_ppl_technical_test": 139}, 5) == {
        "evomerge_ppl_technical_test": [3, 27, 42, 59, 112]
    }
    assert report_sample({"t": 139}, 5) == {"t": [50, 71, 78, 90, 102]}
    assert report_sample(counts, None) is None and report_sample(counts, 718) is None


def test_a_null_report_count_is_the_searchs_own() -> None:
    """report_max_items: null scores as many documents per task as the search selected on
    (fitness.max_items), keeping the pooled terms' task mix; a count of its own wins."""
    from evomerge.evolution.recipe import Recipe
    from evomerge.run.reference import fitness_config

    def recipe(**fitness: Any) -> Recipe:
        return Recipe.model_validate(
            {"inputs": {"models": ["a", "b", "c"]}, "fitness": fitness, "output": "out"}
        )

    assert fitness_config(recipe(max_items=16), report=True).max_items == 16
    assert fitness_config(recipe(max_items=16, report_max_items=64), report=True).max_items == 64
    assert fitness_config(recipe(max_items=16, report_max_items=64)).max_items == 16
    assert fitness_config(recipe(max_items=None), report=True).max_items is None
