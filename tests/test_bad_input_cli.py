"""Bad input at the command line: one line naming the file and field, exit 2, nothing written.

The cases came from an audit of every command with malformed recipes, result files and
options; each was a traceback, a silent acceptance, or a `validate` "ok" that `run`
then refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from evomerge.cli import app


@pytest.fixture
def llama(real_family) -> dict:  # type: ignore[no-untyped-def]
    """Real llama fine-tunes with their tokenizer (tests/real_families.py), as absolute dirs."""
    family = real_family("llama")
    return {"models": list(family.models), "base": family.base}


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    output = " ".join(result.output.split())
    assert "Traceback" not in output, result.output
    return result.exit_code, output


def write(tmp_path: Path, text: str | bytes, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def recipe_text(models: list[str], extra: str = "", out: Path | None = None) -> str:
    text = f"inputs:\n  models: [{', '.join(models)}]\n{extra}"
    return text + (f"output: {out}\n" if out else "")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "evolution: {generations: 2}\nevolution: {generations: 3}\n",
            ":4: evolution: given twice",
        ),
        (
            "evolution: {generations: true}\n",
            ":3: evolution.generations: Value error, expected a number, got a boolean",
        ),
        (
            "fitness: {weights: {perplexity: .inf}}\n",
            ":3: fitness.weights.perplexity: Input should be a finite number",
        ),
        ("fitness: {tasks: []}\n", ":3: fitness.tasks: List should have at least 1 item"),
        (
            "fitness: {max_length: 1}\n",
            ":3: fitness.max_length: Input should be greater than or equal to 2",
        ),
        (
            "fitness: {time_warmup: -1}\n",
            ":3: fitness.time_warmup: Input should be greater than or equal to 0",
        ),
        (
            "fitness: {report_max_items: 0}\n",
            ":3: fitness.report_max_items: Input should be greater than or equal to 1",
        ),
        (
            "fitness: {batch_tokens: lots}\n",
            ":3: fitness.batch_tokens: Input should be a valid integer",
        ),
        ("device: {device: gpu}\n", ":3: device.device: String should match pattern"),
    ],
)
def test_recipe_schema_refusals(tmp_path: Path, body: str, expected: str) -> None:
    path = write(tmp_path, recipe_text(["a", "b", "c"], body))
    code, output = invoke("recipe", "validate", str(path))
    assert code == 2 and output.startswith(f"error: {path}{expected}"), output


def test_a_merge_config_given_as_a_recipe() -> None:
    """`combos export` files and recipes/example-third-party.yaml are several YAML documents:
    PyYAML's "found another document" said nothing of what the file is."""
    shipped = Path(__file__).resolve().parents[1] / "recipes" / "example-third-party.yaml"
    for command in ("validate", "run"):
        code, output = invoke("recipe", command, str(shipped))
        assert code == 2 and output == (
            f"error: {shipped}: a merge config (merge_method:), not an evolution recipe; "
            f"run it with `evomerge combos run {shipped} --out OUT`"
        ), output


def test_recipe_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, b"name: caf\xe9\n")
    for command in ("validate", "run"):
        code, output = invoke("recipe", command, str(path))
        assert (
            code == 2
            and output == f"error: {path}: not UTF-8 text (byte 9): save the recipe as UTF-8"
        )


