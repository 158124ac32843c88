"""Model families contributed by plugins, and their registration with transformers and mergekit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from transformers import PretrainedConfig, PreTrainedModel


class UnknownArchitectureError(KeyError):
    """Raised for a model type or preset no plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Architecture:
    """One model family: what transformers needs to build it and mergekit needs to merge it.

    ``mergekit_definition`` is mergekit's JSON architecture definition (the
    format of ``mergekit/_data/architectures/*.json``); it is injected into
    mergekit at run time, so mergekit is never edited.
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


def registered_architectures() -> dict[str, Architecture]:
    """Every architecture registered by a plugin, by ``model_type``; a clash is an error.

    Not cached: hooks are cheap, and a plugin whose import was still running at
    the first call (see ``get_plugin_manager``) must appear at the next one.
    """
    from evomerge.plugins import get_plugin_manager

    pm = get_plugin_manager()
    found: dict[str, Architecture] = {}
    owners: dict[str, str] = {}
    for impl in pm.hook.evomerge_register_architectures.get_hookimpls():
        found_here = cast(list[Architecture], impl.function() or [])
        for arch in found_here:
            if arch.model_type in found:
                raise ValueError(
                    f"architecture {arch.model_type!r} is registered by both "
                    f"{owners[arch.model_type]!r} and {impl.plugin_name!r}"
                )
            found[arch.model_type] = arch
            owners[arch.model_type] = impl.plugin_name
    return found


def get_architecture(model_type: str) -> Architecture:
    """The architecture registered as ``model_type``, or a clear error listing those that exist."""
    archs = registered_architectures()
    if model_type in archs:
        register_with_transformers(archs)  # idempotent; covers plugins registered late
    if model_type not in archs:
        known = ", ".join(sorted(archs)) or "none"
        raise UnknownArchitectureError(
            f"no plugin registers architecture {model_type!r}; registered: {known}"
        )
    return archs[model_type]


_TRANSFORMERS_REGISTERED: set[str] = set()


def register_with_transformers(archs: dict[str, Architecture] | None = None) -> None:
    """Make every registered family loadable through AutoConfig / AutoModelForCausalLM."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for arch in (archs if archs is not None else registered_architectures()).values():
        if arch.model_type in _TRANSFORMERS_REGISTERED:
            continue
        _TRANSFORMERS_REGISTERED.add(arch.model_type)
        try:
            AutoConfig.register(arch.model_type, arch.config_class, exist_ok=True)
            AutoModelForCausalLM.register(arch.config_class, arch.model_class, exist_ok=True)
        except TypeError:  # transformers without exist_ok
            AutoConfig.register(arch.model_type, arch.config_class)
            AutoModelForCausalLM.register(arch.config_class, arch.model_class)


_MERGEKIT_REGISTERED: set[str] = set()


def register_with_mergekit() -> None:
    """Inject each family's mergekit definition into mergekit's architecture table.

    Called lazily by the code that merges: importing mergekit costs seconds.
    """
    for arch in registered_architectures().values():
        if arch.mergekit_definition is None or arch.model_type in _MERGEKIT_REGISTERED:
            continue
        from evomerge.mergekit_compat import add_mergekit_architecture

        add_mergekit_architecture(arch.mergekit_definition)
        _MERGEKIT_REGISTERED.add(arch.model_type)
