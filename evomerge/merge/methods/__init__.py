"""The core merge methods, one module each; this package is a built-in plugin (``DEFAULT_PLUGINS``).

Each method is made with ``@merge_method``, so importing the modules here is
all the registration there is, exactly as for a third-party plugin package.
"""

from __future__ import annotations

from evomerge.merge.methods import dare, linear, slerp, ties

__all__ = ["dare", "linear", "slerp", "ties"]