def test_validate_checks_the_inputs_as_run_does(tmp_path: Path, llama: dict) -> None:
    """`validate` says ok only where `run` would start: inputs, architecture, layer groups, output."""
    models = llama["models"]
    out = tmp_path / "out"
    cases = {
        "missing": (
            recipe_text([models[0], models[1], str(tmp_path / "nope")], out=out),
            f":2: inputs.models.2: {tmp_path / 'nope'}: path: not a directory",
        ),
        "duplicate": (
            recipe_text([models[0], models[0], models[1]], out=out),
            ": count: the 3 input models must be different dirs",
        ),
        "architecture": (
            recipe_text(models, "  architecture: qwen2\n", out=out),
            ":3: inputs.architecture: ",
        ),
        "base": (
            recipe_text(models, f"  base_model: {tmp_path / 'gone'}\n", out=out),
            f":3: inputs.base_model: {tmp_path / 'gone'}: path: not a directory",
        ),
        "expected_params": (
            recipe_text(models, "  expected_params: 10\n", out=out),
            ":3: inputs.expected_params: ",
        ),
        "layer_groups": (
            recipe_text(models, "evolution: {strategy: cmaes, layer_groups: 99}\n", out=out),
            ":3: evolution.layer_groups: 99 layer groups but the inputs have",
        ),
    }
    for name, (text, expected) in cases.items():
        path = write(tmp_path, text, f"{name}.yaml")
        for command in ("validate", "run"):
            code, output = invoke("recipe", command, str(path))
            assert code == 2 and output.startswith(f"error: {path}"), (name, command, output)
            assert expected in output, (name, command, output)
    assert not out.exists()
    good = write(tmp_path, recipe_text(models, out=out), "good.yaml")
    code, output = invoke("recipe", "validate", str(good))
    assert code == 0 and output.startswith(f"{good}: ok"), output


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_run_refuses_a_device_this_machine_lacks(tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = write(tmp_path, recipe_text(["a", "b", "c"], "device: {device: 'cuda:0'}\n", out=out))
    for command in ("validate", "run"):
        code, output = invoke("recipe", command, str(path))
        assert code == 2 and f"{path}:3: device.device: 'cuda:0' but torch" in output, output
    assert not out.exists()


def test_run_option_refusals(tmp_path: Path, llama: dict) -> None:
    out = tmp_path / "out"
    path = write(tmp_path, recipe_text(llama["models"], out=out))
    code, output = invoke("recipe", "run", str(path), "--resume", "--overwrite")
    assert code == 2 and output.startswith("error: --resume and --overwrite: give one")
    code, output = invoke("recipe", "run", str(path), "--generations", "-1")
    assert (
        code == 2 and output == "error: --generations: Input should be greater than or equal to 0"
    )
    a_file = write(tmp_path, "not a dir", "a-file")
    code, output = invoke("recipe", "run", str(path), "--out", str(a_file))
    assert code == 2 and output == f"error: output: {a_file} exists and is not a directory"
    assert not out.exists() and a_file.read_text() == "not a dir"


def test_lineage_rebuild_refusals(tmp_path: Path, llama: dict) -> None:
    result = {
        "champion_lineage": [
            {
                "id": "g0000-0",
                "generation": 0,
                "kind": "combo",
                "parents": ["input:1", "input:2", "input:3"],
                "seed": 0,
                "combo": "000",
            }
        ],
        "inputs": {"models": llama["models"]},
        "model": str(tmp_path / "champion"),
    }
    cases: dict[str, tuple[str | None, str]] = {
        "missing.json": (None, "not found"),
        "truncated.json": ('{"a":', "not an evomerge result.json (Expecting value"),
        "list.json": ("[]", "not an evomerge result.json (expected a JSON object)"),
        "no-lineage.json": ("{}", "champion_lineage: must be a non-empty list"),
        "bad-node.json": (
            json.dumps({**result, "champion_lineage": [{"foo": 1}]}),
            "champion_lineage.0: not a lineage node",
        ),
        "order.json": (
            json.dumps(
                {
                    **result,
                    "champion_lineage": [{**result["champion_lineage"][0], "parents": ["g9"]}],
                }
            ),
            "champion_lineage.0: parent 'g9' comes before its node",
        ),
        "moved-input.json": (
            json.dumps({**result, "inputs": {"models": [*llama["models"][:2], "/gone"]}}),
            "inputs: /gone: path: not a directory",
        ),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        code, output = invoke("lineage", "rebuild", str(path))
        assert code == 2 and output.startswith(f"error: {path}: {expected}"), (name, output)
    good = tmp_path / "result.json"
    good.write_text(json.dumps(result))
    code, output = invoke("lineage", "rebuild", str(good), "--device", "gpu")
    assert code == 2 and output.startswith("error: --device: 'gpu' is not a torch device")
    taken = tmp_path / "taken"
    (taken / "x").mkdir(parents=True)
    code, output = invoke("lineage", "rebuild", str(good), "--out", str(taken))
    assert (
        code == 2 and output == f"error: --out: {taken} is not empty; use --overwrite to replace it"
    )


def test_combos_refusals(tmp_path: Path, llama: dict) -> None:
    models = llama["models"]
    code, output = invoke("combos", "show", "", "--models", *models)
    assert code == 2 and output.startswith("error: combo label '': expected a 3-bit label")
    code, output = invoke("combos", "show", "010", "--models", *models, "--set", "tie.density=0.3")
    assert code == 2 and output == (
        "error: --set 'tie.density=0.3': the combo table has linear, slerp, dare, ties, "
        "frankenmerge, dfs, not 'tie'"
    )
    code, output = invoke("combos", "show", "--models", *models, "--set", "nope.x=1")
    assert code == 2 and output.startswith("error: --set 'nope.x=1': the combo table has")
    code, output = invoke("combos", "show", "010", "--models", *models, "--set", "dare.density=0.3")
    assert code == 0 and "note: --set 'dare.density=0.3': combo 010 does not run 'dare'" in output
    code, _ = invoke("combos", "show", "100", "--models", *models, "--set", "slerp.mode=multislerp")
    assert code == 0  # the user's method name, not the alias the stage is written as
    code, output = invoke(
        "combos",
        "export",
        "001",
        "--models",
        models[0],
        models[1],
        "/gone",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 2 and output.startswith("error: --models: /gone: not a directory")
    out = tmp_path / "export"
    code, _ = invoke("combos", "export", "001", "--models", *models, "--out", str(out))
    assert code == 0 and (out / "model.safetensors").is_file()
    (out / "stray.txt").write_text("mine")
    code, output = invoke("combos", "export", "001", "--models", *models, "--out", str(out))
    assert (
        code == 2 and output == f"error: --out: {out} is not empty; use --overwrite to replace it"
    )
    assert (out / "stray.txt").is_file()
    code, _ = invoke(
        "combos", "export", "001", "--models", *models, "--out", str(out), "--overwrite"
    )
    assert code == 0 and not (out / "stray.txt").exists() and (out / "model.safetensors").is_file()
    a_file = write(tmp_path, "x", "a-file")
    code, output = invoke("combos", "export", "001", "--models", *models, "--out", str(a_file))
    assert code == 2 and output == f"error: --out: {a_file} exists and is not a directory"


def test_eval_refusals_before_measuring(tmp_path: Path, llama: dict) -> None:
    model = llama["models"][0]
    bad_yaml = write(tmp_path, "weights: {perplexity: [1\n", "bad.yaml")
    typo = write(tmp_path, "wieghts: {perplexity: 1}\n", "typo.yaml")
    cases = {
        ("--device", "gpu"): "error: --device: 'gpu' is not a torch device",
        ("--config", str(bad_yaml)): f"error: {bad_yaml}:2: invalid YAML",
        ("--config", str(typo)): f"error: {typo}: wieghts: Extra inputs are not permitted",
        ("--reference", "/gone"): "error: --reference: /gone: not a model directory",
        ("--json", "/gone/x.json"): "error: --json: /gone: no such directory",
        ("--task-dir", "/gone"): "error: --task-dir: /gone: not a directory",
        ("--tasks", "nope"): "error: --tasks: unknown task(s) nope in the generated demo tasks;",
        ("--max-items", "0"): "error: --max-items must be at least 1, got 0",
        ("--sample", "last"): "error: --sample must be random or first, got 'last'",
    }
    for args, expected in cases.items():
        code, output = invoke("eval", model, *args)
        assert code == 2 and expected in output, (args, output)  # after weight-loading bars


def test_recipe_numbers_keep_pydantic_coercion(tmp_path: Path) -> None:
    """`1e-3` (a string to PyYAML), `8.0e+0` as an int and numpy numbers still load."""
    import numpy as np

    from evomerge.evolution.recipe import load_recipe
    from evomerge.fitness import FitnessConfig

    path = write(
        tmp_path,
        recipe_text(
            ["a", "b", "c"],
            "evolution: {generations: 8.0e+0, mutation: {sigma: 1e-3}}\n"
            "fitness: {cost_tolerance: 5e-2}\n",
        ),
    )
    recipe = load_recipe(path)
    assert recipe.evolution.generations == 8 and recipe.evolution.mutation.sigma == 0.001
    assert recipe.fitness.cost_tolerance == 0.05
    assert FitnessConfig(max_items=np.int64(10), cost_tolerance=np.float32(0.5)).max_items == 10
    # two merge keys in one mapping are not a duplicate key: YAML merges both
    path = write(
        tmp_path,
        recipe_text(["a", "b", "c"], "evolution:\n  <<: [{generations: 2}]\n  <<: {seed: 3}\n"),
        "merge.yaml",
    )
    merged = load_recipe(path).evolution
    assert merged.generations == 2 and merged.seed == 3


def test_validate_skips_a_demo_family_run_would_remake(tmp_path: Path) -> None:
    family = tmp_path / "fam"
    for i in (1, 2, 3):  # half-made: configs, no weights, no manifest
        (family / f"model_{i}").mkdir(parents=True)
        (family / f"model_{i}" / "config.json").write_text("{}")
    path = write(tmp_path, f"inputs:\n  phase1: {{out: {family}}}\noutput: {tmp_path / 'o'}\n")
    code, output = invoke("recipe", "validate", str(path))
    assert code == 0 and output.startswith(f"{path}: ok"), output


def test_schema_only_validate(tmp_path: Path) -> None:
    path = write(tmp_path, recipe_text(["/far/a", "/far/b", "/far/c"], "device: {device: cuda}\n"))
    code, output = invoke("recipe", "validate", str(path), "--schema-only")
    assert code == 0 and output.startswith(f"{path}: ok"), output


def test_overwrite_never_deletes_what_the_command_reads(
    tmp_path: Path, llama: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = llama["models"]
    parent = str(Path(models[0]).parent)  # holds the inputs
    for args in (
        ("combos", "export", "001", "--models", *models, "--out", parent, "--overwrite"),
        ("combos", "export", "001", "--models", *models, "--out", models[0], "--overwrite"),
    ):
        code, output = invoke(*args)
        assert code == 2 and "which this command reads; not replaced" in output, output
    assert all((Path(m) / "config.json").is_file() for m in models)
    work = tmp_path / "work"
    (work / "keep.txt").parent.mkdir()
    (work / "keep.txt").write_text("mine")
    monkeypatch.chdir(work)
    code, output = invoke(
        "combos", "export", "001", "--models", *models, "--out", ".", "--overwrite"
    )
    assert code == 2 and "is the working, home or root directory" in output, output
    assert (work / "keep.txt").read_text() == "mine"
    recipe = write(tmp_path, recipe_text(models, out=Path(parent)), "over.yaml")
    code, output = invoke("recipe", "run", str(recipe), "--overwrite")
    assert code == 2 and "--overwrite would delete it, so it is refused" in output, output
    assert all((Path(m) / "config.json").is_file() for m in models)


def test_staged_dir_replaces_only_on_success(tmp_path: Path) -> None:
    from evomerge.output_dir import staged_dir

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_dir(out) as staging:
        (staging / "new.txt").write_text("half")
        raise RuntimeError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left over
    assert (out / "old.txt").read_text() == "old"
    with staged_dir(out) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(
    ("raised", "code", "needle"),
    [
        (KeyboardInterrupt(), 130, "interrupted: "),
        (RuntimeError("boom"), 3, "the run stopped on an unexpected error (above; exit 3"),
    ],
)
def test_a_run_that_stops_never_exits_1(
    raised: BaseException, code: int, needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1 means "finished below target" to a script; an interrupt or a crash says otherwise
    (click's own code for both is 1), and how to go on: nothing to resume before a
    generation was checkpointed (--resume would refuse), --resume after."""
    from evomerge.run import Run

    def stop(self: Run) -> None:
        raise raised

    monkeypatch.setattr(Run, "execute", stop)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    result = CliRunner().invoke(app, ["recipe", "run", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code == code, result.output
    assert needle in " ".join(result.output.split())
    assert "nothing to resume: run it again with --overwrite" in " ".join(result.output.split())
    from evomerge.evolution.checkpoint import Checkpoint

    Checkpoint(tmp_path / "o").save_state({"recipe_hash": "x"})
    result = CliRunner().invoke(app, ["recipe", "run", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code == code, result.output
    assert "--resume` continues from the last finished generation" in " ".join(
        result.output.split()
    )
