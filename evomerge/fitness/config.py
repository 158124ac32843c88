"""``FitnessConfig``: what the composite fitness measures and how it weighs it (a recipe section)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from evomerge.data.layout import DOMAINS


def _not_bool(value: Any) -> Any:
    """YAML's ``true`` is no number (pydantic would read it as 1)."""
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return value


#: Recipe numbers. pydantic's usual coercion stays (``8.0e+9`` as an int, numpy numbers, and
#: ``1e-3``, which PyYAML reads as a string), but a boolean is refused and floats are finite.
Int = Annotated[int, BeforeValidator(_not_bool)]
FiniteFloat = Annotated[float, BeforeValidator(_not_bool), AllowInfNan(False)]

#: The seed's weights: 0.4 perplexity, 0.3 accuracy, 0.2 speed, 0.1 memory.
DEFAULT_WEIGHTS: dict[str, float] = {
    "perplexity": 0.4,
    "accuracy": 0.3,
    "speed": 0.2,
    "memory": 0.1,
}


class TaskMetric(BaseModel):
    """One metric of the user's own lm-eval task as a weighted fitness term.

    Selection scores ``task`` (documents drawn from it for minibatches and the
    validation sample); the held-out report scores ``test_task``, a second task
    over documents the search never saw, so the report stays honest for the
    user's term exactly as for the built-in ones (docs/fitness.md).
    """

    model_config = ConfigDict(extra="forbid")

    #: The term's name: its key in ``weights`` and in every score table.
    name: str
    #: lm-eval task scored during the search (from ``task_dirs``).
    task: str
    #: lm-eval task of held-out documents for the final report (never used for selection).
    test_task: str
    #: The lm-eval metric (as in the task's ``metric_list``, e.g. ``acc``, ``acc_norm``).
    metric: str = "acc"
    #: null: lm-eval's own rule for the metric (its ``higher_is_better`` registry).
    higher_is_better: bool | None = None

    @model_validator(mode="after")
    def _distinct_tasks(self) -> TaskMetric:
        if self.task == self.test_task:
            raise ValueError(
                f"task_metrics {self.name!r}: task and test_task are both {self.task!r}; "
                "the held-out report needs documents the search never scored"
            )
        return self


class FitnessConfig(BaseModel):
    """Composite fitness ``Σ weight·term`` and the measurements behind it.

    ``normalize: inputs`` (default) divides each term's goodness (1/ppl, acc,
    1/time, 1/mem, or a plugin term's) by its mean over the three input models,
    so each input scores about 1.0 per term; ``none`` is the seed's raw form.
    """

    model_config = ConfigDict(extra="forbid")

    weights: dict[str, FiniteFloat] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    normalize: Literal["inputs", "none"] = "inputs"
    domains: list[str] = Field(default_factory=lambda: list(DOMAINS))
    split: Literal["fitness", "test"] = "fitness"
    #: Task names; None = the generated perplexity and cloze task of every domain for `split`.
    tasks: list[str] | None = Field(None, min_length=1)
    #: Extra lm-eval task directories (user tasks, e.g. for a plugin term).
    task_dirs: list[Path] = Field(default_factory=list)
    #: The user's own task metrics as fitness terms (name them in ``weights``).
    task_metrics: list[TaskMetric] = Field(default_factory=list)
    #: Documents per task, the evolution's subset (the run's own sample: the first N, lm-eval's
    #: `limit`, or N at random, `sample`; its minibatches draw N); also the held-out report's
    #: count when report_max_items is null.
    max_items: Int | None = 200
    ppl_metric: Literal["word_perplexity", "byte_perplexity"] = "word_perplexity"
    #: Context length for rolling windows and truncation; None = the model's (as lm-eval).
    max_length: Int | None = Field(None, ge=2)
    #: Input tokens per forward batch (rows x padded length). "auto": 8192 on the CPU; on a
    #: GPU sized to its memory from one measured batch (docs/fitness.md "Eval batches").
    batch_tokens: Int | Literal["auto"] = "auto"
    #: Multiple-choice contexts forwarded once, choices from the model's cache: "auto" for
    #: transformers KV caches; "on" also for a model's own exact cache (TRM x Titans-MAG:
    #: slower on a 2-thread CPU, faster FLOP-bound); "off": whole rows always. See
    #: docs/fitness.md "Measurements".
    shared_contexts: Literal["auto", "on", "off"] = "auto"
    #: "auto": bf16 autocast on CUDA devices that support it, fp32 elsewhere.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    time_batch_size: Int = 4
    time_seq_len: Int = 128
    time_warmup: Int = Field(1, ge=0)
    time_repeats: Int = 5
    #: Relative speed/memory differences from the inputs' mean below this count as none;
    #: "auto": 3x the timing noise seen on the inputs, at least 0.05 (see docs/fitness.md).
    cost_tolerance: FiniteFloat | Literal["auto"] = "auto"
    calibration_sequences: Int = 8
    calibration_seq_len: Int = 128

    @field_validator("weights")
    @classmethod
    def _weights_finite(cls, value: dict[str, float]) -> dict[str, float]:
        for name, weight in value.items():
            if not weight >= 0:
                raise ValueError(f"weights.{name} must be >= 0, got {weight}")
        if not any(value.values()):
            raise ValueError("weights: at least one term needs a positive weight")
        return value

    @model_validator(mode="after")
    def _check_positive(self) -> FitnessConfig:
        for name in (
            *(("batch_tokens",) if self.batch_tokens != "auto" else ()),
            "time_batch_size",
            "time_seq_len",
            "time_repeats",
            "calibration_sequences",
            "calibration_seq_len",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_items is not None and self.max_items < 1:
            raise ValueError(f"max_items must be >= 1 or null, got {self.max_items}")
        if self.cost_tolerance != "auto" and not 0 <= self.cost_tolerance < 1:
            raise ValueError(f"cost_tolerance must be in [0, 1), got {self.cost_tolerance}")
        names = [m.name for m in self.task_metrics]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"task_metrics: name {twice[0]!r} is used twice")
        return self

    def metric_tasks(self, split: str) -> list[str]:
        """The user's task-metric tasks scored on ``split`` (``test``: their test tasks)."""
        key = "test_task" if split == "test" else "task"
        return list(dict.fromkeys(getattr(m, key) for m in self.task_metrics))

    def to_yaml(self) -> str:
        """The config as YAML (paths as strings), loadable with :meth:`from_yaml`."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> FitnessConfig:
        """Parse YAML text written by :meth:`to_yaml` (or by hand)."""
        data: Any = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError("fitness config must be a YAML mapping")
        return cls.model_validate(data)
