"""What every stage of a run shares: the recipe, the CLI's choices, the process group, exit codes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evomerge.evolution.recipe import Recipe

EXIT_PASS, EXIT_BELOW_TARGET, EXIT_BAD_INPUT = 0, 1, 2
#: A run stopped by an unexpected error (a bug; its traceback is printed), and one
#: interrupted (Ctrl-C, 128 + SIGINT as shells report it) or terminated (SIGTERM, 128 + 15):
#: never 1, which a script reads as "finished below target" (Python's and click's own code).
EXIT_CRASH, EXIT_INTERRUPTED, EXIT_TERMINATED = 3, 130, 143
#: 3 inputs + 8 population slots + 1 merge workspace (see evomerge/evolution/loop.py)
RESIDENT_LIMIT = 12
#: candidates a genome strategy materialises at once on one process (evomerge/run/search.py)
IN_FLIGHT = 2


@dataclass
class RunOutcome:
    exit_code: int
    out_dir: Path
    result: dict[str, Any]


@dataclass
class RunContext:
    """One run's settings, passed to each stage instead of a god object's attributes."""

    recipe: Recipe
    resume: bool
    overwrite: bool
    progress: bool
    log: Callable[[str], None]
    dist: Any  # accelerate's PartialState: which process this is, barriers
    #: Peak host RSS when the search starts (inputs, libraries, harness, inputs scored):
    #: result.json's resources say how far the search itself raised it.
    peak_host_bytes_before_search: int | None = None
    #: ... and when the search is done (before the report's champion, baselines and saves).
    peak_host_bytes_after_search: int | None = None
    #: Wall seconds of this process's stages (prepare, reference, search), for result.json.
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return Path(self.recipe.output)

    @property
    def is_main(self) -> bool:
        return bool(self.dist.is_main_process)

    @property
    def show_progress(self) -> bool:
        """Bars and live lines: asked for, and only on the process that reports."""
        return self.progress and self.is_main


def recipe_identity(recipe: Recipe) -> dict[str, Any]:
    """What must match for --resume: everything but the output dir and the generation count,
    the inputs as resolved (a repo id's cached snapshot as ``org/name@commit``: the same
    files wherever the cache dir is). Kept in the checkpoint, so a refused resume can name
    what changed."""
    from evomerge.hub_cache import snapshot_revision

    def pinned(path: Any) -> Any:
        found = snapshot_revision(path) if isinstance(path, str) else None
        return f"{found[0]}@{found[1]}" if found else path

    data = recipe.model_dump(mode="json")
    data.pop("output", None)
    data["evolution"].pop("generations", None)
    inputs = data["inputs"]
    if inputs.get("models"):
        inputs["models"] = [pinned(p) for p in inputs["models"]]
    inputs["base_model"] = pinned(inputs.get("base_model"))
    if data["fitness"].get("sample") == "first":  # the default: checkpoints from before the
        del data["fitness"]["sample"]  # field existed still resume
    return data


def recipe_hash(recipe: Recipe) -> str:
    return hashlib.sha256(json.dumps(recipe_identity(recipe), sort_keys=True).encode()).hexdigest()
