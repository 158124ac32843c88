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

from evomerge.fitness.config import FitnessConfig, TaskMetric
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
    """One lm-eval metric of one measured task, as a fitness term (e.g. a plugin's own task).

    ``test_task``: the task of held-out documents that the final report scores instead
    (never used for selection); a run refuses a weighted term without one, since the
    report could only score it on documents the search selected on.
    """

    def __init__(
        self,
        name: str,
        task: str,
        metric: str,
        *,
        test_task: str | None = None,
        higher_is_better: bool = True,
    ) -> None:
        self._name = name
        self.task = task
        self.test_task = test_task
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.unit = metric

    def name(self) -> str:
        return self._name

    def task_for(self, split: str) -> str | None:
        """The task this term reads on ``split`` (``test``: its test task, maybe None)."""
        return self.test_task if split == "test" else self.task

    def raw(self, measurements: Measurements) -> float:
        # The held-out harness measures the test task instead; both never meet in one suite.
        task = self.test_task if self.test_task in measurements.tasks else self.task
        try:
            return float(measurements.metric(task, self.metric))
        except KeyError as exc:
            raise KeyError(f"fitness term {self._name!r}: {exc.args[0]}") from None

    def description(self) -> str:
        held_out = f" (held out: {self.test_task})" if self.test_task else ""
        return f"{self.metric} of lm-eval task {self.task}{held_out}"


class RecipeTaskMetricTerm(TaskMetricTerm):
    """A recipe's ``fitness.task_metrics`` entry: its task on the fitness split, its test task held out."""

    def __init__(self, spec: TaskMetric) -> None:
        higher = spec.higher_is_better
        if higher is None:
            from lm_eval.api.registry import is_higher_better

            higher = is_higher_better(spec.metric)
        if higher is None:
            raise ValueError(
                f"task_metrics {spec.name!r}: lm-eval does not know whether a higher "
                f"{spec.metric!r} is better; set higher_is_better"
            )
        super().__init__(
            spec.name, spec.task, spec.metric, test_task=spec.test_task, higher_is_better=higher
        )


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


def get_fitness_term(name: str, config: FitnessConfig | None = None) -> FitnessTerm:
    """The term ``name``: the config's own task metric of that name, else a plugin's.

    Unknown names are one clear error listing those that exist.
    """
    for spec in config.task_metrics if config is not None else ():
        if spec.name == name:
            return RecipeTaskMetricTerm(spec)
    try:
        return FITNESS_TERMS.get(name)
    except UnknownFitnessTermError as exc:
        if config is None or not config.task_metrics:
            raise
        own = ", ".join(m.name for m in config.task_metrics)
        raise UnknownFitnessTermError(f"{exc.args[0]}; task_metrics: {own}") from None


def own_term_tasks(config: FitnessConfig) -> set[str]:
    """Every task a task-metric term reads, on either split: kept out of the pooled
    perplexity and accuracy, so a task counts once, as its own term."""
    return {*term_tasks(config, "fitness"), *term_tasks(config, "test")}


def term_tasks(config: FitnessConfig, split: str) -> list[str]:
    """The tasks the suite of ``split`` must measure for the config's task-metric terms:
    the recipe's ``task_metrics`` and the weighted terms plugins register alike."""
    tasks = config.metric_tasks(split)
    for name, weight in config.weights.items():
        term = get_fitness_term(name, config) if weight > 0 else None
        if isinstance(term, TaskMetricTerm) and (task := term.task_for(split)) is not None:
            tasks.append(task)
    return list(dict.fromkeys(tasks))
