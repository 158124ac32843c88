"""The GPU benchmark scripts, run on the CPU at toy sizes.

A lent GPU is rare and short (15 minutes a session, one prepared call), so a script that
broke since it was written wastes the whole lease. These run each script the GPU call
runs (benchmarks/gpu_speed.sh, gpu_scale.sh, and the population check) end to end on
the CPU, in a fresh process as the device call does, and check what each one measures:
scores equal across eval batch sizes, vmap logits equal to one-by-one, the scale row's
resources, the probe's per-generation split.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def run_script(
    script: str, *args: str, cache: Path | None = None, timeout: int = 300
) -> list[dict[str, Any]]:
    """Run ``benchmarks/<script>`` on the CPU; the JSON lines it printed on stdout."""
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
    }
    if cache is not None:
        env["EVOMERGE_CACHE"] = str(cache)
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{script}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"')]


@pytest.mark.parametrize("script", ["gpu_speed.sh", "gpu_scale.sh", "gpu_session.sh"])
def test_shell_scripts_parse(script: str) -> None:
    proc = subprocess.run(["bash", "-n", str(BENCH / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_fitness_sweep_scores_equal_across_batches() -> None:
    rows = run_script(
        "gpu_fitness_sweep.py",
        *("--device", "cpu", "--items", "4", "--preset", "tiny", "--repeats", "1"),
        *("--batch-tokens", "8192", "auto", "512", "--shared", "off", "on"),
    )
    assert [(r["batch_tokens"], r["shared_contexts"]) for r in rows] == [
        (b, s) for b in (8192, "auto", 512) for s in ("off", "on")
    ]
    assert {r["resolved_batch_tokens"] for r in rows if r["batch_tokens"] == "auto"} == {8192}
    assert all(r["max_rel_diff_vs_first"] <= 1e-4 for r in rows), rows
    assert all(r["seconds"] > 0 and r["tokens"] > 0 for r in rows)
    # the shared-context rows forward each context once: fewer tokens than the rows layout
    off, on = rows[0]["tokens"], rows[1]["tokens"]
    assert on < off


def test_population_vmap_is_exact() -> None:
    rows = run_script(
        "population_vmap.py",
        *("--device", "cpu", "--preset", "tiny", "--rows", "2", "--seq", "32"),
        *("--candidates", "2", "--repeats", "1"),
    )
    assert {r["model"] for r in rows} == {"trm-tiny", "llama"}
    assert all(r["max_abs_logit_diff"] == 0.0 for r in rows), rows


@pytest.mark.slow
def test_scale_bench_row(tmp_path: Path, data_layout, data_cache_dir: Path) -> None:  # type: ignore[no-untyped-def]
    (row,) = run_script(
        "scale_bench.py",
        *("--hidden", "64", "--layers", "2", "--vocab", "512", "--generations", "1"),
        *("--popsize", "2", "--items", "4", "--device", "cpu", "--storage", "bf16"),
        *("--inputs", "host", "--work", str(tmp_path)),
        cache=data_cache_dir,
    )
    assert row["storage"] == "bf16" and row["inputs"] == "host"
    assert row["peak_host_bytes"] > row["input_bytes"] > 0
    assert 0 < row["checkpoint_bytes_per_generation"] < 1_000_000  # issue 13: ≤ 1 MB
    assert row["mergekit_merge_s"] > 0 and row["lm_eval_score_s"] > 0
    assert row["ratio_vs_mergekit_lm_eval"] > 0
    assert row["eval_batch_tokens"] == 8192


@pytest.mark.slow
def test_gpu_probe_reports_generation_split(
    tmp_path: Path, data_layout, data_cache_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "probe"
    run_script(
        "gpu_probe.py",
        *("--out", str(out), "--preset", "tiny", "--base-steps", "2"),
        *("--specialist-steps", "1", "--generations", "1", "--max-items", "4"),
        cache=data_cache_dir,
    )
    report = json.loads((out / "probe.json").read_text())
    assert report["device"] == "cpu" and report["exit_code"] in (0, 1)
    assert len(report["generation_s"]) == len(report["generation_split_s"]) == 2  # gen 0, 1
    assert all(s["merge"] > 0 and s["scoring"] > 0 for s in report["generation_split_s"])
    assert report["timing"]["generations"]["count"] == 2
    assert report["device_report"]["eval_batch_tokens"] == 8192
