"""The memory plan `recipe validate` prints and `recipe run` refuses by, at 8B.

Issue 13 asks that an 8B run fit one 80 GB GPU. The plan is arithmetic on the
inputs' safetensors headers, so it is tested here on a real Llama-3-8B layout
(8.03B parameters, bf16) without 64 GB of weights: each input is a real
``config.json``, tokenizer and ``model.safetensors`` whose header lists every
tensor and whose data is a sparse hole (the file has its full 16 GB length and
takes no disk). `recipe validate` reads headers only, so it checks these files
exactly as it checks real ones. ``--gpu-memory`` / ``--host-memory`` plan for
the GPU machine from this CPU one.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.cli.recipe_cmd import parse_size

ROOT = Path(__file__).resolve().parents[1]
#: Llama-3-8B's shape (its released config.json), held in bf16 as released.
LLAMA3_8B: dict[str, Any] = {
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "dtype": "bfloat16",
}
PARAMS_8B = 8_030_261_248


def _write_header_only_safetensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> int:
    """A valid bf16 safetensors file whose data is a hole; returns its parameter count.

    By hand because the safetensors library writes only tensors it holds in memory;
    the format is an 8-byte little-endian header length, the JSON header, the data.
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in sorted(shapes.items()):
        nbytes = math.prod(shape) * 2
        header[name] = {
            "dtype": "BF16",
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + offset)  # sparse: no blocks written
    return offset // 2


