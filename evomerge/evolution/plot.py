"""``OUT/evolution.png``: champion fitness and diversity per generation, and the held-out verdict.

Drawn from the generation log (:mod:`evomerge.evolution.tracking`) at the end of
a run, and from what there is when a run is interrupted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: how the held-out panel names the models result.json keys them by
HELD_OUT_LABELS = {
    "champion": "champion",
    "uniform_average": "uniform average (soup)",
    "best_gen0": "best gen-0 combo",
}


def plot_evolution(
    records: list[dict[str, Any]],
    path: Path,
    *,
    min_diversity: float | None = None,
    title: str = "",
    baseline: float | None = None,
    target: float | None = None,
    held_out: Mapping[str, float] | None = None,
    held_out_ranges: Mapping[str, Sequence[float]] | None = None,
) -> Path:
    """Champion fitness and diversity per generation, re-seeded generations marked.

    ``baseline`` (the inputs' mean fitness) and ``target`` (baseline x (1 +
    min_improvement)) are drawn as lines: a curve means little without them.
    ``held_out`` (name -> improvement over the inputs' mean on the held-out
    test split: the champion and the baselines) adds a panel of bars, so the
    plot shows what the loop gained where it was not selected on; ``held_out_ranges``
    (name -> [low, high], result.json's bootstrap intervals) draws each bar's interval.

    Uses matplotlib's object API with the Agg canvas, so it never touches
    pyplot's global backend of the calling program. Written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    gens = [int(r["generation"]) for r in records]
    reseeded = [g for g, r in zip(gens, records, strict=True) if r.get("reseeded")]
    fig = Figure(figsize=(8, 8 if held_out else 6), dpi=100)
    FigureCanvasAgg(fig)
    if held_out:
        ax_fit, ax_div, ax_test = fig.subplots(3, 1, height_ratios=[3, 2, 1.6])
        ax_div.sharex(ax_fit)
        gain = target / baseline - 1 if target is not None and baseline else None
        _draw_held_out(ax_test, held_out, gain, held_out_ranges or {})
    else:
        ax_fit, ax_div = fig.subplots(2, 1, sharex=True)
    _draw_fitness(ax_fit, gens, records, baseline, target)
    _draw_diversity(ax_div, gens, records, min_diversity)
    for i, g in enumerate(reseeded):
        for ax in (ax_fit, ax_div):
            ax.axvline(
                g, color="tab:orange", alpha=0.5, lw=1, label="re-seeded" if i == 0 else None
            )
    ax_div.xaxis.set_major_locator(MaxNLocator(integer=True))  # generations are whole
    for ax in (ax_fit, ax_div):
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def _series(records: list[dict[str, Any]], key: str) -> list[float]:
    return [float("nan") if r.get(key) is None else float(r[key]) for r in records]


def _draw_fitness(
    ax: Any,
    gens: list[int],
    records: list[dict[str, Any]],
    baseline: float | None,
    target: float | None,
) -> None:
    ax.plot(gens, _series(records, "best_fitness"), marker="o", ms=3, label="champion (best ever)")
    ax.plot(gens, _series(records, "elite1_fitness"), lw=1, alpha=0.6, label="best of generation")
    if baseline is not None:
        ax.axhline(baseline, color="tab:gray", ls=":", lw=1, label="inputs' mean")
    if target is not None:
        gain = f" ({target / baseline - 1:+.0%} vs inputs)" if baseline else ""
        ax.axhline(target, color="tab:red", ls="--", lw=1, label=f"target{gain}")
    ax.set_ylabel("fitness")


def _draw_diversity(
    ax: Any, gens: list[int], records: list[dict[str, Any]], min_diversity: float | None
) -> None:
    ax.plot(
        gens, _series(records, "diversity"), marker="o", ms=3, color="tab:green", label="diversity"
    )
    if min_diversity is not None:
        ax.axhline(
            min_diversity, color="tab:red", ls="--", lw=1, label=f"min_diversity = {min_diversity}"
        )
    ax.set_ylabel("diversity (inputs = 1.0)")
    ax.set_xlabel("generation")


def _draw_held_out(
    ax: Any,
    held_out: Mapping[str, float],
    target_gain: float | None,
    ranges: Mapping[str, Sequence[float]],
) -> None:
    """Horizontal bars: each model's held-out improvement over the inputs' mean, target marked,
    and its bootstrap interval where there is one."""
    names = list(held_out)
    values = [100 * float(held_out[n]) for n in names]
    colors = ["tab:blue" if n == "champion" else "tab:gray" for n in names]
    ax.barh(range(len(names)), values, color=colors, alpha=0.8)
    spans = [
        (i, v, ranges[n]) for i, (n, v) in enumerate(zip(names, values, strict=True)) if n in ranges
    ]
    if spans:
        ax.errorbar(  # drawn about each interval's middle: it need not hold the bar's end
            [50 * (r[0] + r[1]) for _, _, r in spans],
            [i for i, _, _ in spans],
            xerr=[50 * (r[1] - r[0]) for _, _, r in spans],
            fmt="none",
            ecolor="black",
            capsize=3,
            lw=1,
        )
    ax.set_yticks(range(len(names)), [HELD_OUT_LABELS.get(n, n) for n in names], fontsize=8)
    ax.invert_yaxis()  # the champion on top
    ends = {i: max(v, 100 * r[1]) for i, v, r in spans}  # labels right of the interval
    for i, v in enumerate(values):
        ax.annotate(
            f"{v:+.1f} %",
            (ends.get(i, v), i),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ax.axvline(0, color="black", lw=0.8)
    left, right = ax.get_xlim()
    ax.set_xlim(left, right + 0.25 * (right - left))  # room for the labels and the legend
    if target_gain is not None:
        ax.axvline(100 * target_gain, color="tab:red", ls="--", lw=1, label="target")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(
        "held-out test split: improvement over the inputs' mean (%)"
        + (", 95 % bootstrap intervals" if spans else "")
    )
    ax.grid(alpha=0.3, axis="x")
