"""Input validation on real tiny TRM x Titans-MAG models saved with save_pretrained.

One test per bad input: each breaks one thing in a copy of a good family and
checks the error names the offending path and the check that failed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from evomerge.architectures import get_architecture
from evomerge.evolution.validate import InputValidationError, ValidatedInputs, validate_inputs

ARCH = "trm_titans_mag"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A merge of three models should beat each of them.",
    "Evolution keeps the best and mutates the rest.",
    "Tokenizers must agree before weights can be averaged.",
]


def _tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained here on a few sentences: no download, deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def _model(seed: int, **overrides: int) -> PreTrainedModel:
    arch = get_architecture(ARCH)
    torch.manual_seed(seed)
    return arch.model_class(arch.config("tiny", **{"vocab_size": 320, **overrides}))


def _specialists(base: PreTrainedModel, n: int = 3) -> list[dict[str, torch.Tensor]]:
    """Fine-tune stand-ins: the ancestor plus small per-model noise (cosine ~0.99)."""
    out = []
    for k in range(n):
        g = torch.Generator().manual_seed(100 + k)
        out.append(
            {
                name: t + 0.01 * t.std().nan_to_num(0) * torch.randn(t.shape, generator=g)
                for name, t in base.state_dict().items()
            }
        )
    return out


def _save(
    model: PreTrainedModel,
    state: dict[str, torch.Tensor] | None,
    tokenizer: PreTrainedTokenizerFast | None,
    dest: Path,
) -> Path:
    if state is not None:
        model.load_state_dict(state)
    model.save_pretrained(dest)
    if tokenizer is not None:
        tokenizer.save_pretrained(dest)
    return dest


@dataclass(frozen=True)
class Family:
    dirs: list[Path]  # model_1..model_3: the ancestor plus small noise each
    params: int  # the model's own parameter count (tied lm_head once)
    base: Path
    tokenizer: PreTrainedTokenizerFast


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Family:
    """Base + three related specialists, one shared tokenizer; copied per test before editing."""
    root = tmp_path_factory.mktemp("family")
    tok = _tokenizer(SENTENCES, 300)
    base = _model(0)
    params = sum(p.numel() for p in base.parameters())
    states = _specialists(base)
    _save(base, None, tok, root / "base")
    dirs = [_save(base, s, tok, root / f"model_{i + 1}") for i, s in enumerate(states)]
    return Family(dirs=dirs, params=params, base=root / "base", tokenizer=tok)


@pytest.fixture
def dirs(family: Family, tmp_path: Path) -> list[Path]:
    """A private copy of the family this test may break."""
    out = []
    for d in family.dirs:
        out.append(Path(shutil.copytree(d, tmp_path / d.name)))
    return out


def _validate(dirs: list[Path], **kw: Any) -> ValidatedInputs:
    kw.setdefault("expected_params", None)
    return validate_inputs(dirs, architecture=ARCH, **kw)


def test_good_family_passes(family: Family) -> None:
    dirs = family.dirs
    res = _validate(dirs, expected_params=family.params, base_model=family.base)
    assert res.paths == tuple(dirs)
    assert res.param_count == family.params  # tied lm_head counted once
    assert (
        "lm_head.weight" not in res.tensor_names and "model.embed_tokens.weight" in res.tensor_names
    )
    assert res.warnings == ()
    assert set(res.pairwise_cosine) == {(0, 1), (0, 2), (1, 2)}
    assert all(0.95 < c <= 1.0 for c in res.pairwise_cosine.values())
    assert len(res.tokenizer_hash) == 64
    assert res.base_model == family.base


def test_architecture_defaults_to_the_inputs_model_type(family: Family) -> None:
    res = validate_inputs(family.dirs, architecture=None, expected_params=None)
    assert res.architecture == ARCH


def test_transformers_family_needs_no_plugin(family: Family, tmp_path: Path) -> None:
    """Three Llama fine-tunes validate like a plugin family: transformers builds the meta model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=320,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    dirs = [
        _save(base, state, family.tokenizer, tmp_path / f"llama_{i}")
        for i, state in enumerate(_specialists(base))
    ]
    res = validate_inputs(dirs, architecture=None, expected_params=None)
    assert res.architecture == "llama"
    assert res.param_count == sum(p.numel() for p in base.parameters())  # tied head once
    assert validate_inputs(dirs, architecture="llama", expected_params=None).paths == tuple(dirs)


def test_wrong_count(family: Family) -> None:
    dirs = family.dirs
    with pytest.raises(
        InputValidationError, match=r"count: exactly 3 input models are required, got 2"
    ):
        _validate(dirs[:2])
    with pytest.raises(InputValidationError, match=r"must be different"):
        _validate([dirs[0], dirs[0], dirs[1]])


