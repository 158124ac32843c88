"""Inputs named as Hugging Face users name them: repo ids, read from the local cache only.

The cache here is built by hand in the layout huggingface_hub writes
(``models--ORG--NAME/refs/main`` holding a commit hash, ``snapshots/HASH/`` the
files), from a real llama family (tests/real_families.py); nothing is downloaded,
and the tests run with ``HF_HUB_OFFLINE=1`` as CI does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.evolution.recipe import load_recipe
from evomerge.hub_cache import looks_like_repo_id, model_location

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(real_family, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """``org/ft-1..3`` and ``org/base`` cached (their snapshot dirs returned), as
    huggingface_hub lays a downloaded repo out."""
    import huggingface_hub.constants

    family = real_family("llama")
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    snapshots = {}
    for repo, src in [
        *((f"org/ft-{i + 1}", m) for i, m in enumerate(family.models)),
        ("org/base", family.base),
    ]:
        entry = cache / ("models--" + repo.replace("/", "--"))
        snapshot = entry / "snapshots" / COMMIT
        shutil.copytree(src, snapshot)
        (entry / "refs").mkdir()
        (entry / "refs" / "main").write_text(COMMIT)
        snapshots[repo] = snapshot
    return snapshots


def _recipe(tmp_path: Path, models: list[str], base: str) -> Path:
    data = {
        "inputs": {"models": models, "base_model": base},
        "evolution": {"strategy": "cmaes", "generations": 1},
        "device": {"device": "cpu"},
        "output": str(tmp_path / "out"),
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_recipe_names_its_inputs_by_cached_repo_ids(
    hub_cache: dict[str, Path], tmp_path: Path
) -> None:
    recipe_path = _recipe(tmp_path, ["org/ft-1", "org/ft-2", "org/ft-3"], "org/base")
    recipe = load_recipe(recipe_path)
    assert recipe.inputs.models == [hub_cache[f"org/ft-{i}"] for i in (1, 2, 3)]
    assert recipe.inputs.base_model == hub_cache["org/base"]
    result = CliRunner().invoke(app, ["recipe", "validate", str(recipe_path)])
    assert result.exit_code == 0, result.output
    assert "memory: 4 inputs and 2 candidates of" in result.output


def test_a_repo_id_not_in_the_cache_is_not_downloaded(
    hub_cache: dict[str, Path], tmp_path: Path
) -> None:
    recipe_path = _recipe(tmp_path, ["org/ft-1", "org/ft-2", "org/ft-9"], "org/base")
    result = CliRunner().invoke(app, ["recipe", "validate", str(recipe_path)])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert message.startswith(f"error: {recipe_path}:5: inputs.models.2: {tmp_path / 'org/ft-9'}")
    assert message.endswith(
        "path: not a directory (expected a save_pretrained model dir) (nor is org/ft-9 in the "
        "local Hugging Face cache: evomerge downloads nothing; fetch it first, e.g. `hf "
        "download org/ft-9`)"
    )
    result = CliRunner().invoke(app, ["eval", "org/ft-9"])
    assert (
        result.exit_code == 2 and "nor is org/ft-9 in the local Hugging Face cache" in result.output
    )


def test_combos_export_merges_cached_repo_ids(hub_cache: dict[str, Path], tmp_path: Path) -> None:
    """The merge reads the snapshots; the card and merge config name them."""
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("the quick brown fox jumps over the lazy dog. " * 20)
    out = tmp_path / "merged"
    args = ["combos", "export", "010", "--models", "org/ft-1", "org/ft-2", "org/ft-3"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--calibration", str(calibration)])
    assert result.exit_code == 0, result.output
    assert str(hub_cache["org/ft-3"]) in (out / "merge_config.yaml").read_text()
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    result = CliRunner().invoke(app, [*args[:-1], "org/nope", "--out", str(tmp_path / "x")])
    assert (
        result.exit_code == 2 and "nor is org/nope in the local Hugging Face cache" in result.output
    )


def test_a_local_dir_wins_over_a_repo_id(hub_cache: dict[str, Path], tmp_path: Path) -> None:
    local = tmp_path / "org" / "ft-1"
    local.mkdir(parents=True)
    assert model_location("org/ft-1", tmp_path) == local
    assert model_location("org/ft-1", tmp_path / "elsewhere") == hub_cache["org/ft-1"]
    assert model_location("../org/ft-1", tmp_path / "a") == local  # a path, never a repo id


@pytest.mark.parametrize(
    ("name", "repo"),
    [
        ("org/ft-1", True),
        ("meta-llama/Llama-3.1-8B", True),
        ("a/b/c", False),
        ("./x", False),
        ("../org/name", False),
        ("/abs/path", False),
        ("name", False),
        ("org/name.", False),
    ],
)
def test_what_reads_as_a_repo_id(name: str, repo: bool) -> None:
    assert looks_like_repo_id(name) is repo
