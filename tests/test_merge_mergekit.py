"""The generated YAML runs in mergekit itself and gives the engine's tensors; CLI; third-party plugins."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from evomerge.merge import COMBO_LABELS, ComboConfig, InputSet, MergeEngine, StageParams

ROOT = Path(__file__).resolve().parents[1]


def _load(path: str | Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).state_dict()


def _assert_same(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert set(theirs) <= set(ours)
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, atol=1e-5, rtol=0, msg=key)


@pytest.fixture(scope="module")
def engine_inputs(tiny_llama_family, tiny_llama_dirs):  # type: ignore[no-untyped-def]
    return InputSet(
        tiny_llama_family.models,
        base=tiny_llama_family.base,
        names=tiny_llama_dirs["models"],
        base_name=tiny_llama_dirs["base"],
    )


CASES = [(label, StageParams()) for label in COMBO_LABELS] + [
    ("001", StageParams(reference="ancestor")),
    ("110", StageParams(reference="ancestor", methods={"slerp": {"mode": "multislerp"}})),
]


@pytest.mark.parametrize(
    ("label", "params"), CASES, ids=[f"{c[0]}-{c[1].reference}" for c in CASES]
)
def test_generated_yaml_in_mergekit_matches_engine(  # type: ignore[no-untyped-def]
    label, params, tiny_llama_family, engine_inputs, tmp_path
) -> None:
    from evomerge.merge.mergekit_bridge import run_with_mergekit

    model = tiny_llama_family.build()
    out = model.state_dict()
    engine = MergeEngine(params, calibration=tiny_llama_family.calibration())
    result = engine.merge_combo(label, engine_inputs, out=out, seed=7, scratch_model=model)
    assert "merge_method: frankenmerge" not in result.config_yaml  # resolved to passthrough slices
    run_with_mergekit(result.config_yaml, tmp_path / "out", intermediate_dir=tmp_path / "stages")
    _assert_same(out, _load(tmp_path / "out"))


def test_registered_method_runs_by_name_through_run_merge(
    tiny_llama_family, tiny_llama_dirs, engine_inputs, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.merge_methods import registry as mk_registry
    from mergekit.options import MergeOptions

    from evomerge.merge.mergekit_bridge import register_with_mergekit

    register_with_mergekit()
    assert {"dare", "dfs", "slerp_chain", "evomerge_ties"} <= {
        m.spec.name for m in mk_registry.registered_methods()
    }
    text = "merge_method: dfs\nparameters: {per_row: true}\ndtype: float32\nmodels:\n" + "".join(
        f"- model: {p}\n" for p in tiny_llama_dirs["models"]
    )
    config = MergeConfiguration.model_validate(yaml.safe_load(text))
    run_merge(
        config,
        str(tmp_path / "dfs"),
        options=MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True),
    )
    ours: dict[str, torch.Tensor] = {}
    MergeEngine().run_config(ComboConfig.from_yaml(text), engine_inputs, out=ours)
    _assert_same(ours, _load(tmp_path / "dfs"))


def _write_tokenizer(directory: str) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(["[UNK]", *"abcdefghijklmnopqrstuvwxyz .,"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(directory)


def test_combos_cli_show_and_export(
    tiny_llama_family, tiny_llama_dirs, engine_inputs, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from evomerge.cli import app

    runner = CliRunner()
    paths = tiny_llama_dirs["models"]
    shown = runner.invoke(app, ["combos", "show", "010", "--models", *paths])
    assert shown.exit_code == 0, shown.output
    assert ComboConfig.from_yaml(shown.output).stages[1].merge_method == "ties"

    missing = runner.invoke(
        app, ["combos", "export", "010", "--models", *paths, "--out", str(tmp_path / "x")]
    )
    assert missing.exit_code == 2 and "needs --calibration" in missing.output

    _write_tokenizer(paths[0])
    text = tmp_path / "calibration.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 20)
    out_dir = tmp_path / "export"
    done = runner.invoke(
        app,
        [
            "combos",
            "export",
            "010",
            "--models",
            *paths,
            "--out",
            str(out_dir),
            "--calibration",
            str(text),
            "--seed",
            "3",
        ],
    )
    assert done.exit_code == 0, done.output
    assert (out_dir / "tokenizer.json").is_file() and (out_dir / "merge_config.yaml").is_file()
    from huggingface_hub import ModelCard

    card = ModelCard.load(out_dir / "README.md")  # as mergekit writes one for each merge
    assert "merge" in card.data.tags and card.data.library_name == "transformers"
    assert "from combo `010`" in card.text and f"- `{paths[2]}`" in card.text
    assert (out_dir / "merge_config.yaml").read_text().rstrip() in card.text
    saved = _load(out_dir)
    # Replaying the saved (resolved) config in memory gives the saved weights.
    replay: dict[str, torch.Tensor] = {}
    MergeEngine().run_config(
        ComboConfig.from_yaml((out_dir / "merge_config.yaml").read_text()),
        engine_inputs,
        out=replay,
    )
    _assert_same(replay, saved)


def _docs_plugin_files() -> dict[str, str]:
    """The example package of docs/plugins.md, file by file (each block starts with ``# <path>``)."""
    docs = (ROOT / "docs" / "plugins.md").read_text()
    section = docs[docs.index("## A complete merge-method plugin") :]
    files = {}
    for block in re.findall(r"```(?:toml|python)\n(.*?)```", section, re.S):
        first, _, body = block.partition("\n")
        files[first.removeprefix("# ").strip()] = body
    assert set(files) == {
        "evomerge-median/pyproject.toml",
        "evomerge-median/evomerge_median/__init__.py",
    }
    code_lines = [line for body in files.values() for line in body.splitlines() if line.strip()]
    assert len(code_lines) + len(files) < 30  # + the two "# <path>" header lines
    return files


CHECK = """
import sys
from typer.testing import CliRunner
from evomerge.cli import app
recipe, out_evo, out_mk = sys.argv[1:4]
runner = CliRunner()
listing = runner.invoke(app, ["plugins", "list"], terminal_width=200)
print(listing.output)
for out, engine in ((out_evo, "evomerge"), (out_mk, "mergekit")):
    done = runner.invoke(app, ["combos", "run", recipe, "--out", out, "--engine", engine])
    assert done.exit_code == 0, done.output
"""


@pytest.fixture
def median_plugin(tmp_path: Path):  # type: ignore[no-untyped-def]
    for rel, text in _docs_plugin_files().items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    package = tmp_path / "evomerge-median"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-build-isolation", "-e", str(package)],
        check=True,
        timeout=300,
    )
    try:
        yield package
    finally:
        subprocess.run([*pip, "uninstall", "-y", "evomerge-median"], check=False, timeout=300)


