"""The few places evomerge reaches into mergekit internals, kept in one module.

mergekit 0.1.5 has no public API to add an architecture definition: its
``NAME_TO_ARCH`` table is built once from JSON files shipped inside the
package. We parse a plugin's definition with mergekit's own loader and append
it to that table at run time, so mergekit itself is never edited.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def add_mergekit_architecture(definition: Mapping[str, Any]) -> None:
    """Register a mergekit JSON architecture definition with the running mergekit."""
    from mergekit.architecture import json_definitions

    arch = json_definitions._load_architecture_json(json.dumps(dict(definition)))
    json_definitions.JSON_ARCHITECTURES.append(arch)
    for name in arch.architectures:
        candidates = json_definitions.NAME_TO_ARCH.setdefault(name, [])
        if not any(c.expected_model_type == arch.expected_model_type for c in candidates):
            candidates.append(arch)
