"""The evolution controller: recipes, the generation loop, lineage, checkpoints, the report."""