@pytest.mark.slow  # pip install -e + one fresh `evomerge` process (~20 s on 2 idle cores)
def test_third_party_merge_plugin_is_listed_and_runs_from_a_recipe(
    median_plugin, tiny_llama_family, tiny_llama_dirs, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from evomerge.merge import TaskArithmeticMethod, get_method
    from evomerge.merge.base import apply_task_arithmetic

    ties = get_method("ties")
    assert isinstance(ties, TaskArithmeticMethod)

    recipe = (ROOT / "recipes" / "example-third-party.yaml").read_text()
    for i, path in enumerate(tiny_llama_dirs["models"], start=1):
        recipe = recipe.replace(f"runs/phase1-tiny/model_{i}", path)
    (tmp_path / "recipe.yaml").write_text(recipe)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    checked = subprocess.run(
        [
            sys.executable,
            "-c",
            CHECK,
            str(tmp_path / "recipe.yaml"),
            str(tmp_path / "evo"),
            str(tmp_path / "mk"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "merge_methods: median" in checked.stdout and "evomerge-median 0.1.0" in checked.stdout
    # Expected by hand: stage 1 = element-wise median, stage 2 = TIES against it.
    models = tiny_llama_family.models
    expected = {}
    for key in models[0]:
        median = torch.stack([m[key] for m in models]).median(dim=0).values
        expected[key] = apply_task_arithmetic(
            ties,
            median,
            [m[key] - median for m in models],
            weights=[1 / 3] * 3,
            name=key,
            params={"density": 0.2, "normalize": True, "lambda": 1.0},
        )
    _assert_same(expected, _load(tmp_path / "evo"))
    _assert_same(expected, _load(tmp_path / "mk"))


@pytest.mark.parametrize("label", ["000", "111"])
def test_trm_titans_combo_in_mergekit_matches_engine(label, tiny_trm_family, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from evomerge.merge.mergekit_bridge import run_with_mergekit

    family = tiny_trm_family
    paths = []
    for i, state in enumerate(family.models, start=1):
        family.build(state).save_pretrained(tmp_path / f"model_{i}")
        paths.append(str(tmp_path / f"model_{i}"))
    model = family.build()
    out = model.state_dict()
    engine = MergeEngine(calibration=family.calibration(shape=(1, 8)))
    result = engine.merge_combo(
        label, InputSet(family.models, names=paths), out=out, seed=2, scratch_model=model
    )
    run_with_mergekit(result.config_yaml, tmp_path / "out", intermediate_dir=tmp_path / "stages")
    _assert_same(out, _load(tmp_path / "out"))
