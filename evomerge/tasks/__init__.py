"""lm-eval task YAML templates (package data), filled by ``evomerge.fitness.tasks.write_tasks``."""
