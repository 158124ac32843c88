"""Multi-stage merge configs: mergekit-style YAML documents, one per stage.

A config is what mergekit-multimerge reads: documents separated by ``---``,
each a mergekit merge configuration; every stage but the last has a ``name``
and later stages use that name as a model. evomerge writes only fields mergekit
understands, so stages whose ``merge_method`` mergekit implements (or that
evomerge registered into mergekit) run there unchanged.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from evomerge.merge.base import (
    MergeConfigError,
    ModelMergeMethod,
    TaskArithmeticMethod,
)
from evomerge.merge.registry import MethodRegistry, ResolvedName, get_registry


class ModelEntry(BaseModel):
    """One input of a stage: a path / hub id / earlier stage name, and its per-input parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    model: str
    parameters: dict[str, Any] | None = None


class SliceEntry(BaseModel):
    """A mergekit passthrough slice ``{sources: [{model, layer_range}]}`` with one source."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    model: str
    layer_range: tuple[int, int]


class StageDoc(BaseModel):
    """One YAML document = one stage (the subset of mergekit's MergeConfiguration evomerge writes)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    merge_method: str
    base_model: str | None = None
    models: list[ModelEntry] | None = None
    slices: list[SliceEntry] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    dtype: str | None = None

    @model_validator(mode="after")
    def _models_or_slices(self) -> StageDoc:
        if (self.models is None) == (self.slices is None):
            raise MergeConfigError(
                f"stage {self.name or '(final)'}: give exactly one of 'models' or 'slices'"
            )
        return self

    # -- mergekit <-> evomerge ---------------------------------------------
    def input_names(self) -> list[str]:
        """Every model this stage reads, in order (slices: first appearance)."""
        names = [m.model for m in self.models] if self.models else []
        for s in self.slices or []:
            if s.model not in names:
                names.append(s.model)
        if self.base_model and self.base_model not in names:
            names.append(self.base_model)
        return names

    def anchor(self) -> str | None:
        """The input marked ``anchor: true`` (S1 under ``reference: ancestor``), if any."""
        anchors = [m.model for m in self.models or [] if (m.parameters or {}).get("anchor")]
        if len(anchors) > 1:
            raise MergeConfigError(f"stage {self.name or '(final)'}: more than one anchor input")
        return anchors[0] if anchors else None

    def merged_models(self) -> list[ModelEntry]:
        """Inputs that are merged (everything in ``models`` except the anchor)."""
        return [m for m in self.models or [] if not (m.parameters or {}).get("anchor")]

    def weights(self) -> list[float | None]:
        return [(m.parameters or {}).get("weight") for m in self.merged_models()]

    def to_dict(self) -> dict[str, Any]:
        """The mergekit document, keys in mergekit's usual order."""
        out: dict[str, Any] = {}
        if self.name is not None:
            out["name"] = self.name
        out["merge_method"] = self.merge_method
        if self.base_model is not None:
            out["base_model"] = self.base_model
        if self.models is not None:
            out["models"] = [
                {"model": m.model, **({"parameters": dict(m.parameters)} if m.parameters else {})}
                for m in self.models
            ]
        if self.slices is not None:
            out["slices"] = [
                {"sources": [{"model": s.model, "layer_range": list(s.layer_range)}]}
                for s in self.slices
            ]
        if self.parameters:
            out["parameters"] = dict(self.parameters)
        if self.dtype is not None:
            out["dtype"] = self.dtype
        return out

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, where: str) -> StageDoc:
        if not isinstance(doc, dict):
            raise MergeConfigError(f"{where}: a stage must be a mapping, got {type(doc).__name__}")
        doc = dict(doc)
        slices = doc.pop("slices", None)
        if slices is not None:
            flat = []
            for i, s in enumerate(slices):
                sources = s.get("sources") if isinstance(s, dict) else None
                if not sources or len(sources) != 1:
                    raise MergeConfigError(f"{where}: slices[{i}] must have exactly one source")
                flat.append(sources[0])
            doc["slices"] = flat
        try:
            return cls.model_validate(doc)
        except MergeConfigError:
            raise
        except Exception as exc:  # pydantic's multi-line error -> one line naming the stage
            first = str(exc).splitlines()
            raise MergeConfigError(f"{where}: {' '.join(first[1:3]).strip() or first[0]}") from None


