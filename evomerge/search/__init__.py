"""Recipe-space search: genomes, the CMA-ES driver and the strategy interface (issue 12).

A strategy proposes genomes and is told their scores; the run
(evomerge/run/search.py) merges, scores, checkpoints and crowns.
"""

from evomerge.search.genome import (
    Genome,
    GenomeError,
    Mutation,
    genome_config,
    layer_group_filters,
    uniform_genome,
)
from evomerge.search.strategy import (
    SearchContext,
    SearchState,
    Strategy,
    StrategyError,
    StrategyOptions,
)

__all__ = [
    "SearchContext",
    "SearchState",
    "Strategy",
    "StrategyError",
    "StrategyOptions",
    "Genome",
    "GenomeError",
    "Mutation",
    "genome_config",
    "layer_group_filters",
    "uniform_genome",
]
