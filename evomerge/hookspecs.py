"""Every hook an evomerge plugin can implement, and the two pluggy markers.

Plugins implement these with ``@evomerge.hookimpl`` and are found through the
``evomerge`` entry-point group (``[project.entry-points.evomerge]``). Built-in
features are plugins too (``evomerge.plugins.DEFAULT_PLUGINS``) and use only
these hooks. Hooks are always called with keyword arguments.

This module imports nothing of evomerge (the markers live here, as in pytest
and datasette, so a plugin importing ``evomerge.hookimpl`` triggers nothing).
What each hook returns is checked when the registry collects it
(``evomerge.registry.Registry``), so the return types are named in the
docstrings instead of imported here: importing them would tie this bottom
module to the registries above it.
"""

from __future__ import annotations

from typing import Any

import pluggy

#: Marks the hook specifications below.
hookspec = pluggy.HookspecMarker("evomerge")
#: Marks a plugin's hook implementations; public as ``evomerge.hookimpl``.
hookimpl = pluggy.HookimplMarker("evomerge")


# --------------------------------------------------------------------------
# Model families
# --------------------------------------------------------------------------


@hookspec
def evomerge_register_architectures() -> list[Any]:
    """Return the model families (``evomerge.architectures.Architecture``) this plugin adds.

    Only families transformers lacks need one: any ``model_type`` that
    ``AutoModelForCausalLM`` builds (llama, mistral, qwen2, ...) works without a plugin.
    """


# --------------------------------------------------------------------------
# Merge methods
# --------------------------------------------------------------------------


@hookspec
def evomerge_register_merge_methods() -> list[Any]:
    """Return class-based merge methods (``evomerge.merge.MergeMethod`` instances).

    Methods made with ``@evomerge.merge_method`` need no hook: they are found in
    the plugin module's namespace when the plugin is loaded.
    """


# --------------------------------------------------------------------------
# Fitness
# --------------------------------------------------------------------------


@hookspec
def evomerge_register_fitness_terms() -> list[Any]:
    """Return fitness terms (``evomerge.fitness.FitnessTerm``) that ``FitnessConfig.weights`` can name."""


# --------------------------------------------------------------------------
# Search strategies
# --------------------------------------------------------------------------


@hookspec
def evomerge_register_strategies() -> list[Any]:
    """Return search-strategy classes that ``evolution.strategy`` can name.

    A class has ``name``, ``kind = "genomes"``, an ``Options`` pydantic model
    (``evolution.strategy_options``, unknown keys are errors) and the
    ``propose`` / ``observe`` / ``final_candidates`` / ``state_dict`` methods of
    ``evomerge.search.Strategy``; the run merges and scores what it proposes.
    """