class _Dumper(yaml.SafeDumper):
    """Flow-style lists of numbers (``layer_range: [0, 2]``), like mergekit's ConfigYamlDumper."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = bool(data) and all(isinstance(e, (int, float)) for e in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


class ComboConfig(BaseModel):
    """An ordered list of stages; ``to_yaml`` / ``from_yaml`` round-trip exactly."""

    model_config = ConfigDict(extra="forbid")
    stages: list[StageDoc]
    comment: str | None = None

    def to_yaml(self) -> str:
        docs = [
            yaml.dump(s.to_dict(), Dumper=_Dumper, sort_keys=False, default_flow_style=False)
            for s in self.stages
        ]
        head = "".join(f"# {line}\n" for line in (self.comment or "").splitlines())
        return head + "---\n".join(docs)

    @classmethod
    def from_yaml(
        cls, text: str, *, source: str = "config", registry: MethodRegistry | None = None
    ) -> ComboConfig:
        """Parse and validate (methods exist, parameters valid, stage references point backwards)."""
        try:
            raw = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            raise MergeConfigError(f"{source}: not valid YAML ({exc})") from None
        if not raw:
            raise MergeConfigError(f"{source}: no stages")
        comment = "\n".join(
            line[2:] if line.startswith("# ") else line[1:]
            for line in text.splitlines()
            if line.startswith("#")
        ).strip("\n")
        stages = [StageDoc.from_dict(d, where=f"{source} stage {i + 1}") for i, d in enumerate(raw)]
        config = cls(stages=stages, comment=comment or None)
        config.validate_methods(registry, source=source)
        return config

    def validate_methods(
        self, registry: MethodRegistry | None = None, *, source: str = "config"
    ) -> None:
        """Check every stage against the method registry; errors name the stage and field."""
        registry = registry or get_registry()
        seen: list[str] = []
        for i, stage in enumerate(self.stages):
            where = f"{source} stage {i + 1} ({stage.merge_method})"
            if stage.name is None and i != len(self.stages) - 1:
                raise MergeConfigError(f"{where}: every stage but the last needs a 'name'")
            if stage.name in seen:
                raise MergeConfigError(f"{where}: duplicate stage name {stage.name!r}")
            try:
                stage_parameters(stage, registry)
            except (MergeConfigError, KeyError) as exc:
                raise MergeConfigError(f"{where}: {exc}") from None
            if stage.name is not None:
                seen.append(stage.name)


def stage_parameters(
    stage: StageDoc, registry: MethodRegistry
) -> tuple[ResolvedName, dict[str, Any]]:
    """The method a stage runs and its full parameter set (name-implied + written + defaults)."""
    resolved = registry.resolve(stage.merge_method)
    method = resolved.method
    params = method.resolve({**resolved.alias.implied, **stage.parameters})
    per_input = {p.name for p in method.parameters() if p.per_input}
    anchor = stage.anchor()
    if anchor is not None and not isinstance(method, TaskArithmeticMethod):
        raise MergeConfigError(
            f"only task-arithmetic methods take an anchor input, not {method.name()!r}"
        )
    if anchor is not None and resolved.alias.native:
        raise MergeConfigError(
            f"mergekit's own {stage.merge_method!r} has no anchor input; write "
            f"{method.mergekit_name(params, anchored=True)!r} for reference: ancestor"
        )
    if isinstance(method, TaskArithmeticMethod) and not stage.base_model:
        raise MergeConfigError(f"task-arithmetic method {method.name()!r} needs a base_model")
    if stage.slices is not None and not isinstance(method, ModelMergeMethod):
        raise MergeConfigError(f"{method.name()!r} does not take slices")
    for entry in stage.models or []:
        extra = set(entry.parameters or {}) - per_input - {"anchor"}
        if extra:
            raise MergeConfigError(
                f"model {entry.model!r}: {method.name()!r} has no per-input parameter "
                f"{', '.join(map(repr, sorted(extra)))}"
            )
        for key, value in (entry.parameters or {}).items():
            spec = next((p for p in method.parameters() if p.name == key), None)
            if spec is not None:
                spec.validate(value, method=method.name())
    return resolved, params
