"""Real transformers families end to end (issue 13 item 1): every combo exports a loadable model.

For llama, mistral, qwen2, qwen3, gemma2 and phi3 (toy size, built locally by
``tests/real_families.py``), each of the eight combos goes through the CLI
``evomerge combos export`` and must give a model ``AutoModelForCausalLM`` loads
and generates with, finite, with the inputs' config (GQA shapes, rope scaling,
tied embeddings), tokenizer files and generation config. The selection stage's
result (frankenmerge's passthrough slices, dfs) is replayed by mergekit itself
through its own architecture definitions, and must give the same tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from real_families import FAMILY_NAMES, RealFamily
from safetensors.torch import load_file
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.merge import COMBO_LABELS

#: config.json / generation_config.json keys that legitimately differ between two saves.
VOLATILE = {"transformers_version", "_name_or_path"}
#: Files save_pretrained writes for the demo tokenizer (what the merged dir must carry).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _json(path: Path) -> dict[str, Any]:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in VOLATILE}


def _export(family: RealFamily, label: str, out: Path, calibration: Path) -> None:
    args = ["combos", "export", label, "--models", *family.models, "--out", str(out)]
    args += ["--calibration", str(calibration), "--seed", "1"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output


def _load(path: Path | str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def exported(real_family, calibration_text: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``exported(name, label)`` -> the dir ``combos export`` wrote (each exported once)."""
    root = tmp_path_factory.mktemp("exported")
    done: dict[tuple[str, str], Path] = {}

    def get(name: str, label: str) -> Path:
        if (name, label) not in done:
            out = root / f"{name}-{label}"
            _export(real_family(name), label, out, calibration_text)
            done[(name, label)] = out
        return done[(name, label)]

    return get


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_family_is_three_related_distinct_finetunes(name: str, real_family) -> None:  # type: ignore[no-untyped-def]
    """The fixture's promise: GQA, rope scaling / tying as configured, related but distinct."""
    from real_families import FAMILY_CONFIGS, weight_cosine

    family = real_family(name)
    base = _load(family.base).state_dict()
    models = [_load(p).state_dict() for p in family.models]
    config = _load(family.models[0]).config
    assert config.model_type == name
    assert config.num_key_value_heads < config.num_attention_heads
    assert config.tie_word_embeddings == FAMILY_CONFIGS[name]["tie_word_embeddings"]
    if "rope_scaling" in FAMILY_CONFIGS[name]:
        assert (
            config.rope_parameters["rope_type"] == FAMILY_CONFIGS[name]["rope_scaling"]["rope_type"]
        )
    for model in models:
        assert weight_cosine(base, model) > 0.95
        assert not all(torch.equal(base[k], model[k]) for k in base)
    assert not all(torch.equal(models[0][k], models[1][k]) for k in base)


