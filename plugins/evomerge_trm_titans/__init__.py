"""TRM x Titans-MAG: the Phase-1 model family, as an evomerge architecture plugin.

Registered through the ``evomerge`` entry-point group exactly as a third-party
plugin would be; ``evomerge.load_plugins()`` then makes it loadable with
``AutoModelForCausalLM``, and merging makes it known to mergekit.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from evomerge import hookimpl

if TYPE_CHECKING:
    from evomerge.architectures import Architecture

MODEL_TYPE = "trm_titans_mag"


@lru_cache(maxsize=1)
def mergekit_definition() -> dict[str, Any]:
    """mergekit's JSON architecture definition (``mergekit_architecture.json``, mergekit's own format)."""
    text = resources.files(__name__).joinpath("mergekit_architecture.json").read_text()
    definition: dict[str, Any] = json.loads(text)
    return definition


@hookimpl
def evomerge_register_architectures() -> list[Architecture]:
    """The TRM x Titans-MAG family, with its ``phase1-25m`` and ``tiny`` presets."""
    from evomerge.architectures import Architecture

    from .configuration import PRESETS, TrmTitansConfig
    from .modeling import TrmTitansForCausalLM

    return [
        Architecture(
            model_type=MODEL_TYPE,
            config_class=TrmTitansConfig,
            model_class=TrmTitansForCausalLM,
            presets=PRESETS,
            mergekit_definition=mergekit_definition(),
            description=(
                "Tiny Recursive Model over Titans Memory-as-a-Gate blocks: sliding-window "
                "attention with persistent tokens, gated by a test-time-trained neural memory."
            ),
        )
    ]
