"""Which documents of each task are scored, where fewer are scored than a task has.

A draw is random with a seed fixed by its purpose and task (and, for a run's own
fitness sample, the run's seed), so it is the same on every machine and process.
Not lm-eval's ``limit`` (the first N): a task file in source order (a book's
chapters, a library's modules A to Z) would then be judged on one stretch of it,
while selection and the bootstrap intervals treat the documents as a random
sample of the task.
"""

from __future__ import annotations

import random

from evomerge.evolution.operators import derive_seed


def drawn_sample(
    counts: dict[str, int], most: int | None, *purpose: object
) -> dict[str, list[int]] | None:
    """``most`` document indices per task (sorted; every one of a smaller task), drawn
    with ``derive_seed(*purpose, task)``; None (every document) when no task has more."""
    if most is None or all(n <= most for n in counts.values()):
        return None
    return {
        name: sorted(random.Random(derive_seed(*purpose, name)).sample(range(n), most))
        if n > most
        else list(range(n))
        for name, n in counts.items()
    }
