"""TRM x Titans-MAG: the Phase-1 model family, as an evomerge architecture plugin."""
