"""Every hook an evomerge plugin can implement.

Plugins implement these with ``@evomerge.hookimpl`` and are found through the
``evomerge`` entry-point group (``[project.entry-points.evomerge]``). Built-in
features are plugins too (``evomerge.plugins.DEFAULT_PLUGINS``) and use only
these hooks. Hooks are always called with keyword arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from evomerge.architectures import Architecture
    from evomerge.fitness.terms import FitnessTerm
    from evomerge.merge.base import MergeMethod

hookspec = pluggy.HookspecMarker("evomerge")


# --------------------------------------------------------------------------
# Model families
# --------------------------------------------------------------------------


@hookspec
def evomerge_register_architectures() -> list[Architecture]:
    """Return the model families (config class, model class, presets, mergekit definition) this plugin adds."""


# --------------------------------------------------------------------------
# Merge methods
# --------------------------------------------------------------------------


@hookspec
def evomerge_register_merge_methods() -> list[MergeMethod]:
    """Return merge methods (``evomerge.merge.MergeMethod``) usable by name in combo stages and merge YAML."""


# --------------------------------------------------------------------------
# Fitness
# --------------------------------------------------------------------------


@hookspec
def evomerge_register_fitness_terms() -> list[FitnessTerm]:
    """Return fitness terms (``evomerge.fitness.FitnessTerm``) that ``FitnessConfig.weights`` can name."""
