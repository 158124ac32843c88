"""What a merge method is: a mergekit-style object with a name, a stage, typed parameters and a kernel.

Three kernel shapes cover the six techniques and leave room for third-party ones
(a plain function becomes one of the first two with ``@evomerge.merge_method``,
:mod:`evomerge.merge.decorator`):

* :class:`TensorMergeMethod` merges one tensor from N inputs (linear, slerp, dfs);
* :class:`TaskArithmeticMethod` merges N task vectors into one (dare, ties); the
  engine owns ``τ = M − reference``, ``λ`` and the ``stage1`` / ``ancestor``
  references, so every task-arithmetic method gets both for free;
* :class:`ModelMergeMethod` sees whole models at once and may score a model
  (frankenmerge's calibration-driven layer choice).

Methods never import mergekit: :mod:`evomerge.merge.mergekit_bridge` wraps them
into mergekit methods on demand, so the in-memory hot path stays light.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from evomerge.merge.conditional import REQUIRED, validate_setting
from evomerge.merge.conditional import MergeConfigError as MergeConfigError  # re-export
from evomerge.merge.conditional import equal_weights as equal_weights  # re-export

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Stage = Literal["interpolation", "task_arithmetic", "selection", "any"]
STAGES: tuple[str, ...] = ("interpolation", "task_arithmetic", "selection", "any")


_MISSING = object()


@dataclass(frozen=True)
class Range:
    """Closed bounds of a numeric parameter; None leaves that side open.

    Written in a decorated method's signature as
    ``density: Annotated[float, Range(0, 1)] = 0.1``.
    """

    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class MethodParameter:
    """One typed parameter of a merge method (mergekit's ``ParameterSpec``, minus the scopes we don't use).

    ``per_input`` parameters are written under each model's ``parameters:`` in
    the YAML (``weight``); the others under the stage's ``parameters:``.
    ``minimum`` / ``maximum`` bound numeric values (inclusive), checked by
    :meth:`validate`, so a recipe with an out-of-range value fails when it loads.
    """

    name: str
    type: type
    default: Any = _MISSING
    description: str = ""
    per_input: bool = False
    choices: tuple[str, ...] | None = None
    optional: bool = False  # None is an accepted value
    minimum: float | None = None
    maximum: float | None = None

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def validate(self, value: Any, *, method: str) -> Any:
        """Coerce ``value`` to the declared type or raise one clear line.

        A per-tensor (conditional) value is validated entry by entry and returned
        as a list; see :mod:`evomerge.merge.conditional`.
        """
        if isinstance(value, (list, tuple, Mapping)):
            return validate_setting(
                value,
                lambda v: self.validate(v, method=method),
                where=f"merge method {method!r} parameter {self.name!r}",
                default=REQUIRED if self.required else self.default,
            )
        if value is None and self.optional:
            return None
        where = f"merge method {method!r} parameter {self.name!r}"
        try:
            if self.type is bool:
                if not isinstance(value, bool):
                    raise TypeError
                coerced: Any = value
            elif self.type is int:
                if isinstance(value, bool) or int(value) != value:
                    raise TypeError
                coerced = int(value)
            elif self.type is float:
                if isinstance(value, bool):
                    raise TypeError
                coerced = float(value)
            else:
                coerced = self.type(value)
        except (TypeError, ValueError):
            raise MergeConfigError(
                f"{where}: expected {self.type.__name__}, got {value!r}"
            ) from None
        if self.choices is not None and coerced not in self.choices:
            raise MergeConfigError(
                f"{where}: {coerced!r} is not one of {', '.join(map(repr, self.choices))}"
            )
        if self.minimum is not None and coerced < self.minimum:
            raise MergeConfigError(f"{where}: {coerced!r} is below the minimum {self.minimum:g}")
        if self.maximum is not None and coerced > self.maximum:
            raise MergeConfigError(f"{where}: {coerced!r} is above the maximum {self.maximum:g}")
        return coerced


@dataclass(frozen=True)
class MergekitAlias:
    """A name under which mergekit knows (part of) an evomerge method.

    ``implied`` are the evomerge parameters the name stands for (``multislerp``
    means ``slerp`` with ``mode: multislerp``). ``native`` aliases are mergekit's
    own built-ins with the same numbers (pinned by tests), so they are not
    registered again; the others are registered into mergekit by evomerge.
    ``anchored`` aliases accept an ``anchor: true`` input (``reference: ancestor``).
    """

    name: str
    implied: Mapping[str, Any] = field(default_factory=dict)
    native: bool = False
    anchored: bool = False


WEIGHT = MethodParameter(
    "weight", float, None, "per-input weight; None means 1/n each", per_input=True, optional=True
)


class MergeMethod(ABC):
    """A merge method, mergekit-style: ``name()``, ``stage``, ``parameters()`` and a kernel."""

    #: Which combo stage the method belongs to; "any" methods fit every stage.
    stage: Stage = "any"

    @abstractmethod
    def name(self) -> str:
        """The registry key and the default ``merge_method:`` name in YAML."""

    def pretty_name(self) -> str:
        return self.name()

    def parameters(self) -> list[MethodParameter]:
        """Typed parameters with defaults (shared and per-input)."""
        return []

    # -- mergekit interop ---------------------------------------------------
    def mergekit_aliases(self) -> list[MergekitAlias]:
        """Names mergekit knows this method by; the first one is the default."""
        return [MergekitAlias(self.name())]

    def mergekit_name(self, params: Mapping[str, Any], *, anchored: bool = False) -> str:
        """The ``merge_method:`` to write for a stage with these resolved parameters."""
        for alias in self.mergekit_aliases():
            if anchored and not alias.anchored:
                continue
            if all(params.get(k) == v for k, v in alias.implied.items()):
                return alias.name
        raise MergeConfigError(
            f"merge method {self.name()!r} cannot express parameters {dict(params)}"
            + (" with an anchor input" if anchored else "")
        )

    # -- parameters ---------------------------------------------------------
    def resolve(self, supplied: Mapping[str, Any] | None) -> dict[str, Any]:
        """Shared parameters with defaults filled in; unknown names are an error."""
        supplied = dict(supplied or {})
        specs = {p.name: p for p in self.parameters() if not p.per_input}
        unknown = sorted(set(supplied) - set(specs))
        if unknown:
            raise MergeConfigError(
                f"merge method {self.name()!r} has no parameter {', '.join(map(repr, unknown))}; "
                f"parameters: {', '.join(sorted(specs)) or 'none'}"
            )
        out: dict[str, Any] = {}
        for name, spec in specs.items():
            if name in supplied:
                out[name] = spec.validate(supplied[name], method=self.name())
            elif spec.required:
                raise MergeConfigError(f"merge method {self.name()!r} needs parameter {name!r}")
            else:
                out[name] = spec.default
        return out


class TensorMergeMethod(MergeMethod):
    """Merges one tensor at a time: N same-shaped inputs -> one output (interpolation, selection)."""

    def parameters(self) -> list[MethodParameter]:
        return [WEIGHT]

    @abstractmethod
    def merge_tensors(
        self,
        tensors: Sequence[torch.Tensor],
        *,
        weights: Sequence[float],
        name: str,
        params: Mapping[str, Any],
    ) -> torch.Tensor:
        """Merge ``tensors`` (float32/64, same shape, same device) of state-dict key ``name``."""


class TaskArithmeticMethod(MergeMethod):
    """Merges task vectors ``τ_i`` into one; the engine adds it to the stage's reference.

    With ``reference: stage1`` the stage computes ``S1 + λ·merge(τ)``,
    ``τ_i = M_i − S1``; with ``reference: ancestor`` it computes
    ``S1 + λ·(merge(τ) − Σ w_i·τ_i)``, ``τ_i = M_i − B`` (see docs/merging.md).
    """

    stage: Stage = "task_arithmetic"

    def parameters(self) -> list[MethodParameter]:
        return [WEIGHT, MethodParameter("lambda", float, 1.0, "scale of the merged task vector")]

    @abstractmethod
    def merge_deltas(
        self,
        deltas: Sequence[torch.Tensor],
        *,
        weights: Sequence[float],
        name: str,
        params: Mapping[str, Any],
    ) -> torch.Tensor:
        """Merge task vectors; input ``i`` of key ``name`` (index used for seeding)."""


def apply_task_arithmetic(
    method: TaskArithmeticMethod,
    reference: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    *,
    weights: Sequence[float],
    name: str,
    params: Mapping[str, Any],
    anchor: torch.Tensor | None = None,
) -> torch.Tensor:
    """One tensor of a task-arithmetic stage; shared by the engine and the mergekit adapter.

    ``reference`` is what ``deltas`` were taken from (S1, or the ancestor B when
    ``anchor`` = S1 is given).
    """
    merged = method.merge_deltas(deltas, weights=weights, name=name, params=params)
    lam = float(params.get("lambda", 1.0))
    if anchor is None:
        return reference + merged * lam if lam != 1.0 else reference + merged
    plain = torch.zeros_like(merged)
    for w, d in zip(weights, deltas, strict=True):
        plain.add_(d, alpha=float(w))
    return anchor + (merged - plain) * lam


@dataclass
class ModelMergeContext:
    """Everything a whole-model method may use; ``out`` is the stage output to fill in place."""

    sources: Sequence[Mapping[str, torch.Tensor]]
    source_names: Sequence[str]
    out: MutableMapping[str, torch.Tensor]
    params: Mapping[str, Any]
    slices: Sequence[tuple[str, int, int]] | None = None  # a resolved (replayed) stage
    model: PreTrainedModel | None = None
    calibration: Callable[[PreTrainedModel], float] | None = None


@dataclass
class ModelMergeInfo:
    """What a whole-model method reports back: the concrete slices it chose and its scores."""

    slices: list[tuple[str, int, int]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


class ModelMergeMethod(MergeMethod):
    """Sees whole models at once (layer selection); may score candidates with a calibration callable."""

    #: True when the method gives the same result if its first source *is* ``ctx.out``
    #: (it never reads a first-source tensor after writing that tensor of the output): the
    #: engine then streams the stages before it straight into the output instead of holding
    #: their result as a whole extra state dict (evomerge/merge/streaming.py).
    in_place_first_source: bool = False

    def parameters(self) -> list[MethodParameter]:
        return []

    @abstractmethod
    def merge_model(self, ctx: ModelMergeContext) -> ModelMergeInfo:
        """Fill ``ctx.out`` from ``ctx.sources``; return the concrete choice for the generated config."""
