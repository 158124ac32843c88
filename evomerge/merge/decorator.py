"""``@evomerge.merge_method``: a plain function of the tensors as a complete merge method.

The function's shape depends on the stage it is for:

* ``stage="any" | "interpolation" | "selection"``: a tensor-wise method,
  ``fn(tensors, *, weights, name, **params) -> Tensor``; ``tensors`` are the
  inputs' same-shaped float32/64 tensors of state-dict key ``name``;
* ``stage="task_arithmetic"``: ``fn(deltas, *, weights, name, **params) -> Tensor``
  merges the task vectors ``τ_i = M_i − reference``; the engine adds the result,
  scaled by the ``lambda`` every task-arithmetic method has, to the reference.

``weights`` (per-input weights, ``1/n`` each when unset) and ``name`` are passed
only if the function declares them; a tensor-wise function without ``weights``
takes no per-input ``weight``. Every other keyword parameter is a method
parameter: its type hint gives the type (``bool``, ``int``, ``float``, ``str``,
``Literal[...]`` for choices, ``X | None`` to accept None), its default the
default, and ``Annotated[float, Range(0, 1), "what it does"]`` its bounds and
description. The result is registered under ``name`` (and exported to mergekit
under it) when the plugin module defining it is loaded; no hook is needed.
Define it at module level: type hints are resolved in the module's namespace.
The decorated object is still callable as the plain function.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from evomerge.merge.base import (
    _MISSING,
    STAGES,
    WEIGHT,
    MergeConfigError,
    MergekitAlias,
    MethodParameter,
    Range,
    Stage,
    TaskArithmeticMethod,
    TensorMergeMethod,
)

_PASSED = ("weights", "name")  # what the engine passes to functions that declare it
_SCALARS = (bool, int, float, str)


def _parameter(method: str, p: inspect.Parameter, hint: Any) -> MethodParameter:
    """A ``MethodParameter`` from one keyword parameter of the function and its type hint."""
    description, bounds = "", Range()
    if typing.get_origin(hint) is typing.Annotated:
        hint, *extras = typing.get_args(hint)
        for extra in extras:
            if isinstance(extra, Range):
                bounds = extra
            elif isinstance(extra, str):
                description = extra
    if hint is inspect.Parameter.empty and p.default is not inspect.Parameter.empty:
        hint = type(p.default)
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else hint
    choices = None
    if typing.get_origin(hint) is typing.Literal:
        choices = tuple(str(a) for a in typing.get_args(hint))
        hint = str
    if hint is inspect.Parameter.empty:
        raise TypeError(
            f"merge method {method!r} parameter {p.name!r} has no type hint and no default: "
            "annotate it (bool, int, float, str or Literal[...])"
        )
    if hint not in _SCALARS:
        raise TypeError(
            f"merge method {method!r} parameter {p.name!r}: type hint must be bool, int, float, "
            f"str or Literal[...] (optionally Annotated[..., Range(...)] or X | None), got {hint!r}"
        )
    return MethodParameter(
        p.name,
        hint,
        _MISSING if p.default is inspect.Parameter.empty else p.default,
        description,
        choices=choices,
        optional=optional,
        minimum=bounds.minimum,
        maximum=bounds.maximum,
    )


class _FromFunction:
    """What both decorated kinds share: the function, its parameters and how to call it."""

    fn: Callable[..., torch.Tensor]
    _name: str
    _params: list[MethodParameter]
    _aliases: list[MergekitAlias]
    _passes: tuple[str, ...]

    def _setup(
        self,
        fn: Callable[..., torch.Tensor],
        name: str,
        stage: Stage,
        aliases: Sequence[MergekitAlias] | None,
    ) -> None:
        functools.update_wrapper(self, fn)  # __module__, __doc__: plugin discovery and docs
        self.fn, self._name, self.stage = fn, name, stage
        self._aliases = list(aliases) if aliases is not None else [MergekitAlias(name)]
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        keywords = [
            p
            for p in list(signature.parameters.values())[1:]
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        self._passes = tuple(p.name for p in keywords if p.name in _PASSED)
        self._params = [
            _parameter(name, p, hints.get(p.name, p.empty))
            for p in keywords
            if p.name not in _PASSED
        ]

    def name(self) -> str:
        return self._name

    def mergekit_aliases(self) -> list[MergekitAlias]:
        return list(self._aliases)

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.fn(*args, **kwargs)

    def _run(
        self,
        tensors: Sequence[torch.Tensor],
        weights: Sequence[float],
        name: str,
        params: Mapping[str, Any],
    ) -> torch.Tensor:
        """Call the function with what it declares; parameters missing from ``params`` take their defaults."""
        passed: dict[str, Any] = {"weights": weights, "name": name}
        kwargs = {k: passed[k] for k in self._passes}
        for p in self._params:
            value = params.get(p.name, p.default)
            if value is _MISSING:
                raise MergeConfigError(f"merge method {self._name!r} needs parameter {p.name!r}")
            kwargs[p.name] = value if value is None else p.type(value)
        return self.fn(tensors, **kwargs)


class FunctionTensorMethod(_FromFunction, TensorMergeMethod):
    """A tensor-wise method made from a function (see the module docstring)."""

    def parameters(self) -> list[MethodParameter]:
        return [*([WEIGHT] if "weights" in self._passes else []), *self._params]

    def merge_tensors(
        self,
        tensors: Sequence[torch.Tensor],
        *,
        weights: Sequence[float],
        name: str,
        params: Mapping[str, Any],
    ) -> torch.Tensor:
        return self._run(tensors, weights, name, params)


class FunctionTaskArithmeticMethod(_FromFunction, TaskArithmeticMethod):
    """A task-arithmetic method made from a function of the task vectors."""

    def parameters(self) -> list[MethodParameter]:
        return [*super().parameters(), *self._params]

    def merge_deltas(
        self,
        deltas: Sequence[torch.Tensor],
        *,
        weights: Sequence[float],
        name: str,
        params: Mapping[str, Any],
    ) -> torch.Tensor:
        return self._run(deltas, weights, name, params)


def merge_method(
    name: str, *, stage: Stage = "any", mergekit: Sequence[MergekitAlias] | None = None
) -> Callable[[Callable[..., torch.Tensor]], FunctionTensorMethod | FunctionTaskArithmeticMethod]:
    """Make the decorated function a merge method called ``name`` for ``stage``.

    ``mergekit``: the names mergekit knows it by (default: ``name``, registered
    into mergekit by evomerge); built-ins use it to say mergekit's own
    ``linear`` / ``ties`` compute the same numbers.
    """
    if not isinstance(name, str):  # ``@merge_method`` without a call: ``name`` is the function
        raise TypeError(
            f"@evomerge.merge_method needs the method's name, as in "
            f'@evomerge.merge_method("{getattr(name, "__name__", "name")}"); got {name!r}'
        )
    if stage not in STAGES:
        raise ValueError(f"merge method {name!r}: stage must be one of {', '.join(STAGES)}")

    def wrap(
        fn: Callable[..., torch.Tensor],
    ) -> FunctionTensorMethod | FunctionTaskArithmeticMethod:
        method: FunctionTensorMethod | FunctionTaskArithmeticMethod
        if stage == "task_arithmetic":
            method = FunctionTaskArithmeticMethod()
        else:
            method = FunctionTensorMethod()
        method._setup(fn, name, stage, mergekit)
        names = [p.name for p in method.parameters()]
        taken = sorted({n for n in names if names.count(n) > 1})
        if taken:
            raise TypeError(
                f"merge method {name!r} parameter {taken[0]!r}: the engine already has a "
                f"parameter of that name (declare `weights` to receive the per-input weights)"
            )
        return method

    return wrap
