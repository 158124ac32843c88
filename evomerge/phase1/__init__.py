"""The demo Phase-1 family: one shared base, then three domain specialists from it.

Merging needs a common ancestor: models trained from different random inits do
not average (docs/trm-titans.md "Merging needs a common ancestor"). So the family
is a shared base trained on all domains, then one specialist fine-tuned per domain.
"""

from evomerge.phase1.make import FamilySpec, make_family

__all__ = ["FamilySpec", "make_family"]