def test_missing_dir_and_weights(dirs: list[Path], tmp_path: Path) -> None:
    with pytest.raises(InputValidationError, match=rf"^{tmp_path / 'nope'}: path: not a directory"):
        _validate([dirs[0], dirs[1], tmp_path / "nope"])
    (dirs[1] / "model.safetensors").unlink()
    with pytest.raises(InputValidationError, match=rf"^{dirs[1]}: weights: no model.safetensors"):
        _validate(dirs)


@pytest.mark.parametrize(
    ("name", "files", "hint"),
    [
        (
            "lora",
            {"adapter_config.json": "{}"},
            "it is a PEFT adapter, adapter_config.json: merge it",
        ),
        (
            "models--org--ft-a",
            {"snapshots/0123abc/config.json": "{}", "refs/main": "0123abc"},
            "it is a Hugging Face cache entry: give its repo id, org/ft-a, or one of its "
            "snapshots/REVISION dirs)",
        ),
        ("q4", {"model-Q4_K_M.gguf": "GGUF"}, "found GGUF files: give the save_pretrained"),
        ("notes", {"notes.txt": "x"}, None),
    ],
    ids=["peft-adapter", "hf-cache-entry", "gguf", "other"],
)
def test_a_dir_that_is_not_a_model_says_what_it_is(
    dirs: list[Path], tmp_path: Path, name: str, files: dict[str, str], hint: str | None
) -> None:
    """Common mistakes for a Hugging Face user: the adapter of a LoRA fine-tune, the cache
    entry instead of its snapshot, a quantised export."""
    other = tmp_path / name
    for name, text in files.items():
        (other / name).parent.mkdir(parents=True, exist_ok=True)
        (other / name).write_text(text)
    with pytest.raises(InputValidationError) as caught:
        _validate([dirs[0], dirs[1], other])
    message = str(caught.value)
    assert message.startswith(f"{other}: config: no config.json")
    if hint is None:
        assert message == f"{other}: config: no config.json"
    else:
        assert f"no config.json ({hint}" in message


def test_corrupt_weights(dirs: list[Path]) -> None:
    weights = dirs[2] / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated: header promises more data
    with pytest.raises(
        InputValidationError, match=rf"^{weights}: weights: not a readable safetensors"
    ):
        _validate(dirs)
    weights.write_bytes(b"\x07garbage" * 10)
    with pytest.raises(InputValidationError, match=rf"^{weights}: weights"):
        _validate(dirs)


def test_architecture_mismatch(dirs: list[Path], family: Family) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=320,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
        )
    )
    shutil.rmtree(dirs[1])
    _save(llama, None, family.tokenizer, dirs[1])
    with pytest.raises(
        InputValidationError,
        match=rf"{dirs[1]}/config.json: model_type: is 'llama', expected '{ARCH}'",
    ):
        _validate(dirs)


def test_unregistered_architecture(dirs: list[Path]) -> None:
    for d in dirs:
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, "model_type": "no_such_arch"}))
    with pytest.raises(
        InputValidationError,
        match=r"architecture: no plugin registers architecture 'no_such_arch' and transformers has no",
    ):
        validate_inputs(dirs, architecture="no_such_arch", expected_params=None)


