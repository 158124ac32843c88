"""The live progress line of `evomerge recipe run`: generation, best, diversity, combos, ETA.

A generation takes seconds to minutes, so a bar with an ETA is what tells a
user whether to wait or to come back tomorrow. Without a terminal (CI, a log
file) rich draws nothing live and the per-generation log lines stand alone.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def combo_summary(usage: dict[str, int]) -> str:
    """``000:3 011:1 …``: combos used so far, most used first (unused ones left out)."""
    used = sorted(((n, label) for label, n in usage.items() if n), key=lambda x: (-x[0], x[1]))
    return " ".join(f"{label}:{n}" for n, label in used)


class GenerationDisplay:
    """A rich progress bar over generations 0..G, updated once per evaluated generation."""

    def __init__(
        self, total_generations: int, *, enabled: bool = True, console: Console | None = None
    ) -> None:
        self.total = total_generations + 1  # generation 0 counts
        self.enabled = enabled
        self.console = console
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> GenerationDisplay:
        if self.enabled:
            self._progress = Progress(
                TextColumn("gen {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("best {task.fields[best]}"),
                TextColumn("diversity {task.fields[diversity]}"),
                TextColumn("[dim]{task.fields[combos]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,  # the log lines stay; the live line goes when the run ends
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(
                "evolution", total=self.total, best="-", diversity="-", combos=""
            )
        return self

    def resumed(self, generation: int) -> None:
        """Generations up to ``generation`` were done before this process started."""
        if self._progress is not None:
            self._progress.update(self._task, completed=generation + 1)

    def update(self, record: dict[str, Any]) -> None:
        if self._progress is None:
            return
        self._progress.update(
            self._task,
            completed=record["generation"] + 1,
            best=f"{record['best_fitness']:.4f}",
            diversity=f"{record['diversity']:.3f}",
            combos=combo_summary(record.get("combo_usage", {})),
        )
        self._progress.refresh()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)
            self._progress = None
