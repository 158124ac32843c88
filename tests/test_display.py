"""The live progress line of `recipe run`: what it shows after each generation."""

from __future__ import annotations

import io

from rich.console import Console

from evomerge.evolution.display import GenerationDisplay, combo_summary


def test_combo_summary_lists_used_combos_most_used_first() -> None:
    usage = {"000": 1, "001": 0, "010": 3, "011": 1, "100": 0, "101": 0, "110": 0, "111": 2}
    assert combo_summary(usage) == "010:3 111:2 000:1 011:1"
    assert combo_summary(dict.fromkeys(usage, 0)) == ""


def test_display_shows_generation_best_diversity_combos_and_eta() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=200, color_system=None)
    record = {
        "generation": 1,
        "best_fitness": 1.23456,
        "diversity": 0.4321,
        "combo_usage": {"000": 2, "011": 1},
    }
    with GenerationDisplay(4, console=console) as display:
        display.update(record)
    shown = buffer.getvalue()
    for text in ("gen 2/5", "best 1.2346", "diversity 0.432", "000:2 011:1", "ETA"):
        assert text in shown, (text, shown)


def test_resumed_display_starts_after_the_checkpointed_generation() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=200, color_system=None)
    with GenerationDisplay(10, console=console) as display:
        display.resumed(3)
        display._progress.refresh()  # type: ignore[union-attr]
    assert "gen 4/11" in buffer.getvalue()


def test_disabled_display_draws_nothing() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True)
    with GenerationDisplay(3, enabled=False, console=console) as display:
        display.update({"generation": 0, "best_fitness": 1.0, "diversity": 1.0})
    assert buffer.getvalue() == ""
