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
        "path: not a directory (expected a save_pretrained model dir) (if org/ft-9 is a Hugging "
        "Face repo id: the local cache has no complete snapshot of its main revision, and "
        "evomerge downloads nothing; fetch it first, e.g. `hf download org/ft-9`)"
    )
    result = CliRunner().invoke(app, ["eval", "org/ft-9"])
    assert result.exit_code == 2
    assert "(if org/ft-9 is a Hugging Face repo id: the local cache has no" in result.output


def test_no_lookup_touches_the_network(
    hub_cache: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even with the Hub client online (HF_HUB_OFFLINE off), a cached and an uncached repo
    id are looked up without a request: the calls snapshot_download makes online fail."""
    import huggingface_hub.constants
    from huggingface_hub import HfApi

    from evomerge.hub_cache import cached_snapshot

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a request to the Hub")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    for call in ("repo_info", "model_info", "list_repo_tree", "list_repo_files"):
        monkeypatch.setattr(HfApi, call, no_network)
    assert cached_snapshot("org/ft-1") == hub_cache["org/ft-1"]
    assert cached_snapshot("org/ft-9") is None
    assert model_location("org/ft-2", tmp_path) == hub_cache["org/ft-2"]


def test_combos_merge_cached_repo_ids(hub_cache: dict[str, Path], tmp_path: Path) -> None:
    """`export` reads the snapshots (its merge_config.yaml names them, to run here); its card
    names the repos and their revision, with the Hub's `base_model` metadata. `show` prints
    the names as given (a config to move to another machine); `run` refuses a config that
    names a repo id, for either engine, pointing at the cached snapshot (mergekit would
    otherwise look the name up on the Hub)."""
    from huggingface_hub import ModelCard

    calibration = tmp_path / "calibration.txt"
    calibration.write_text("the quick brown fox jumps over the lazy dog. " * 20)
    out = tmp_path / "merged"
    repos = ["org/ft-1", "org/ft-2", "org/ft-3"]
    args = ["combos", "export", "010", "--models", *repos]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--calibration", str(calibration)])
    assert result.exit_code == 0, result.output
    assert str(hub_cache["org/ft-3"]) in (out / "merge_config.yaml").read_text()
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == repos
    assert f"- `org/ft-2` (revision {COMMIT[:12]})" in card.text
    assert str(hub_cache["org/ft-2"]) not in card.text.split("## Merge configuration")[0]
    result = CliRunner().invoke(app, [*args[:-1], "org/nope", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "--models: org/nope: not a directory" in result.output
    assert "(if org/nope is a Hugging Face repo id" in result.output

    shown = CliRunner().invoke(app, ["combos", "show", "010", "--models", *repos])
    assert shown.exit_code == 0 and "model: org/ft-1" in shown.output
    assert str(hub_cache["org/ft-1"]) not in shown.output
    config = tmp_path / "010.yaml"
    config.write_text(shown.output)
    for engine in ("evomerge", "mergekit"):
        result = CliRunner().invoke(
            app, ["combos", "run", str(config), "--out", str(tmp_path / engine), "--engine", engine]
        )
        assert result.exit_code == 2, result.output
        message = " ".join(result.output.split())
        assert message.startswith(f"error: {config}: model org/ft-1: not a directory")
        assert f"has org/ft-1 at {hub_cache['org/ft-1']}: name that dir in the config" in message
        assert not (tmp_path / engine).exists()


def test_combos_recipe_base_given_by_repo_id(hub_cache: dict[str, Path], tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, ["org/ft-1", "org/ft-2", "org/ft-3"], "org/base")
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("the quick brown fox jumps over the lazy dog. " * 20)
    out = tmp_path / "merged"
    result = CliRunner().invoke(
        app,
        ["combos", "export", "011", "--recipe", str(recipe), "--base", "org/base",
         "--reference", "ancestor", "--out", str(out), "--calibration", str(calibration)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert str(hub_cache["org/base"]) in (out / "merge_config.yaml").read_text()


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
        ("org/name@main", True),
        (f"org/name@{COMMIT}", True),
        ("org/name@refs/pr/1", True),
        ("org/name@", False),
        ("org/name@a@b", False),
        ("org/name@-x", False),
        ("org/name@feature+x", True),
    ],
)
def test_what_reads_as_a_repo_id(name: str, repo: bool) -> None:
    assert looks_like_repo_id(name) is repo


def test_recipe_init_keeps_repo_ids(hub_cache: dict[str, Path], tmp_path: Path) -> None:
    """The recipe names the repos as given; loading it resolves them to the cache again."""
    recipe = tmp_path / "hub.yaml"
    args = ["--models", "org/ft-1", "org/ft-2", "org/ft-3", "--base", "org/base"]
    result = CliRunner().invoke(app, ["recipe", "init", str(recipe), *args])
    assert result.exit_code == 0, result.output
    text = recipe.read_text()
    assert "    - org/ft-2\n" in text and "  base_model: org/base " in text
    assert load_recipe(recipe).inputs.models == [hub_cache[f"org/ft-{i}"] for i in (1, 2, 3)]


def test_recipe_init_writes_a_path_where_a_dir_would_shadow_the_repo_id(
    hub_cache: dict[str, Path], tmp_path: Path
) -> None:
    """A dir named like the repo beside the recipe would win over the cache when the recipe
    loads, so the checked snapshot is written as a path instead of the repo id."""
    project = tmp_path / "project"
    (project / "org" / "ft-1").mkdir(parents=True)
    recipe = project / "r.yaml"
    args = ["--models", "org/ft-1", "org/ft-2", "org/ft-3"]
    result = CliRunner().invoke(app, ["recipe", "init", str(recipe), *args])
    assert result.exit_code == 0, result.output
    text = recipe.read_text()
    assert "    - org/ft-2\n" in text and "    - org/ft-1\n" not in text
    assert load_recipe(recipe).inputs.models == [hub_cache[f"org/ft-{i}"] for i in (1, 2, 3)]


def _move_main(entry: Path, src: Path, commit: str) -> Path:
    """A newer revision of a cached repo: its snapshot beside the old one, refs/main moved."""
    snapshot = entry / "snapshots" / commit
    shutil.copytree(src, snapshot)
    (entry / "refs" / "main").write_text(commit)
    return snapshot


def test_a_pinned_revision_and_a_resume_after_main_moved(
    hub_cache: dict[str, Path], tmp_path: Path
) -> None:
    """``org/name@REV`` reads that cached revision (mergekit's spelling); when refs/main moves
    under a run, --resume names the input and the pin that resumes it, and the pinned
    recipe resumes (same identity as the run's)."""
    from evomerge.evolution.checkpoint import Checkpoint, CheckpointError
    from evomerge.hub_cache import cached_snapshot
    from evomerge.run.context import recipe_hash, recipe_identity

    models = ["org/ft-1", "org/ft-2", "org/ft-3"]
    before = load_recipe(_recipe(tmp_path, models, "org/base"))
    checkpoint = Checkpoint(tmp_path / "out")
    checkpoint.save_state({"recipe_hash": recipe_hash(before), "recipe": recipe_identity(before)})

    newer = "fedcba9876543210fedcba9876543210fedcba98"
    moved = _move_main(hub_cache["org/ft-2"].parents[1], hub_cache["org/ft-1"], newer)
    assert cached_snapshot("org/ft-2") == moved
    assert cached_snapshot(f"org/ft-2@{COMMIT}") == hub_cache["org/ft-2"]
    assert cached_snapshot("org/ft-2@main") == moved
    assert cached_snapshot("org/ft-2@" + "9" * 40) is None

    after = load_recipe(_recipe(tmp_path, models, "org/base"))
    with pytest.raises(CheckpointError) as refused:
        checkpoint.load_state(recipe_hash(after), recipe_identity(after))
    assert (
        f"inputs.models[1]: org/ft-2 now resolves to cached revision {newer[:12]}, the "
        f"checkpoint's was {COMMIT[:12]} (write org/ft-2@{COMMIT} to resume it)"
    ) in str(refused.value)

    pinned = load_recipe(
        _recipe(tmp_path, ["org/ft-1", f"org/ft-2@{COMMIT}", "org/ft-3"], "org/base")
    )
    assert pinned.inputs.models[1] == hub_cache["org/ft-2"]
    assert checkpoint.load_state(recipe_hash(pinned), recipe_identity(pinned))["recipe_hash"]


def test_an_uncached_revision_says_how_to_fetch_it(
    hub_cache: dict[str, Path], tmp_path: Path
) -> None:
    name = "org/ft-1@" + "9" * 40
    result = CliRunner().invoke(
        app,
        ["recipe", "validate", str(_recipe(tmp_path, [name, "org/ft-2", "org/ft-3"], "org/base"))],
    )
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert (
        f"no complete snapshot of revision {'9' * 40}, and evomerge downloads nothing; fetch "
        f"it first, e.g. `hf download org/ft-1 --revision {'9' * 40}`)"
    ) in message


def test_the_same_revisions_from_another_cache_dir_resume(
    hub_cache: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint names cached inputs as ``org/name@commit``: the same files in a moved
    cache (another HF_HOME) resume; the snapshot dirs themselves differ."""
    import huggingface_hub.constants

    from evomerge.evolution.checkpoint import Checkpoint
    from evomerge.run.context import recipe_hash, recipe_identity

    models = ["org/ft-1", "org/ft-2", "org/ft-3"]
    before = load_recipe(_recipe(tmp_path, models, "org/base"))
    assert recipe_identity(before)["inputs"]["models"][1] == f"org/ft-2@{COMMIT}"
    checkpoint = Checkpoint(tmp_path / "out")
    checkpoint.save_state({"recipe_hash": recipe_hash(before), "recipe": recipe_identity(before)})
    moved = tmp_path / "moved-cache"
    shutil.copytree(hub_cache["org/ft-1"].parents[2], moved)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(moved))
    after = load_recipe(_recipe(tmp_path, models, "org/base"))
    assert after.inputs.models != before.inputs.models
    assert checkpoint.load_state(recipe_hash(after), recipe_identity(after))
