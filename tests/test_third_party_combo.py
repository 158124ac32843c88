"""A third party's merge method, named in a recipe's ``combos:``, runs through a whole ``recipe run``.

The plugin is a real installed distribution as far as evomerge can tell: a
module plus a ``.dist-info`` whose entry point is in the ``evomerge`` group
(what pip writes), on ``PYTHONPATH`` of a fresh ``python -m evomerge``
process. It is written the decorator way (``@evomerge.merge_method`` on a
plain function, as docs/plugins.md shows): no hookimpl, no class.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

COMBOS = [["linear", "median"], ["dare", "ties"], ["frankenmerge", "dfs"]]

PLUGIN = '''
"""The element-wise median of the inputs: robust to one outlier model."""

import os

import torch

import evomerge


@evomerge.merge_method("median", stage="any")
def median(tensors: list[torch.Tensor], *, name: str) -> torch.Tensor:
    """Element-wise median of the inputs (weights are ignored)."""
    with open(os.environ["MEDIAN_MARKER"], "a") as fh:  # proof that the kernel ran
        fh.write(name + "\\n")
    return torch.stack(list(tensors)).median(dim=0).values
'''


def _install_plugin(site: Path) -> None:
    """The module and a .dist-info with its entry point, as ``pip install`` would leave them."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "evomerge_median_demo.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "evomerge_median_demo-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: evomerge-median-demo\nVersion: 0.0.1\n"
    )
    (info / "entry_points.txt").write_text("[evomerge]\nmedian = evomerge_median_demo\n")


def _recipe(tmp: Path, phase1: dict) -> Path:
    """The smallest whole run: generation 0 (all eight combos) plus one generation, few items."""
    data = {
        "name": "third-party-combo",
        "inputs": {
            "models": phase1["models"],
            "base_model": phase1["base_model"],
            "architecture": "trm_titans_mag",
        },
        "combos": COMBOS,
        "evolution": {"generations": 1, "seed": 0, "early_stop": None},
        "fitness": {
            "max_items": 4,
            "report_max_items": 4,
            "time_repeats": 1,
            "time_seq_len": 32,
            "calibration_sequences": 2,
            "calibration_seq_len": 32,
        },
        "tracking": {"wandb_mode": "disabled"},
        "device": {"device": "cpu"},
        "output": str(tmp / "out"),
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _evomerge(
    site: Path, marker: Path, cache: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    env = {
        **os.environ,
        "PYTHONPATH": path,
        "MEDIAN_MARKER": str(marker),
        "EVOMERGE_CACHE": str(cache),
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "evomerge", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )


def test_third_party_method_in_combos_runs_a_whole_recipe(
    tmp_path: Path, phase1_tiny: dict, data_cache_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM

    site, marker = tmp_path / "site", tmp_path / "median-calls.txt"
    _install_plugin(site)
    recipe = _recipe(tmp_path, phase1_tiny)

    checked = _evomerge(site, marker, data_cache_dir, "recipe", "validate", str(recipe))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    shown = _evomerge(
        site, marker, data_cache_dir, "combos", "show", "100", "--recipe", str(recipe)
    )
    assert shown.returncode == 0, shown.stderr
    assert list(yaml.safe_load_all(shown.stdout))[0]["merge_method"] == "median"

    run = _evomerge(site, marker, data_cache_dir, "recipe", "run", str(recipe), "--quiet")
    assert run.returncode in (0, 1), run.stdout + run.stderr
    assert marker.read_text().splitlines(), "the median kernel never ran"

    out = tmp_path / "out"
    result = json.loads((out / "result.json").read_text())
    assert run.returncode == (0 if result["passed"] else 1)
    assert result["recipe"]["combos"] == COMBOS
    assert all(result["merge_combo_usage"][c] >= 1 for c in result["merge_combo_usage"])
    combo_nodes = [n for n in result["champion_lineage"] if n["kind"] == "combo"]
    assert combo_nodes
    for node in combo_nodes:  # each recorded config is the table's: bit 0 = 1 means median
        stage1 = next(yaml.safe_load_all(node["merge_record"]["config_yaml"]))
        assert stage1["merge_method"] == ("median" if node["combo"][0] == "1" else "linear")
    model = AutoModelForCausalLM.from_pretrained(out / "champion")
    assert model.config.model_type == "trm_titans_mag"


def test_median_in_the_task_arithmetic_row_is_refused_at_load(
    tmp_path: Path, data_cache_dir: Path
) -> None:
    """``stage="any"`` fits rows 0 and 2; row 1 needs a TaskArithmeticMethod."""
    site, marker = tmp_path / "site", tmp_path / "median-calls.txt"
    _install_plugin(site)
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        "inputs:\n  models: [a, b, c]\n"
        "combos:\n  - [linear, slerp]\n  - [dare, median]\n  - [frankenmerge, median]\n"
        f"output: {tmp_path / 'out'}\n"
    )
    result = _evomerge(site, marker, data_cache_dir, "recipe", "run", str(recipe))
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert (
        f"{recipe}:5: combos.1.1: merge method 'median' cannot fill the task_arithmetic stage"
        in message
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
