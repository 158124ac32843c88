"""Progress tracking: the JSON log (round trip, resume, torn lines), the plot, W&B offline."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from evomerge.evolution.tracking import (
    LOG_FILE,
    PLOT_FILE,
    Tracker,
    TrackingLogError,
    plot_evolution,
    read_log,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _record(gen: int, *, fitness: float | None = None, reseeded: bool = False) -> dict[str, Any]:
    best = 1.0 + 0.01 * gen if fitness is None else fitness
    return {
        "generation": gen,
        "best_fitness": best,
        "diversity": 1.0 / (1 + gen),
        "elite1_fitness": best - 0.001,
        "elite2_fitness": best - 0.002,
        "terms": {"perplexity": 0.9 + gen / 100, "accuracy": 1.1, "speed": 1.0, "memory": 1.0},
        "combo_usage": {"000": gen, "110": 2},
        "reseeded": reseeded,
        "seconds": 0.5,
    }


def _tracker(out: Path, **kw: Any) -> Tracker:
    kw.setdefault("wandb_mode", "disabled")
    return Tracker(
        out,
        run_name="t",
        project="evomerge-tests",
        config={"evolution": {"min_diversity": 0.3}},
        **kw,
    )


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_records_round_trip(tmp_path: Path) -> None:
    records = [_record(g) for g in range(3)]
    with _tracker(tmp_path) as tr:
        for r in records:
            tr.log_generation(r)
        # fsynced per generation: readable mid-run, before finish
        assert read_log(tmp_path) == records
    text = (tmp_path / LOG_FILE).read_text()
    assert text.count("\n") == 3 and text.endswith("\n")
    assert [json.loads(line) for line in text.splitlines()] == records


def test_record_without_required_keys_is_rejected(tmp_path: Path) -> None:
    with _tracker(tmp_path) as tr, pytest.raises(ValueError, match="lacks diversity, seconds"):
        tr.log_generation(
            {k: v for k, v in _record(0).items() if k not in ("diversity", "seconds")}
        )


def test_new_run_replaces_old_log(tmp_path: Path) -> None:
    with _tracker(tmp_path) as tr:
        tr.log_generation(_record(0, fitness=5.0))
    with _tracker(tmp_path) as tr:
        tr.log_generation(_record(0, fitness=7.0))
    assert [r["best_fitness"] for r in read_log(tmp_path)] == [7.0]


def test_resume_truncates_generations_being_redone(tmp_path: Path) -> None:
    with _tracker(tmp_path) as tr:
        for g in range(5):
            tr.log_generation(_record(g, fitness=float(g)))
    # the checkpoint was taken after generation 2: generations 3 and 4 are redone
    with _tracker(tmp_path, resume=True) as tr:
        tr.log_generation(_record(3, fitness=30.0))
        tr.log_generation(_record(4, fitness=40.0))
        tr.log_generation(_record(5, fitness=50.0))
    log = read_log(tmp_path)
    assert [r["generation"] for r in log] == [0, 1, 2, 3, 4, 5]
    assert [r["best_fitness"] for r in log] == [0.0, 1.0, 2.0, 30.0, 40.0, 50.0]


def test_resume_after_the_last_logged_generation_keeps_everything(tmp_path: Path) -> None:
    with _tracker(tmp_path) as tr:
        for g in range(3):
            tr.log_generation(_record(g))
    with _tracker(tmp_path, resume=True) as tr:
        assert tr.truncate(3) == 0
        tr.log_generation(_record(3))
    assert [r["generation"] for r in read_log(tmp_path)] == [0, 1, 2, 3]


def test_torn_last_line_is_dropped_corrupt_middle_line_is_an_error(tmp_path: Path) -> None:
    with _tracker(tmp_path) as tr:
        tr.log_generation(_record(0))
        tr.log_generation(_record(1))
    log = tmp_path / LOG_FILE
    with log.open("a") as f:
        f.write('{"generation": 2, "best_fit')  # killed mid-write
    assert [r["generation"] for r in read_log(tmp_path)] == [0, 1]
    with _tracker(tmp_path, resume=True) as tr:
        tr.log_generation(_record(2))
    assert [r["generation"] for r in read_log(tmp_path)] == [0, 1, 2]
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    with pytest.raises(TrackingLogError, match=rf"{log}:2: not a generation record"):
        read_log(tmp_path)


def test_finish_writes_a_png_with_reseed_markers(tmp_path: Path) -> None:
    records = [_record(g, reseeded=g == 3) for g in range(6)]
    with _tracker(tmp_path) as tr:
        for r in records:
            tr.log_generation(r)
        tr.finish({"fitness": 1.05, "improvement": 0.05})
    png = tmp_path / PLOT_FILE
    assert png.stat().st_size > 1000
    assert _png_size(png) == (800, 600)
    # the markers are drawn: the same data without re-seeding gives a different image
    plain = plot_evolution(
        [{**r, "reseeded": False} for r in records],
        tmp_path / "plain.png",
        min_diversity=0.3,
        title="t",
    )
    assert plain.read_bytes() != png.read_bytes()


def test_plot_draws_the_inputs_mean_and_the_target(tmp_path: Path) -> None:
    records = [_record(g) for g in range(4)]
    bare = plot_evolution(records, tmp_path / "bare.png", title="t")
    lines = plot_evolution(records, tmp_path / "lines.png", title="t", baseline=1.0, target=1.2)
    assert _png_size(lines) == (800, 600)
    assert lines.read_bytes() != bare.read_bytes()


def test_plot_shows_the_held_out_champion_beside_the_baselines(tmp_path: Path) -> None:
    records = [_record(g) for g in range(4)]
    plain = plot_evolution(records, tmp_path / "plain.png", baseline=1.0, target=1.2)
    held = {"champion": 0.17, "uniform_average": 0.19, "best_gen0": 0.16}
    panel = plot_evolution(records, tmp_path / "held.png", baseline=1.0, target=1.2, held_out=held)
    assert _png_size(panel) == (800, 800)  # a third panel: the held-out bars
    worse = plot_evolution(
        records,
        tmp_path / "worse.png",
        baseline=1.0,
        target=1.2,
        held_out={**held, "champion": 0.0},
    )
    assert len({plain.read_bytes(), panel.read_bytes(), worse.read_bytes()}) == 3
    with _tracker(tmp_path / "run") as tr:
        for r in records:
            tr.log_generation(r)
        tr.finish({"fitness": 1.04}, held_out=held)
    assert _png_size(tmp_path / "run" / PLOT_FILE) == (800, 800)  # finish draws the panel too


def test_plot_survives_an_exception_inside_the_run(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), _tracker(tmp_path) as tr:
        tr.log_generation(_record(0))
        tr.log_generation(_record(1, fitness=float("nan")))  # a failed evaluation
        raise RuntimeError("boom")
    assert (tmp_path / PLOT_FILE).read_bytes()[:8] == PNG_MAGIC
    assert (
        read_log(tmp_path)[1]["best_fitness"] != read_log(tmp_path)[1]["best_fitness"]
    )  # NaN round-trips


def test_wandb_offline_run_lands_inside_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("WANDB_MODE", "WANDB_DIR", "WANDB_API_KEY", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(var, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "out"
    with _tracker(out, wandb_mode="offline") as tr:
        assert tr.run is not None, "wandb offline init failed (see the log)"
        for g in range(3):
            tr.log_generation(_record(g))
        tr.finish(
            {
                "fitness": 1.02,
                "merge_combo_usage": {"000": 3},
                "baselines_test_improvement": {"uniform_average": 0.19, "best_gen0": 0.16},
                "loop_gain_test": -0.02,
            },
            held_out={"champion": 0.17, "uniform_average": 0.19, "best_gen0": 0.16},
        )
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, sorted(p.name for p in (out / "wandb").iterdir())
    (run_file,) = runs[0].glob("run-*.wandb")
    # wandb >= 0.20 has no public reader for offline runs; its records hold keys as plain
    # strings. wandb-core may still be flushing the file after finish() returns: poll.
    keys = (
        b"best_fitness",
        b"terms/accuracy",
        b"combo_usage/110",
        b"merge_combo_usage/000",
        b"min_diversity",
        b"baselines_test_improvement/uniform_average",
        b"loop_gain_test",
    )
    deadline = time.monotonic() + 60
    while True:
        data = run_file.read_bytes()
        missing = [k for k in keys if k not in data]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not missing, f"{missing} not in {run_file} ({len(data)} bytes)"
    assert list(runs[0].glob("files/media/images/evolution_plot_*.png")), "plot not logged to W&B"
    assert not any(cwd.iterdir()), f"W&B wrote outside the output dir: {list(cwd.iterdir())}"
    assert (out / PLOT_FILE).is_file() and len(read_log(out)) == 3


def test_wandb_disabled_writes_nothing_of_wandb(tmp_path: Path) -> None:
    with _tracker(tmp_path, wandb_mode="disabled") as tr:
        assert tr.run is None
        tr.log_generation(_record(0))
        tr.finish({})
    assert not (tmp_path / "wandb").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOG_FILE, PLOT_FILE]
