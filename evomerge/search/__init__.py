"""Recipe-space search: genomes, the CMA-ES driver and the strategy interface (issue 12).

Self-contained building blocks; the run wires them in (see docs/architecture.md).
"""

from evomerge.search.genome import (
    Genome,
    GenomeError,
    Mutation,
    genome_config,
    layer_group_filters,
    uniform_genome,
)

__all__ = [
    "Genome",
    "GenomeError",
    "Mutation",
    "genome_config",
    "layer_group_filters",
    "uniform_genome",
]
