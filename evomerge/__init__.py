"""evomerge: plugin-based evolutionary model merging.

Importing the package registers every plugin's model families with
transformers' Auto classes, so ``AutoModelForCausalLM.from_pretrained(dir)``
works for any architecture a plugin provides.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: Marker for plugin hook implementations: ``from evomerge import hookimpl``.
hookimpl = pluggy.HookimplMarker("evomerge")

__all__ = ["__version__", "hookimpl"]


def _register_model_families() -> None:
    # Imported here so that `hookimpl` exists before plugins import it.
    from evomerge.architectures import register_with_transformers

    register_with_transformers()


_register_model_families()
