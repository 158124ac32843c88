"""Progress tracking: one JSON line per generation, the same numbers in W&B, a plot at the end.

``OUT/evolution.jsonl`` is the source of truth: it is fsynced every generation,
so a killed run loses at most the generation in flight, and ``evomerge``'s own
report and plot are built from it. W&B is a mirror, offline by default, never
needs an account, and a W&B failure never stops a run (it is logged and
tracking continues with the JSON log alone).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from evomerge.evolution.plot import HELD_OUT_LABELS, plot_evolution

logger = logging.getLogger(__name__)

__all__ = [
    "HELD_OUT_LABELS",
    "LOG_FILE",
    "PLOT_FILE",
    "REQUIRED_KEYS",
    "Tracker",
    "TrackingLogError",
    "plot_evolution",
    "read_log",
]

LOG_FILE = "evolution.jsonl"
PLOT_FILE = "evolution.png"
#: Keys every generation record must have (the controller's contract with the log and plot).
REQUIRED_KEYS = (
    "generation",
    "best_fitness",
    "diversity",
    "elite1_fitness",
    "elite2_fitness",
    "terms",
    "combo_usage",
    "reseeded",
    "seconds",
)

WandbMode = Literal["offline", "online", "disabled"]


class TrackingLogError(ValueError):
    """An evolution.jsonl that cannot be read back; the message names the file and line."""


def read_log(out_dir: Path) -> list[dict[str, Any]]:
    """The generation records of ``out_dir/evolution.jsonl`` (empty when there is none).

    A torn last line (the process died mid-write) is dropped; a bad line
    anywhere else means the file was edited or corrupted, and is an error.
    """
    path = Path(out_dir) / LOG_FILE
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if number == len(lines):
                logger.warning("%s:%d: dropping a torn last line (%s)", path, number, exc)
                break
            raise TrackingLogError(f"{path}:{number}: not a generation record ({exc})") from None
        records.append(record)
    return records


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"terms": {"ppl": 1}}`` -> ``{"terms/ppl": 1}``: W&B charts one scalar per key."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}/"))
        elif isinstance(value, bool):
            flat[name] = int(value)
        elif isinstance(value, (int, float, str)) or value is None:
            flat[name] = value
    return flat


class Tracker:
    """Logs each generation to ``OUT/evolution.jsonl`` and W&B; plots on ``finish``.

    ``resume=True`` keeps the existing log; the first ``log_generation`` then
    drops every record at or after its generation (the ones the checkpoint
    does not cover), so a resumed run never has duplicate generations.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        run_name: str,
        project: str = "evomerge",
        wandb_mode: WandbMode = "offline",
        config: Mapping[str, Any] | None = None,
        resume: bool = False,
        min_diversity: float | None = None,
        baseline: float | None = None,
        target: float | None = None,
    ) -> None:
        if wandb_mode not in ("offline", "online", "disabled"):
            raise ValueError(f"wandb_mode must be offline, online or disabled, got {wandb_mode!r}")
        self.out_dir = Path(out_dir)
        self.run_name = run_name
        self.project = project
        self.wandb_mode = wandb_mode
        self.config = dict(config or {})
        self.resume = resume
        if min_diversity is None:
            evo = self.config.get("evolution")
            min_diversity = evo.get("min_diversity") if isinstance(evo, Mapping) else None
        self.min_diversity = min_diversity
        self.baseline, self.target = baseline, target
        self.log_path = self.out_dir / LOG_FILE
        self.plot_path = self.out_dir / PLOT_FILE
        self.run: Any = None  # the wandb Run, when W&B is on and started
        self._pending_truncate = resume
        self._finished = False

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Tracker:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if not self.resume:
            self._rewrite([])
        self.run = self._start_wandb()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._finished:  # interrupted or failed: keep the plot of what was done
            try:
                if read_log(self.out_dir):
                    self.plot()
            except Exception as err:  # never mask the original exception
                logger.warning("could not plot %s: %s", self.plot_path, err)
            self._close_wandb(exit_code=0 if exc_type is None else 1)

    def _start_wandb(self) -> Any:
        if self.wandb_mode == "disabled":
            return None
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            import wandb

            mode = self.wandb_mode
            if mode == "online" and not (os.environ.get("WANDB_API_KEY") or _has_netrc_key()):
                logger.warning(
                    "W&B online mode needs an account (WANDB_API_KEY); logging offline instead"
                )
                mode = "offline"
            return wandb.init(
                project=self.project,
                name=self.run_name,
                dir=str(self.out_dir),
                mode=mode,
                config=self.config,
                job_type="resume" if self.resume else "evolve",
                settings=wandb.Settings(console="off", x_disable_stats=True),
            )
        except Exception as exc:
            logger.warning("W&B disabled for this run: %s", exc)
            return None

    def _close_wandb(self, exit_code: int = 0) -> None:
        if self.run is not None:
            try:
                self.run.finish(exit_code=exit_code)
            except Exception as exc:
                logger.warning("W&B finish failed: %s", exc)
            self.run = None

    # -- logging -----------------------------------------------------------------------------

    def _rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace the log atomically (temp file + rename): a crash leaves old or new, never half."""
        tmp = self.log_path.with_name(f".{LOG_FILE}.tmp")
        with tmp.open("w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.log_path)

    def truncate(self, from_generation: int) -> int:
        """Drop records with ``generation >= from_generation``; returns how many were dropped.

        Always rewrites the file, which also removes a torn last line that the
        next append would otherwise be glued onto.
        """
        records = read_log(self.out_dir)
        keep = [r for r in records if int(r["generation"]) < from_generation]
        self._rewrite(keep)
        return len(records) - len(keep)

    def log_generation(self, record: Mapping[str, Any]) -> None:
        """Append one generation (fsynced) and mirror it to W&B at step ``generation``."""
        missing = [k for k in REQUIRED_KEYS if k not in record]
        if missing:
            raise ValueError(f"generation record lacks {', '.join(missing)}")
        generation = int(record["generation"])
        if self._pending_truncate:
            dropped = self.truncate(generation)
            if dropped:
                logger.info("resume: dropped %d logged generation(s) >= %d", dropped, generation)
            self._pending_truncate = False
        line = json.dumps(dict(record))
        with self.log_path.open("a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.run is not None:
            try:
                self.run.log(_flatten(record), step=generation)
            except Exception as exc:
                logger.warning("W&B log failed at generation %d: %s", generation, exc)

    def plot(
        self,
        held_out: Mapping[str, float] | None = None,
        held_out_ranges: Mapping[str, Sequence[float]] | None = None,
    ) -> Path:
        """Draw ``OUT/evolution.png`` from the log on disk (so a resumed run's plot is whole)."""
        records = [r for r in read_log(self.out_dir) if "generation" in r]
        return plot_evolution(
            records,
            self.plot_path,
            min_diversity=self.min_diversity,
            title=self.run_name,
            baseline=self.baseline,
            target=self.target,
            held_out=held_out,
            held_out_ranges=held_out_ranges,
        )

    def finish(
        self,
        summary: Mapping[str, Any],
        *,
        held_out: Mapping[str, float] | None = None,
        held_out_ranges: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        """Write the plot, put ``summary`` in the W&B run summary (and the plot as an image), close W&B.

        ``held_out``: the champion's and the baselines' held-out improvements, drawn in the
        plot, with ``held_out_ranges`` (their bootstrap intervals) as error bars.
        """
        path = self.plot(held_out, held_out_ranges)
        if self.run is not None:
            try:
                flat = {k: v for k, v in _flatten(summary).items() if not _is_nan(v)}
                self.run.summary.update(flat)
                import wandb

                self.run.log({"evolution_plot": wandb.Image(str(path))})
            except Exception as exc:
                logger.warning("W&B summary failed: %s", exc)
        self._close_wandb()
        self._finished = True


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _has_netrc_key() -> bool:
    """Whether ``wandb login`` stored a key (~/.netrc), without importing wandb's API client."""
    import netrc

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False
