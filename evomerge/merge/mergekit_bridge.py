"""evomerge methods inside mergekit, and running a generated config through mergekit itself.

:func:`register_with_mergekit` wraps every registered method alias that
mergekit does not already implement (``dare``, ``dfs``, ``slerp_chain``,
``evomerge_ties``, third-party methods) into a mergekit ``MergeMethod`` with the
same typed parameters and adds it to ``mergekit.merge_methods.registry``; the
kernels are evomerge's, so mergekit and the in-memory engine compute the same
numbers. Importing mergekit costs seconds, so nothing here runs at import time.
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from evomerge.merge.base import (
    MergekitAlias,
    MergeMethod,
    ModelMergeMethod,
    TaskArithmeticMethod,
    TensorMergeMethod,
    apply_task_arithmetic,
    equal_weights,
)
from evomerge.merge.registry import MethodRegistry, get_registry

if TYPE_CHECKING:
    from mergekit.options import MergeOptions

_REGISTERED: dict[str, MergeMethod] = {}


def _compute(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)


def _mergekit_spec(method: MergeMethod, alias: MergekitAlias) -> Any:
    """mergekit's ``MergeMethodSpec`` for ``alias``: the method's parameters, less those the name implies."""
    from mergekit.merge_methods.base import (
        MISSING,
        BasePolicy,
        InputContract,
        MergeMethodSpec,
        ParameterScope,
        ParameterSpec,
    )

    task_arithmetic = isinstance(method, TaskArithmeticMethod)
    per_input_scope = ParameterScope.NON_BASE if task_arithmetic else ParameterScope.INPUT
    specs = []
    for p in method.parameters():
        if p.name in alias.implied:
            continue
        value_type: Any = Optional[p.type] if p.optional else p.type  # noqa: UP045 - runtime type object
        specs.append(
            ParameterSpec(
                p.name,
                value_type,
                per_input_scope if p.per_input else ParameterScope.SHARED,
                default=MISSING if p.required else p.default,
                description=p.description or None,
            )
        )
    if task_arithmetic:
        specs.append(ParameterSpec("anchor", bool, ParameterScope.NON_BASE, default=False))
    return MergeMethodSpec(
        name=alias.name,
        parameters=tuple(specs),
        contract=InputContract(base=BasePolicy.REQUIRED if task_arithmetic else BasePolicy.IGNORED),
        pretty_name=f"{method.pretty_name()} (evomerge)",
    )


def _merge_group(
    method: MergeMethod, params: dict[str, Any], group: Any, parameters: dict[str, Any]
) -> torch.Tensor:
    """One tensor group of a mergekit merge through ``method``'s kernel (float32 compute)."""
    name = group.metadata.name or ""

    def weights_of(entries: Any) -> list[float]:
        if "weight" not in parameters:
            return equal_weights(None, len(entries))
        return equal_weights([parameters["weight"][e.id] for e in entries], len(entries))

    if isinstance(method, TaskArithmeticMethod):
        assert group.base is not None
        anchors = [e for e in group.non_base if parameters["anchor"][e.id]]
        merged = [e for e in group.non_base if not parameters["anchor"][e.id]]
        base = _compute(group.base.tensor)
        return apply_task_arithmetic(
            method,
            base,
            [_compute(e.tensor) - base for e in merged],
            weights=weights_of(merged),
            name=name,
            params=params,
            anchor=_compute(anchors[0].tensor) if anchors else None,
        )
    assert isinstance(method, TensorMergeMethod)
    return method.merge_tensors(
        [_compute(e.tensor) for e in group.entries],
        weights=weights_of(group.entries),
        name=name,
        params=params,
    )


def mergekit_method(method: MergeMethod, alias: MergekitAlias) -> Any:
    """A mergekit ``GroupMergeMethod`` named ``alias.name`` that runs ``method``'s kernel."""
    from mergekit.merge_methods.base import GroupMergeMethod, ParameterScope, TensorGroup

    spec = _mergekit_spec(method, alias)
    shared_names = [s.name for s in spec.parameters if s.scope == ParameterScope.SHARED]

    class EvomergeMethod(GroupMergeMethod):
        def __init__(self) -> None:
            self.spec = spec

        def merge_group(self, group: TensorGroup, /, **parameters: Any) -> torch.Tensor:
            params = method.resolve({**alias.implied, **{k: parameters[k] for k in shared_names}})
            dtype = group.entries[0].tensor.dtype
            return _merge_group(method, params, group, parameters).to(dtype)

    return EvomergeMethod()


def register_with_mergekit(registry: MethodRegistry | None = None) -> list[str]:
    """Add every non-native evomerge method alias to mergekit's registry (idempotent).

    None clashes with mergekit's own methods: the registry refuses those names
    (``evomerge.merge.registry.mergekit_builtin_names``).
    """
    from mergekit.merge_methods import registry as mk_registry

    from evomerge.architectures import register_with_mergekit as register_architectures

    register_architectures()
    registry = registry or get_registry()
    added = []
    for resolved in registry.aliases():
        alias, method = resolved.alias, resolved.method
        if alias.native or isinstance(method, ModelMergeMethod):
            continue
        if _REGISTERED.get(alias.name) is method:
            continue
        mk_registry._METHODS.pop(alias.name, None)  # re-registration after a registry rebuild
        mk_registry.register(mergekit_method(method, alias))
        _REGISTERED[alias.name] = method
        added.append(alias.name)
    return added


def run_with_mergekit(
    config_yaml: str,
    out_path: str | os.PathLike[str],
    *,
    intermediate_dir: str | os.PathLike[str],
    options: MergeOptions | None = None,
) -> Path:
    """Run a multi-document config with mergekit (``mergekit-multimerge`` semantics), disk to disk.

    Named stages go to ``intermediate_dir/<name>``, the unnamed final one to ``out_path``.
    """
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from mergekit.scripts.multimerge import load_config

    register_with_mergekit()
    options = options or MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True)
    os.makedirs(intermediate_dir, exist_ok=True)
    configs, _dependencies = load_config(config_yaml, str(intermediate_dir))
    order: list[Hashable] = list(configs)  # documents are written in dependency order
    for name in order:
        target = str(out_path) if name is None else os.path.join(str(intermediate_dir), str(name))
        run_merge(configs[name], target, options=options)
    return Path(out_path)
