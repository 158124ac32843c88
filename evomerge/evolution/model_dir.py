"""One saved model directory read cheaply: ``config.json``, safetensors headers, tokenizer hash.

What :mod:`evomerge.evolution.validate` checks a set of inputs with. Nothing
here loads weights: safetensors headers give names, shapes and dtypes. Every
failure is one ``InputValidationError`` line, ``PATH: CHECK: detail``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: Files that define a tokenizer's vocabulary, in the order they are hashed.
from evomerge.data.tokenizer import TOKENIZER_VOCAB_FILES as TOKENIZER_FILES

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
#: tokenizer.json keys that define tokenization (truncation/padding settings do not).
_TOKENIZER_JSON_KEYS = (
    "added_tokens",
    "normalizer",
    "pre_tokenizer",
    "model",
    "post_processor",
    "decoder",
)


class InputValidationError(ValueError):
    """A set of input models that cannot be merged; the message names the path and the check."""


@dataclass
class ModelFiles:
    """One model dir as read from disk: config and tensor name -> (file, shape, dtype)."""

    path: Path
    config: dict[str, Any]
    files: dict[str, Path]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]


def fail(path: Path, check: str, detail: str) -> InputValidationError:
    """The one-line error ``PATH: CHECK: detail`` (raised by the caller)."""
    return InputValidationError(f"{path}: {check}: {detail}")


def read_json(path: Path, check: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(path, check, f"cannot parse JSON ({exc})") from None


def read_config(model_dir: Path, architecture: str | None) -> dict[str, Any]:
    """``config.json`` as a dict; its ``model_type`` must be ``architecture`` (any string when None)."""
    if not model_dir.is_dir():
        raise fail(model_dir, "path", "not a directory (expected a save_pretrained model dir)")
    cfg_path = model_dir / CONFIG_FILE
    if not cfg_path.is_file():
        raise fail(model_dir, "config", f"no {CONFIG_FILE}{not_a_model_hint(model_dir)}")
    config = read_json(cfg_path, "config")
    if not isinstance(config, dict):
        raise fail(cfg_path, "config", "must be a JSON object")
    model_type = config.get("model_type")
    if architecture is None and not isinstance(model_type, str):
        raise fail(cfg_path, "model_type", "missing (config.json must name its model_type)")
    if architecture is not None and model_type != architecture:
        raise fail(cfg_path, "model_type", f"is {model_type!r}, expected {architecture!r}")
    return config


def not_a_model_hint(model_dir: Path) -> str:
    """What a dir without config.json holds instead, when it is a common mistake."""
    if (model_dir / "adapter_config.json").is_file():
        return (
            " (it is a PEFT adapter, adapter_config.json: merge it into its base first, "
            "PeftModel.from_pretrained(base, DIR).merge_and_unload().save_pretrained(OUT))"
        )
    if (model_dir / "snapshots").is_dir() and model_dir.name.startswith("models--"):
        repo_id = model_dir.name.removeprefix("models--").replace("--", "/", 1)
        return (
            f" (it is a Hugging Face cache entry: give its repo id, {repo_id}, or one of its "
            "snapshots/REVISION dirs)"
        )
    if any(model_dir.glob("*.gguf")):
        return " (found GGUF files: give the save_pretrained safetensors model they came from)"
    return ""


def weight_files(model_dir: Path) -> dict[str, Path] | Path:
    """Tensor name -> shard for a sharded model, or the single weights file."""
    single, index = model_dir / WEIGHTS_FILE, model_dir / INDEX_FILE
    if single.is_file():
        return single
    if not index.is_file():
        other = [p.name for p in model_dir.glob("*.bin")]
        hint = f" (found {', '.join(other)}: only safetensors is supported)" if other else ""
        raise fail(model_dir, "weights", f"no {WEIGHTS_FILE} or {INDEX_FILE}{hint}")
    data = read_json(index, "weights")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise fail(index, "weights", "has no 'weight_map'")
    files = {str(name): model_dir / str(shard) for name, shard in weight_map.items()}
    for shard in sorted(set(files.values())):
        if not shard.is_file():
            raise fail(index, "weights", f"shard {shard.name} is missing")
    return files


def read_model(model_dir: Path, architecture: str) -> ModelFiles:
    config = read_config(model_dir, architecture)
    found = weight_files(model_dir)
    by_file: dict[Path, list[str] | None] = {}
    if isinstance(found, Path):
        by_file[found] = None
    else:
        for name, shard in found.items():
            by_file.setdefault(shard, []).append(name)  # type: ignore[union-attr]
    from safetensors import safe_open

    files: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    for shard, expected in by_file.items():
        try:
            with safe_open(str(shard), framework="pt") as f:
                names = list(f.keys())
                for name in names:
                    sl = f.get_slice(name)
                    shapes[name] = tuple(int(d) for d in sl.get_shape())
                    dtypes[name] = str(sl.get_dtype())
                    files[name] = shard
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise fail(shard, "weights", f"not a readable safetensors file ({exc})") from None
        if expected is not None:
            missing = sorted(set(expected) - set(names))
            if missing:
                raise fail(shard, "weights", f"index lists tensor {missing[0]!r}, shard lacks it")
    return ModelFiles(model_dir, config, files, shapes, dtypes)


class ShardReader:
    """Reads tensors out of safetensors shards, unmapping what it read every ``budget`` bytes.

    A tensor from ``safe_open(...).get_tensor`` is a view of the file's memory
    map, and an open handle keeps every page read through it mapped: reading
    four 16 GB checkpoints through open handles counts 64 GB of file pages in
    this process's RSS. Dropping the handles every ``budget`` bytes bounds that
    to the tensors still referenced plus ``budget``.
    """

    def __init__(self, budget: int = 256 * 2**20) -> None:
        self.budget = budget
        self._handles: dict[Path, Any] = {}
        self._mapped = 0

    def get(self, shard: Path, name: str) -> torch.Tensor:
        """Tensor ``name`` of ``shard``; an unreadable tensor is a one-line error naming the file."""
        from safetensors import safe_open

        if self._mapped > self.budget:
            self.close()
        handle = self._handles.get(shard)
        if handle is None:
            handle = self._handles[shard] = safe_open(str(shard), framework="pt")
        try:
            tensor: torch.Tensor = handle.get_tensor(name)
        except Exception as exc:  # a header that parses over data that does not
            raise fail(shard, "weights", f"cannot read tensor {name!r} ({exc})") from None
        self._mapped += tensor.numel() * tensor.element_size()
        return tensor

    def close(self) -> None:
        self._handles.clear()
        self._mapped = 0


def tokenizer_hash(model_dir: Path) -> str | None:
    """A hash of the files that define tokenization, or None when the dir has no tokenizer.

    tokenizer.json is hashed by its tokenization keys only, so a tokenizer saved
    with different padding/truncation settings still counts as the same.
    """
    h = hashlib.sha256()
    found = False
    for name in TOKENIZER_FILES:
        path = model_dir / name
        if not path.is_file():
            continue
        found = True
        h.update(name.encode() + b"\0")
        if name == "tokenizer.json":
            data = read_json(path, "tokenizer")
            if not isinstance(data, dict):
                raise fail(path, "tokenizer", "must be a JSON object")
            core = {k: data.get(k) for k in _TOKENIZER_JSON_KEYS}
            h.update(json.dumps(core, sort_keys=True).encode())
        else:
            h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest() if found else None