@pytest.mark.parametrize("label", COMBO_LABELS)
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_every_combo_exports_a_loadable_faithful_model(
    name: str, label: str, real_family, exported
) -> None:  # type: ignore[no-untyped-def]
    family = real_family(name)
    out = exported(name, label)
    source = Path(family.models[0])

    # config (GQA, head_dim, rope scaling, tying, layer count) and generation config survive
    assert _json(out / "config.json") == _json(source / "config.json")
    assert _json(out / "generation_config.json") == _json(source / "generation_config.json")
    for file in TOKENIZER_FILES:
        assert (out / file).read_bytes() == (source / file).read_bytes(), file

    # the same tensors, shapes and dtypes as the inputs: tied ones stored once, as they were
    saved, original = (
        load_file(str(out / "model.safetensors")),
        load_file(str(source / "model.safetensors")),
    )
    assert {k: (v.shape, v.dtype) for k, v in saved.items()} == {
        k: (v.shape, v.dtype) for k, v in original.items()
    }
    assert all(torch.isfinite(v).all() for v in saved.values())

    model = _load(out)
    head, embed = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    if family.tied:
        assert head.data_ptr() == embed.data_ptr()
        if "lm_head.weight" in saved:
            torch.testing.assert_close(saved["lm_head.weight"], saved["model.embed_tokens.weight"])
    else:
        assert head.data_ptr() != embed.data_ptr()
        torch.testing.assert_close(head.detach(), saved["lm_head.weight"], rtol=0, atol=0)
    k_proj = next(
        p for n, p in model.named_parameters() if n.endswith(("k_proj.weight", "qkv_proj.weight"))
    )
    heads = (
        model.config.num_attention_heads + 2 * model.config.num_key_value_heads
        if name == "phi3"  # fused q, k, v
        else model.config.num_key_value_heads
    )
    assert k_proj.shape == (heads * model.config.head_dim, model.config.hidden_size)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("The old sailor said", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        generated = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert torch.isfinite(logits).all()
    assert generated.shape == (1, ids.shape[1] + 4)


def test_combos_export_names_the_input_that_differs(
    real_family, calibration_text: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Inputs are read from their files as the merge goes; one of another family is a
    one-line error naming its config before anything is merged or written."""
    llama, qwen = real_family("llama"), real_family("qwen2")
    out = tmp_path / "x"
    models = [*llama.models[:2], qwen.models[0]]
    args = ["combos", "export", "011", "--models", *models, "--out", str(out)]
    done = CliRunner().invoke(app, [*args, "--calibration", str(calibration_text)])
    assert done.exit_code == 2
    message = done.output.strip().splitlines()[-1]  # after transformers' loading bar
    assert message == (
        f"error: {qwen.models[0]}/config.json: model_type: is 'qwen2', expected 'llama'"
    )
    assert not out.exists()


@pytest.mark.parametrize("label", ["000", "001"])  # b2: frankenmerge (passthrough slices), dfs
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_selection_stage_replays_in_mergekit(
    name: str, label: str, real_family, exported, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The exported (resolved) config, run by mergekit with its own architecture definition
    for the family, gives the tensors evomerge exported."""
    from evomerge.merge.mergekit_bridge import run_with_mergekit

    out = exported(name, label)
    config_yaml = (out / "merge_config.yaml").read_text()
    assert ("passthrough" in config_yaml) == (label[2] == "0")
    run_with_mergekit(config_yaml, tmp_path / "mk", intermediate_dir=tmp_path / "stages")
    _assert_same_model(out, tmp_path / "mk")


def _assert_same_model(ours: Path, theirs: Path) -> None:
    a, b = _load(ours).state_dict(), _load(theirs).state_dict()
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_layer_slices_from_different_models_match_mergekit(
    name: str, real_family, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Passthrough slices taking each layer from another fine-tune: evomerge's replay and
    mergekit's (pre-layer tensors from the first slice's model, post-layer from the last's,
    tied head dropped) agree, and the layers really are the chosen models'."""
    family = real_family(name)
    m1, m2, m3 = family.models
    text = (
        "merge_method: passthrough\ndtype: float32\nslices:\n"
        f"- sources: [{{model: {m2}, layer_range: [0, 1]}}]\n"
        f"- sources: [{{model: {m3}, layer_range: [1, 2]}}]\n"
    )
    config = tmp_path / "slices.yaml"
    config.write_text(text)
    runner = CliRunner()
    for engine in ("evomerge", "mergekit"):
        done = runner.invoke(
            app, ["combos", "run", str(config), "--out", str(tmp_path / engine), "--engine", engine]
        )
        assert done.exit_code == 0, done.output
    _assert_same_model(tmp_path / "evomerge", tmp_path / "mergekit")
    merged = _load(tmp_path / "evomerge").state_dict()
    second, third = _load(m2).state_dict(), _load(m3).state_dict()
    for key, value in merged.items():
        want = third if (".layers.1." in key or key == "model.norm.weight") else second
        if key == "lm_head.weight" and not family.tied:
            want = third
        torch.testing.assert_close(value, want[key], atol=0, rtol=0, msg=key)


# ------------------------------------------------------------------ recipe run (issue 11 / 13)
def _recipe_file(family: RealFamily, tmp: Path, architecture: str | None) -> Path:
    """The smallest real run: 1 generation, 4 items per task, no W&B, CPU."""
    import yaml

    inputs: dict[str, Any] = {"models": list(family.models), "base_model": family.base}
    if architecture is not None:
        inputs["architecture"] = architecture
    data = {
        "name": f"{family.name}-finetunes",
        "inputs": inputs,
        "evolution": {"generations": 1, "seed": 0},
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
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module", params=["llama", None], ids=["architecture-llama", "default"])
def llama_run(
    request, real_family, data_cache_dir: Path, tmp_path_factory
) -> tuple[RealFamily, Path, Any]:  # type: ignore[no-untyped-def]
    """``evomerge recipe run`` on three llama fine-tunes, naming ``inputs.architecture: llama``
    or leaving it to default to the inputs' own model_type."""
    import os

    os.environ["EVOMERGE_CACHE"] = str(data_cache_dir)
    family = real_family("llama")
    tmp = tmp_path_factory.mktemp(f"llama-run-{request.param or 'default'}")
    recipe = _recipe_file(family, tmp, request.param)
    result = CliRunner().invoke(app, ["recipe", "run", str(recipe), "--quiet"])
    return family, tmp / "out", result


@pytest.mark.slow  # two evolution runs (gen 0 + 1 generation each)
def test_recipe_run_on_llama_finetunes_gives_a_loadable_champion(llama_run) -> None:  # type: ignore[no-untyped-def]
    """Issue 11, last "Must hold": exit 0 or 1 and a champion AutoModelForCausalLM loads."""
    _family, out, result = llama_run
    assert result.exit_code in (0, 1), result.output
    report = json.loads((out / "result.json").read_text())
    assert result.exit_code == (0 if report["passed"] else 1)
    model = _load(out / "champion")
    assert model.config.model_type == "llama"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 7)


@pytest.mark.slow
def test_recipe_run_champion_keeps_config_tokenizer_and_generation_config(llama_run) -> None:  # type: ignore[no-untyped-def]
    """Issue 13 item 1: GQA, rope scaling, the tokenizer and generation config go with the champion."""
    family, out, result = llama_run
    assert result.exit_code in (0, 1), result.output
    source, champion = Path(family.models[0]), out / "champion"
    assert _json(champion / "config.json") == _json(source / "config.json")
    assert (champion / "generation_config.json").is_file()
    assert _json(champion / "generation_config.json") == _json(source / "generation_config.json")
    from transformers import AutoTokenizer

    ours, theirs = AutoTokenizer.from_pretrained(champion), AutoTokenizer.from_pretrained(source)
    text = "Ship's log, day 3: the wind is <|endoftext|> calm."
    assert ours(text)["input_ids"] == theirs(text)["input_ids"]


@pytest.mark.slow  # generation 0 + 2 CMA-ES generations of 4 + crowning on a real family
def test_genome_search_on_tied_qwen2_finetunes_reports_the_loop_gain(
    real_family, data_cache_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Issue 13's goal on a real architecture: the `cmaes` strategy (task-arithmetic genes
    against the base, an embedding group of its own) gives a loadable, finite champion with
    its tied embeddings still tied, the held-out report and the loop gain, and a checkpoint
    of genomes, not weights."""
    import os

    import yaml

    os.environ["EVOMERGE_CACHE"] = str(data_cache_dir)
    family = real_family("qwen2")
    path = _recipe_file(family, tmp_path, None)
    data = yaml.safe_load(path.read_text())
    data["evolution"] = {
        "strategy": "cmaes",
        "generations": 2,
        "layer_groups": 2,
        "embedding_group": True,
        "strategy_options": {"popsize": 4},
        "selection": {"validation_items": 4, "top_k": 2},
        "seed": 0,
    }
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["recipe", "run", str(path), "--quiet"])
    assert result.exit_code in (0, 1), result.output
    report = json.loads((tmp_path / "out" / "result.json").read_text())
    assert report["search"]["strategy"] == "cmaes" and report["search"]["evaluations"] == 16
    assert report["search"]["champion_genome"]["anchor"] == "ancestor"  # the base is known
    assert set(report["baselines_test_improvement"]) == {"uniform_average", "best_gen0"}
    best = max(report["baselines_test_improvement"].values())
    assert report["loop_gain_test"] == pytest.approx(report["test_improvement"] - best)
    assert report["resources"]["checkpoint_bytes_per_generation"] < 1_000_000
    model = _load(tmp_path / "out" / "champion")
    assert model.config.model_type == "qwen2" and model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow  # generation 0 + 1 CMA-ES generation of 4 on a real family
def test_local_finetunes_recipe_weighs_the_users_own_task(
    real_family, data_cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Issue 13 item 4: recipes/local-finetunes.yaml as shipped (paths swapped for a local
    llama family, sizes shrunk) scores the user's lm-eval task as the weighted term `mcq`:
    its `task` during the search, its `test_task` alone in the held-out report, and keeps
    both out of the pooled demo accuracy."""
    import os

    import yaml

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # lm-eval resolves the example task's data_files against the cwd
    os.environ["EVOMERGE_CACHE"] = str(data_cache_dir)
    family = real_family("llama")
    data = yaml.safe_load((root / "recipes" / "local-finetunes.yaml").read_text())
    data["inputs"] = {"models": list(family.models), "base_model": family.base}
    data["fitness"]["task_dirs"] = [str(root / "recipes" / "tasks")]
    data["evolution"].update(generations=1, layer_groups=2, strategy_options={"popsize": 4})
    data["evolution"]["selection"] = {"validation_items": 4, "top_k": 1}
    small = {"max_items": 4, "report_max_items": 8, "time_repeats": 1, "time_seq_len": 32}
    data["fitness"].update(small, calibration_sequences=2, calibration_seq_len=32)
    data["tracking"] = {"wandb_mode": "disabled"}
    data["output"] = str(tmp_path / "out")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["recipe", "run", str(path), "--quiet"])
    assert result.exit_code in (0, 1), result.output
    report = json.loads((tmp_path / "out" / "result.json").read_text())
    assert set(report["champion_terms"]) == {"perplexity", "accuracy", "mcq"}
    assert set(report["champion_test_terms"]) == {"perplexity", "accuracy", "mcq"}
    acc = report["champion_test_raw"]["mcq"]
    scored = report["held_out_documents"]["example_mcq_test"]["scored"]
    assert scored == 8  # report_max_items of its 20 test items, as every task
    assert 0.0 <= acc <= 1.0 and acc * scored == pytest.approx(round(acc * scored))
    assert report["inputs"]["test_terms"][0]["mcq"] > 0  # the inputs' own, normalised
    assert report["search"]["strategy"] == "cmaes"
    from test_recipe_run import check_model_card

    check_model_card(tmp_path / "out" / "champion", report)  # the user's term is in its weights
    assert (
        "weights accuracy 0.2, mcq 0.4, perplexity 0.4"  # in the order the test wrote them
        in (tmp_path / "out" / "champion" / "README.md").read_text()
    )


@pytest.mark.slow  # generation 0 + 1 CMA-ES generation of 4, inputs in bf16
def test_bf16_inputs_are_held_and_saved_in_bf16(
    real_family, data_cache_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Issue 13 item 2: `device.storage: auto` holds bf16 inputs and every candidate in bf16
    (merging math in fp32 per tensor), saves a bf16 champion, and `lineage rebuild` replays
    it bit-identically in the same dtype."""
    import os

    import yaml

    from evomerge.evolution.rebuild import rebuild_champion

    os.environ["EVOMERGE_CACHE"] = str(data_cache_dir)
    family = real_family("qwen2")
    bf16 = {}
    for name, src in [("base", family.base), *zip(("m1", "m2", "m3"), family.models, strict=True)]:
        model = _load(src).to(torch.bfloat16)
        dest = tmp_path / "bf16" / name
        model.save_pretrained(dest)
        for f in (*TOKENIZER_FILES, "generation_config.json"):
            (dest / f).write_bytes((Path(src) / f).read_bytes())
        bf16[name] = str(dest)
    path = _recipe_file(family, tmp_path, None)
    data = yaml.safe_load(path.read_text())
    data["inputs"] = {"models": [bf16["m1"], bf16["m2"], bf16["m3"]], "base_model": bf16["base"]}
    data["evolution"] = {
        "strategy": "cmaes",
        "generations": 1,
        "layer_groups": 2,
        "strategy_options": {"popsize": 4},
        "selection": {"validation_items": 4, "top_k": 1},
        "seed": 0,
    }
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["recipe", "run", str(path), "--quiet"])
    assert result.exit_code in (0, 1), result.output
    out = tmp_path / "out"
    report = json.loads((out / "result.json").read_text())
    assert report["device"]["storage"] == "bfloat16"
    assert report["device"]["eval_batch_tokens"] == 8192  # batch_tokens: auto, on the CPU
    saved = load_file(out / "champion" / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    assert all(torch.isfinite(t.float()).all() for t in saved.values())
    rebuilt, comparison = rebuild_champion(out / "result.json")
    assert rebuilt.dtype == torch.bfloat16 and comparison["bit_identical"], comparison
