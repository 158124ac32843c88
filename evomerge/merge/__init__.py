"""Merging: the method registry, the six techniques, combo configs and the in-memory engine.

Plugins subclass :class:`TensorMergeMethod`, :class:`TaskArithmeticMethod` or
:class:`ModelMergeMethod` and return instances from the
``evomerge_register_merge_methods`` hook; see docs/merging.md.
"""

from __future__ import annotations

from evomerge.merge.base import (
    MergeConfigError,
    MergekitAlias,
    MergeMethod,
    MethodParameter,
    ModelMergeContext,
    ModelMergeInfo,
    ModelMergeMethod,
    TaskArithmeticMethod,
    TensorMergeMethod,
)
from evomerge.merge.combos import (
    COMBO_LABELS,
    DEFAULT_COMBOS,
    StageParams,
    combo_config,
    parse_label,
)
from evomerge.merge.config import ComboConfig, StageDoc
from evomerge.merge.engine import ComboResult, MergeEngine, StageError, StageLog
from evomerge.merge.inputs import InputSet
from evomerge.merge.registry import (
    MethodRegistry,
    UnknownMergeMethodError,
    get_method,
    get_registry,
)

__all__ = [
    "COMBO_LABELS",
    "DEFAULT_COMBOS",
    "ComboConfig",
    "ComboResult",
    "InputSet",
    "MergeConfigError",
    "MergeEngine",
    "MergeMethod",
    "MergekitAlias",
    "MethodParameter",
    "MethodRegistry",
    "ModelMergeContext",
    "ModelMergeInfo",
    "ModelMergeMethod",
    "StageDoc",
    "StageError",
    "StageLog",
    "StageParams",
    "TaskArithmeticMethod",
    "TensorMergeMethod",
    "UnknownMergeMethodError",
    "combo_config",
    "get_method",
    "get_registry",
    "parse_label",
]