@pytest.fixture(scope="module")
def llama_8b_family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three "fine-tunes" and their base, each an 8B Llama-3 layout in a sparse file."""
    from test_validate import SENTENCES, _tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("llama-8b")
    config = LlamaConfig(**LLAMA3_8B)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(config).state_dict().items()}
    tokenizer = _tokenizer(SENTENCES, 300)
    dirs = {}
    for name in ("base", "model_1", "model_2", "model_3"):
        model_dir = root / name
        model_dir.mkdir()
        config.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        file = model_dir / "model.safetensors"
        params = _write_header_only_safetensors(file, shapes)
        if file.stat().st_blocks * 512 > 2**30:  # pragma: no cover - a filesystem without holes
            file.unlink()
            pytest.skip("this filesystem wrote the 16 GB hole out")
        dirs[name] = model_dir
    return {"dirs": dirs, "params": params, "root": root}


def _shipped_recipe(family: dict[str, Any], tmp: Path, **changes: Any) -> Path:
    """recipes/local-finetunes.yaml as shipped, pointed at the 8B family, with ``changes``
    (section -> keys) applied."""
    data = yaml.safe_load((ROOT / "recipes" / "local-finetunes.yaml").read_text())
    dirs = family["dirs"]
    data["inputs"]["models"] = [str(dirs[f"model_{i}"]) for i in (1, 2, 3)]
    data["inputs"]["base_model"] = str(dirs["base"])
    data["fitness"]["task_dirs"] = [str(ROOT / "recipes" / "tasks")]
    data["output"] = str(tmp / "out")
    for section, keys in changes.items():
        data[section].update(keys)
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _validate(recipe: Path, *options: str) -> Any:
    return CliRunner().invoke(app, ["recipe", "validate", str(recipe), *options])


def test_the_layout_is_llama3_8b(llama_8b_family: dict[str, Any]) -> None:
    assert llama_8b_family["params"] == PARAMS_8B


def test_the_shipped_recipe_fits_an_8b_run_on_one_80gb_gpu(
    llama_8b_family: dict[str, Any], tmp_path: Path
) -> None:
    """CMA-ES holds two candidates on the GPU; the three inputs and the base (64 GB in
    bf16) cannot sit beside them, so ``device.inputs: auto`` keeps them in host memory."""
    recipe = _shipped_recipe(llama_8b_family, tmp_path)
    result = _validate(recipe, "--gpu-memory", "80GB", "--host-memory", "128GB")
    assert result.exit_code == 0, result.output
    plan = result.output.splitlines()[-1]
    assert plan == (
        "memory: 4 inputs and 2 candidates of 16.1 GB (bfloat16): the inputs in host memory: "
        "64.2 GB of 128.0 GB available; the candidates on cuda:0: 32.1 GB of 80.0 GB free"
    )
    assert not (tmp_path / "out").exists()


def test_an_8b_run_reads_its_inputs_from_their_files_when_the_host_cannot_hold_them(
    llama_8b_family: dict[str, Any], tmp_path: Path
) -> None:
    recipe = _shipped_recipe(llama_8b_family, tmp_path)
    result = _validate(recipe, "--gpu-memory", "80GiB", "--host-memory", "64GB")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == (
        "memory: 4 inputs and 2 candidates of 16.1 GB (bfloat16): the inputs read from their "
        "files (host memory of 64.0 GB available); the candidates on cuda:0: 32.1 GB of "
        "85.9 GB free"
    )


def test_planning_for_another_machine_does_not_read_this_ones_host_memory(
    llama_8b_family: dict[str, Any], tmp_path: Path
) -> None:
    recipe = _shipped_recipe(llama_8b_family, tmp_path)
    result = _validate(recipe, "--gpu-memory", "80GB")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == (
        "memory: 4 inputs and 2 candidates of 16.1 GB (bfloat16): the inputs in host memory: "
        "64.2 GB (room unknown); the candidates on cuda:0: 32.1 GB of 80.0 GB free"
    )


def test_every_accelerate_process_holds_its_own_models(
    llama_8b_family: dict[str, Any], tmp_path: Path
) -> None:
    """Two processes on two 80 GB GPUs: each holds 2 candidates on its GPU, but two copies
    of the inputs (128.5 GB) exceed 128 GB of host memory, so `auto` leaves them in their
    files, and an explicit `host` is refused. Eight processes hold eight candidates each."""
    recipe = _shipped_recipe(llama_8b_family, tmp_path)
    machine = ("--gpu-memory", "80GB", "--host-memory", "128GB")
    result = _validate(recipe, *machine, "--processes", "2")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == (
        "memory: 4 inputs and 2 candidates of 16.1 GB (bfloat16) in each of 2 processes: the "
        "inputs read from their files (host memory of 128.0 GB available); the candidates on "
        "each process's GPU: 32.1 GB of 80.0 GB free"
    )
    host = _shipped_recipe(llama_8b_family, tmp_path, device={"inputs": "host"})
    result = _validate(host, *machine, "--processes", "2")
    assert result.exit_code == 2
    assert " ".join(result.output.split()).endswith(
        "device.inputs: the inputs and base in each of 2 processes in host memory take "
        "128.5 GB, but 128.0 GB is available (device.inputs: disk leaves them in their files)"
    )
    result = _validate(recipe, *machine, "--processes", "8")
    assert result.exit_code == 2
    assert " ".join(result.output.split()).endswith(
        "device.storage: each of the 8 processes holds 8 candidates of 16.1 GB each on its "
        "GPU: 128.5 GB, but 80.0 GB is free (fewer processes)"
    )


@pytest.mark.parametrize(
    ("changes", "gpu", "message"),
    [
        (  # the seed loop holds its whole population of nine
            {"evolution": {"strategy": "seed", "strategy_options": {}}},
            "80GB",
            "evolution.strategy: the run holds 9 candidates of 16.1 GB each on cuda:0: "
            "144.5 GB, but 80.0 GB is free (a genome strategy (evolution.strategy: cmaes) holds 2)",
        ),
        (  # fp32 doubles every model
            {"device": {"storage": "fp32"}},
            "40GB",
            "device.storage: the run holds 2 candidates of 32.1 GB each on cuda:0: 64.2 GB, "
            "but 40.0 GB is free (device.storage: bf16 halves every model)",
        ),
        (  # a 24 GB card holds one bf16 8B model, not the two in flight
            {},
            "24GB",
            "device.storage: the run holds 2 candidates of 16.1 GB each on cuda:0: 32.1 GB, "
            "but 24.0 GB is free",
        ),
    ],
    ids=["seed-loop", "fp32", "24GB"],
)
def test_an_8b_run_that_cannot_fit_is_refused_by_validate(
    llama_8b_family: dict[str, Any],
    tmp_path: Path,
    changes: dict[str, Any],
    gpu: str,
    message: str,
) -> None:
    recipe = _shipped_recipe(llama_8b_family, tmp_path, **changes)
    result = _validate(recipe, "--gpu-memory", gpu, "--host-memory", "128GB")
    assert result.exit_code == 2, result.output
    line = result.output.strip().replace("\n", " ")
    assert line.endswith(message), line
    assert not (tmp_path / "out").exists()


def test_validate_refuses_what_run_refuses_on_this_machine(real_family, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The refusal tests/test_residency.py gets from `recipe run` on a 1 MB host comes from
    `recipe validate --host-memory 1MB` too, and the same plan prints when it fits."""
    from test_real_families import _recipe_file

    recipe = _recipe_file(real_family("qwen2"), tmp_path, None)
    refused = _validate(recipe, "--host-memory", "1MB")
    assert refused.exit_code == 2, refused.output
    message = refused.output.strip().replace("\n", " ")
    assert "evolution.strategy: the run holds 9 candidates of" in message
    assert "but 1.0 MB is available" in message
    fits = _validate(recipe)
    assert fits.exit_code == 0, fits.output
    assert fits.output.splitlines()[-1].startswith("memory: 3 inputs and 9 candidates of ")
    assert "all on cpu" in fits.output


def test_memory_options_are_checked(llama_8b_family: dict[str, Any], tmp_path: Path) -> None:
    recipe = _shipped_recipe(llama_8b_family, tmp_path, device={"device": "cpu"})
    result = _validate(recipe, "--gpu-memory", "80GB")
    assert result.exit_code == 2
    assert "device.device: is cpu; --gpu-memory plans a GPU run" in result.output
    result = _validate(recipe, "--host-memory", "lots")
    assert result.exit_code == 2
    assert "--host-memory: 'lots' is not a memory size (e.g. 80GB, 80GiB, 512MB)" in result.output
    result = _validate(recipe, "--schema-only", "--gpu-memory", "80GB")
    assert result.exit_code == 2
    assert "--gpu-memory plans the run's memory; --schema-only skips that" in result.output
    result = _validate(recipe, "--processes", "0")
    assert result.exit_code == 2
    assert "--processes must be at least 1, got 0" in result.output


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("80GB", 80 * 10**9),
        ("80 GiB", 80 * 2**30),
        ("1.5tb", 15 * 10**11),
        ("512MB", 512 * 10**6),
        ("80gb", 80 * 10**9),
        ("4096", 4096),
    ],
)
def test_memory_sizes_read_as_people_write_them(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["80G", "0GB", "-1GB", "GB", "", "0.5"])
def test_memory_sizes_that_are_not_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a memory size"):
        parse_size(text)
