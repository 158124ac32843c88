"""One `evomerge recipe run` in a fresh process, as the benchmarks time it (shared helper).

A subprocess, so each run's peak RSS (result.json ``resources``) and imports are its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def run_recipe(path: Path, out: Path, what: str) -> tuple[dict[str, Any], float]:
    """Run ``path`` (writing ``out``); its result.json and the wall seconds. Exit 0/1 only."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "evomerge", "recipe", "run", str(path), "--overwrite", "--quiet"],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # 1: finished below the recipe's target
        raise SystemExit(f"{what}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return json.loads((out / "result.json").read_text()), wall
