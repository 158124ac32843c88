"""Model families: transformers' own, and those plugins add; their registration with transformers and mergekit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from transformers import PretrainedConfig, PreTrainedModel

from evomerge.registry import Registry, UnknownNameError


class UnknownArchitectureError(UnknownNameError):
    """Raised for a model type neither a plugin nor transformers knows, or an unknown preset."""


@dataclass(frozen=True)
class Architecture:
    """One model family: what transformers needs to build it and mergekit needs to merge it.

    ``mergekit_definition`` is mergekit's JSON architecture definition (the
    format of ``mergekit/_data/architectures/*.json``); it is injected into
    mergekit at run time, so mergekit is never edited. None for families
    mergekit knows itself (every transformers built-in it supports).
    """

    model_type: str
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    mergekit_definition: Mapping[str, Any] | None = None
    description: str = ""

    def config(self, preset: str | None = None, **overrides: Any) -> PretrainedConfig:
        """A config for ``preset`` (the class defaults when None), with ``overrides`` applied."""
        values: dict[str, Any] = {}
        if preset is not None:
            if preset not in self.presets:
                raise UnknownArchitectureError(
                    f"{self.model_type} has no preset {preset!r}; presets: {', '.join(sorted(self.presets))}"
                )
            values.update(self.presets[preset])
        values.update(overrides)
        return self.config_class(**values)


def transformers_architecture(model_type: str) -> Architecture | None:
    """The family transformers itself builds as ``AutoModelForCausalLM`` for ``model_type``, if any."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        config_class = CONFIG_MAPPING[model_type]
        model_class: type[PreTrainedModel] = MODEL_FOR_CAUSAL_LM_MAPPING[config_class]  # type: ignore[assignment]
    except KeyError:
        return None
    return Architecture(
        model_type=model_type,
        config_class=config_class,
        model_class=model_class,
        description=f"transformers' {model_class.__name__}",
    )


ARCHITECTURES: Registry[Architecture] = Registry(
    "architecture",
    "evomerge_register_architectures",
    Architecture,
    key=lambda arch: arch.model_type,
    error=UnknownArchitectureError,
    fallback=transformers_architecture,
    fallback_note=" and transformers has no causal LM of that model_type",
)


def registered_architectures() -> dict[str, Architecture]:
    """Every architecture registered by a plugin, by ``model_type`` (transformers' own not included)."""
    return {name: entry.item for name, entry in ARCHITECTURES.entries().items()}


def get_architecture(model_type: str) -> Architecture:
    """The family called ``model_type``: a plugin's, else transformers' own; else a clear error."""
    register_with_transformers()  # so AutoModelForCausalLM loads saved models of it too
    return ARCHITECTURES.get(model_type)


_TRANSFORMERS_REGISTERED: set[str] = set()


def register_with_transformers() -> None:
    """Make every plugin family loadable through AutoConfig / AutoModelForCausalLM (idempotent)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for arch in registered_architectures().values():
        if arch.model_type in _TRANSFORMERS_REGISTERED:
            continue
        _TRANSFORMERS_REGISTERED.add(arch.model_type)
        AutoConfig.register(arch.model_type, arch.config_class, exist_ok=True)
        AutoModelForCausalLM.register(arch.config_class, arch.model_class, exist_ok=True)


_MERGEKIT_REGISTERED: set[str] = set()


def register_with_mergekit() -> None:
    """Inject each plugin family's mergekit definition into mergekit's architecture table.

    Called lazily by the code that merges: importing mergekit costs seconds.
    """
    for arch in registered_architectures().values():
        if arch.mergekit_definition is None or arch.model_type in _MERGEKIT_REGISTERED:
            continue
        from evomerge.mergekit_compat import add_mergekit_architecture

        add_mergekit_architecture(arch.mergekit_definition)
        _MERGEKIT_REGISTERED.add(arch.model_type)