def test_config_that_does_not_fit_weights(dirs: list[Path]) -> None:
    cfg = json.loads((dirs[0] / "config.json").read_text())
    (dirs[0] / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(InputValidationError, match=r"weights: tensor 'model.layers.2.* missing"):
        _validate(dirs)


def test_tokenizer_mismatch_and_missing(dirs: list[Path]) -> None:
    other = _tokenizer(["Completely different text, so different merges.", "Zebras yawn."], 290)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (dirs[2] / f).unlink()
    other.save_pretrained(dirs[2])
    with pytest.raises(
        InputValidationError, match=rf"^{dirs[2]}: tokenizer: differs from {dirs[0]}"
    ):
        _validate(dirs)
    (dirs[2] / "tokenizer.json").unlink()
    with pytest.raises(InputValidationError, match=rf"^{dirs[2]}: tokenizer: no tokenizer files"):
        _validate(dirs)


def test_param_count_out_of_range(family: Family) -> None:
    dirs, params = family.dirs, family.params
    assert _validate(dirs, expected_params=int(params * 1.04)).param_count == params  # type: ignore[arg-type]
    with pytest.raises(
        InputValidationError, match=rf"param_count: {params:,} parameters, expected"
    ):
        _validate(dirs, expected_params=int(params * 1.2))
    with pytest.raises(InputValidationError, match=r"param_count"):
        _validate(dirs, expected_params=int(params * 1.2), params_tolerance=0.1)
    assert (
        _validate(dirs, expected_params=int(params * 1.2), params_tolerance=0.2).param_count
        == params
    )


def test_tied_weight_saved_twice_counts_once(dirs: list[Path], family: Family) -> None:
    for d in dirs:
        state = load_file(d / "model.safetensors")
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
        save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    assert _validate(dirs).param_count == family.params


@pytest.mark.parametrize(
    ("key", "value"), [("intermediate_size", 256), ("num_hidden_layers", 3), ("vocab_size", 288)]
)
def test_structure_mismatch_names_the_config_key(
    dirs: list[Path], family: Family, key: str, value: int
) -> None:
    """Another width, layer count or vocabulary: the differing config key is named, not the
    first tensor it happens to break."""
    other = _model(0, **{key: value})
    shutil.rmtree(dirs[1])
    _save(other, None, family.tokenizer, dirs[1])
    ours = json.loads((dirs[0] / "config.json").read_text())[key]
    with pytest.raises(InputValidationError) as info:
        _validate(dirs)
    assert str(info.value) == (
        f"{dirs[1]}/config.json: {key}: is {value}, {dirs[0]} has {ours}; cannot merge"
    )


def test_tensor_shape_mismatch_under_one_config(dirs: list[Path]) -> None:
    """Same config, a tensor of another shape in the file: named with both shapes."""
    path = dirs[1] / "model.safetensors"
    tensors = load_file(path)
    name = "model.layers.0.mlp.down_proj.weight"
    tensors[name] = tensors[name][:, :-1].contiguous()
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(InputValidationError) as info:
        _validate(dirs)
    rows, cols = load_file(dirs[0] / "model.safetensors")[name].shape
    assert str(info.value).startswith(f"{dirs[1]}: shape: tensor '{name}' is [{rows}, {cols - 1}]")
    assert f"{dirs[0]} has [{rows}, {cols}]" in str(info.value)


def test_missing_shard(dirs: list[Path]) -> None:
    model = _model(0)
    model.load_state_dict(load_file(dirs[0] / "model.safetensors"), strict=False)
    model.save_pretrained(dirs[0], max_shard_size="400KB")
    (dirs[0] / "model.safetensors").unlink()
    shard = sorted(dirs[0].glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(InputValidationError) as info:
        _validate(dirs)
    assert str(info.value) == (
        f"{dirs[0] / 'model.safetensors.index.json'}: weights: shard {shard.name} is missing"
    )


def test_remote_code_is_refused_not_run(dirs: list[Path]) -> None:
    """A model_type only the model's own code defines: refused by name, nothing imported."""
    for d in dirs:
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(
            model_type="my_remote_lm",
            auto_map={"AutoModelForCausalLM": "modeling_my.MyForCausalLM"},
        )
        (d / "config.json").write_text(json.dumps(cfg))
        (d / "modeling_my.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(InputValidationError) as info:
        validate_inputs(dirs, architecture=None, expected_params=None)
    assert str(info.value) == (
        f"{dirs[0]}/config.json: trust_remote_code: model_type 'my_remote_lm' is the model's "
        "own code (auto_map: modeling_my.MyForCausalLM); evomerge never runs remote code: "
        "register the architecture with a plugin (docs/plugins.md)"
    )


def test_nan_in_an_input(dirs: list[Path]) -> None:
    path = dirs[1] / "model.safetensors"
    state = load_file(path)
    state["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    state["model.layers.1.mlp.up_proj.weight"][0, 0] = float("inf")
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(
        InputValidationError,
        match=rf"^{dirs[1]}: weights: tensor 'model.layers.1.mlp.up_proj.weight' has 2 NaN/Inf",
    ):
        _validate(dirs)


def test_sharded_input_passes(dirs: list[Path], family: Family) -> None:
    model = _model(0)
    model.load_state_dict(load_file(dirs[0] / "model.safetensors"), strict=False)  # lm_head is tied
    model.save_pretrained(dirs[0], max_shard_size="400KB")
    (dirs[0] / "model.safetensors").unlink()
    assert len(list(dirs[0].glob("model-*.safetensors"))) > 1
    assert _validate(dirs).param_count == family.params


def test_unrelated_inputs_warn(tmp_path: Path, family: Family) -> None:
    dirs = [
        _save(_model(seed), None, family.tokenizer, tmp_path / f"m{seed}") for seed in (1, 2, 3)
    ]
    res = _validate(dirs)
    assert res.mean_cosine < 0.1
    assert len(res.warnings) == 1 and "inputs look unrelated" in res.warnings[0]


def test_scan_reopening_its_handles_reads_the_same(
    family: Family, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tensor scan closes its safetensors handles every few hundred MB (so big inputs'
    file pages do not pile up in RSS); reopening after every tensor gives the same scan."""
    import evomerge.evolution.validate as validate_module

    whole = _validate(family.dirs, base_model=family.base).pairwise_cosine
    monkeypatch.setattr(validate_module, "_MAPPED_BYTES", 0)
    assert _validate(family.dirs, base_model=family.base).pairwise_cosine == whole
