"""Per-tensor parameter values, exactly as mergekit 0.1.5 reads them (``mergekit.config.evaluate_setting``).

Any parameter (a stage's ``parameters:`` or an input's ``weight``) may be a
list of conditionals instead of a scalar::

    weight: [{filter: "model.layers.1.", value: 0.3}, {value: 0.5}]

For a tensor named ``name``, the first entry whose ``filter`` is missing, is
``"*"`` or is a substring of ``name`` gives the value; a single mapping
``{filter, value}`` is a one-entry list. When no entry matches, mergekit falls
back to the parameter's default; :meth:`evomerge.merge.base.MergeMethod.resolve`
therefore appends the default as a final unfiltered entry, so the engine never
sees an unmatched shared parameter (an unmatched ``weight`` is ``None``, i.e.
"unset", as in a stage that writes no weights).

mergekit also reads a plain list of numbers as a *gradient* over the layer
position; evomerge does not implement gradients, so such a list is a one-line
error rather than a silently different merge.

The engine calls :func:`resolve_params_for` / :func:`resolve_weights_for` per
tensor only when :func:`is_conditional` holds for some value, so unconditional
configs (today's combos) run the same hot path as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any


class MergeConfigError(ValueError):
    """A merge config or parameter is wrong; the message names the method, field and value."""


def equal_weights(weights: Sequence[float | None] | None, n: int) -> list[float]:
    """Per-input weights with ``None`` (unset) meaning ``1/n`` each.

    Per-tensor (conditional) weights are returned as given, to be resolved per
    tensor by :func:`evomerge.merge.conditional.resolve_weights_for`.
    """
    if weights is None or all(w is None for w in weights):
        return [1.0 / n] * n
    if any(w is None for w in weights):
        raise MergeConfigError("set 'weight' on every input of a stage, or on none")
    if any(isinstance(w, (list, tuple, Mapping)) for w in weights):
        return list(weights)  # type: ignore[arg-type]
    return [float(w) for w in weights]  # type: ignore[arg-type]


REQUIRED = object()  # ``validate_setting(default=REQUIRED)``: the parameter has no default
_ENTRY_KEYS = frozenset({"filter", "value"})


def is_conditional(setting: Any) -> bool:
    """True for ``{filter?, value}`` or a non-empty list of such mappings (mergekit's ConditionalParameter)."""
    if isinstance(setting, Mapping):
        return "value" in setting
    if isinstance(setting, (list, tuple)) and setting:
        return all(isinstance(entry, Mapping) for entry in setting)
    return False


def any_conditional(params: Mapping[str, Any] | None, weights: Sequence[Any] | None = None) -> bool:
    """Whether a stage needs per-tensor resolution at all (the engine's hot-path switch)."""
    return any(is_conditional(v) for v in (params or {}).values()) or any(
        is_conditional(w) for w in weights or ()
    )


def entries(setting: Any, *, where: str = "parameter") -> list[dict[str, Any]]:
    """The conditional entries of ``setting`` as ``[{"filter": str | None, "value": scalar}]``."""
    raw = [setting] if isinstance(setting, Mapping) else list(setting)
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            raise MergeConfigError(
                f"{where}[{i}]: expected a mapping {{filter, value}}, got {entry!r}"
            )
        unknown = sorted(set(entry) - _ENTRY_KEYS)
        if unknown or "value" not in entry:
            raise MergeConfigError(
                f"{where}[{i}]: a conditional value has keys 'filter' and 'value', got {sorted(entry)}"
            )
        flt = entry.get("filter")
        if flt is not None and not isinstance(flt, str):
            raise MergeConfigError(f"{where}[{i}]: filter must be a string, got {flt!r}")
        value = entry["value"]
        if isinstance(value, (list, tuple, Mapping)):
            raise MergeConfigError(
                f"{where}[{i}]: value {value!r} is a gradient or nested setting, which evomerge "
                "does not support; give one scalar per filter"
            )
        out.append({"filter": flt, "value": value} if flt is not None else {"value": value})
    return out


def validate_setting(
    setting: Any,
    validate: Callable[[Any], Any],
    *,
    where: str = "parameter",
    default: Any = REQUIRED,
) -> Any:
    """``setting`` with every value coerced by ``validate``; scalars are validated as they are.

    A conditional without an unfiltered (or ``"*"``) entry gets ``{value:
    default}`` appended, which is what mergekit does for a tensor no filter
    matches (it falls back to the parameter's default); for a parameter with no
    default (``REQUIRED``) that is an error here, where mergekit would fail on
    the first unmatched tensor.
    """
    if not is_conditional(setting):
        if isinstance(setting, Mapping):
            raise MergeConfigError(
                f"{where}: a conditional value has keys 'filter' and 'value', got {sorted(setting)}"
            )
        if isinstance(setting, (list, tuple)):
            raise MergeConfigError(
                f"{where}: {list(setting)!r} is a mergekit gradient, which evomerge does not "
                "support; write [{filter: ..., value: ...}, ...] per-tensor values instead"
            )
        return validate(setting)
    out = []
    for entry in entries(setting, where=where):
        out.append({**entry, "value": validate(entry["value"])})
    if not any(e.get("filter") in (None, "*") for e in out):
        if default is REQUIRED:
            raise MergeConfigError(
                f"{where}: the parameter has no default, so its conditional value needs a "
                "last entry without 'filter'"
            )
        out.append({"value": default})
    return out


def value_for(setting: Any, tensor_name: str) -> Any:
    """The value ``setting`` takes for tensor ``tensor_name`` (None when no entry matches)."""
    if not is_conditional(setting):
        return setting
    for entry in [setting] if isinstance(setting, Mapping) else setting:
        flt = entry.get("filter")
        if flt is None or flt == "*" or (tensor_name and flt in tensor_name):
            return entry["value"]
    return None


def resolve_params_for(params: Mapping[str, Any], tensor_name: str) -> dict[str, Any]:
    """Shared stage parameters as scalars for one tensor."""
    return {name: value_for(value, tensor_name) for name, value in params.items()}


def resolve_weights_for(weights: Sequence[Any], tensor_name: str) -> list[float]:
    """Per-input weights for one tensor (all unset -> ``1/n``, as :func:`equal_weights`)."""
    return equal_weights([value_for(w, tensor_name) for w in weights], len(weights))


def for_tensor(
    weights: Sequence[Any], params: Mapping[str, Any], tensor_name: str
) -> tuple[list[float], dict[str, Any]]:
    """``(weights, params)`` of one tensor: the engine's per-key call for a conditional stage."""
    return resolve_weights_for(weights, tensor_name), resolve_params_for(params, tensor_name)
