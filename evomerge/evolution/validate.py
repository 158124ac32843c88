"""Input validation: refuse a bad set of input models before anything is merged or written.

Every check reads ``config.json`` and safetensors headers/tensors directly
(``safetensors.safe_open``); the only model ever built is an empty one on the
``meta`` device, to learn which tensors the config implies and which are tied.
Checks run cheapest first, so a typo in a path fails in milliseconds, not
after reading 100 MB of weights. Every failure is one ``InputValidationError``
line, ``PATH: CHECK: detail``; the CLI maps it to exit code 2.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
#: Files that define a tokenizer's vocabulary, in the order they are hashed.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt")
#: tokenizer.json keys that define tokenization (truncation/padding settings do not).
_TOKENIZER_JSON_KEYS = (
    "added_tokens",
    "normalizer",
    "pre_tokenizer",
    "model",
    "post_processor",
    "decoder",
)
#: config.json keys that may differ between inputs without changing the model.
_CONFIG_KEYS_IGNORED = {
    "_name_or_path",
    "transformers_version",
    "architectures",
    "dtype",
    "torch_dtype",
}
#: Below this mean pairwise cosine the inputs look unrelated: fine-tunes of one
#: ancestor score ~0.9-1.0, independent random initialisations ~0.
UNRELATED_COSINE = 0.5


class InputValidationError(ValueError):
    """A set of input models that cannot be merged; the message names the path and the check."""


@dataclass(frozen=True)
class ValidatedInputs:
    """What validation learned about the inputs, so the caller need not read them again."""

    paths: tuple[Path, ...]
    architecture: str
    param_count: int
    tensor_names: tuple[str, ...]
    tokenizer_hash: str
    #: Mean per-tensor cosine similarity of each input pair, keyed by input indices (i, j).
    pairwise_cosine: dict[tuple[int, int], float]
    warnings: tuple[str, ...] = ()
    base_model: Path | None = None

    @property
    def mean_cosine(self) -> float:
        return sum(self.pairwise_cosine.values()) / max(len(self.pairwise_cosine), 1)


@dataclass
class _Model:
    """One model dir as read from disk: config and tensor name -> (file, shape, dtype)."""

    path: Path
    config: dict[str, Any]
    files: dict[str, Path]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]


def _fail(path: Path, check: str, detail: str) -> InputValidationError:
    return InputValidationError(f"{path}: {check}: {detail}")


def _read_json(path: Path, check: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, check, f"cannot parse JSON ({exc})") from None


def _read_config(model_dir: Path, architecture: str | None) -> dict[str, Any]:
    """``config.json`` as a dict; its ``model_type`` must be ``architecture`` (any string when None)."""
    if not model_dir.is_dir():
        raise _fail(model_dir, "path", "not a directory (expected a save_pretrained model dir)")
    cfg_path = model_dir / CONFIG_FILE
    if not cfg_path.is_file():
        raise _fail(model_dir, "config", f"no {CONFIG_FILE}")
    config = _read_json(cfg_path, "config")
    if not isinstance(config, dict):
        raise _fail(cfg_path, "config", "must be a JSON object")
    model_type = config.get("model_type")
    if architecture is None and not isinstance(model_type, str):
        raise _fail(cfg_path, "model_type", "missing (config.json must name its model_type)")
    if architecture is not None and model_type != architecture:
        raise _fail(cfg_path, "model_type", f"is {model_type!r}, expected {architecture!r}")
    return config


def _weight_files(model_dir: Path) -> dict[str, Path] | Path:
    """Tensor name -> shard for a sharded model, or the single weights file."""
    single, index = model_dir / WEIGHTS_FILE, model_dir / INDEX_FILE
    if single.is_file():
        return single
    if not index.is_file():
        other = [p.name for p in model_dir.glob("*.bin")]
        hint = f" (found {', '.join(other)}: only safetensors is supported)" if other else ""
        raise _fail(model_dir, "weights", f"no {WEIGHTS_FILE} or {INDEX_FILE}{hint}")
    data = _read_json(index, "weights")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise _fail(index, "weights", "has no 'weight_map'")
    files = {str(name): model_dir / str(shard) for name, shard in weight_map.items()}
    for shard in sorted(set(files.values())):
        if not shard.is_file():
            raise _fail(index, "weights", f"shard {shard.name} is missing")
    return files


def _read_model(model_dir: Path, architecture: str) -> _Model:
    config = _read_config(model_dir, architecture)
    found = _weight_files(model_dir)
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
            raise _fail(shard, "weights", f"not a readable safetensors file ({exc})") from None
        if expected is not None:
            missing = sorted(set(expected) - set(names))
            if missing:
                raise _fail(shard, "weights", f"index lists tensor {missing[0]!r}, shard lacks it")
    return _Model(model_dir, config, files, shapes, dtypes)


def _expected_tensors(
    model: _Model, arch: Any
) -> tuple[dict[str, tuple[int, ...]], list[list[str]]]:
    """The tensor shapes the config implies, and the groups of names that share one parameter.

    The model is built on the ``meta`` device: no memory, no initialisation cost.
    """
    import torch

    cfg_path = model.path / CONFIG_FILE
    try:
        config = arch.config_class.from_dict(dict(model.config))
    except Exception as exc:
        raise _fail(
            cfg_path, "config", f"rejected by {arch.config_class.__name__}: {exc}"
        ) from None
    try:
        with torch.device("meta"):
            meta = arch.model_class(config)
    except Exception as exc:
        raise _fail(
            cfg_path, "config", f"cannot build {arch.model_class.__name__}: {exc}"
        ) from None
    shapes = {name: tuple(t.shape) for name, t in meta.state_dict().items()}
    groups: dict[int, list[str]] = {}
    for name, param in meta.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return shapes, list(groups.values())


def _check_fits_config(model: _Model, arch: Any) -> list[list[str]]:
    """Every tensor the config implies is in the file with its shape (tied ones once), nothing else."""
    expected, groups = _expected_tensors(model, arch)
    aliases = {name: group for group in groups for name in group if len(group) > 1}
    for name, shape in expected.items():
        if name in model.shapes:
            if model.shapes[name] != shape:
                raise _fail(
                    model.path,
                    "weights",
                    f"tensor {name!r} has shape {list(model.shapes[name])}, config implies {list(shape)}",
                )
        elif not any(alias in model.shapes for alias in aliases.get(name, [])):
            raise _fail(
                model.path, "weights", f"tensor {name!r} missing (config implies {list(shape)})"
            )
    extra = sorted(set(model.shapes) - set(expected))
    if extra:
        raise _fail(
            model.path,
            "weights",
            f"unexpected tensor {extra[0]!r} (not in the model the config builds)",
        )
    return groups


def _check_same_tensors(ref: _Model, other: _Model) -> None:
    for name in sorted(set(ref.shapes) | set(other.shapes)):
        if name not in other.shapes:
            raise _fail(other.path, "tensors", f"lacks tensor {name!r} that {ref.path} has")
        if name not in ref.shapes:
            raise _fail(other.path, "tensors", f"has tensor {name!r} that {ref.path} lacks")
        if ref.shapes[name] != other.shapes[name]:
            raise _fail(
                other.path,
                "shape",
                f"tensor {name!r} is {list(other.shapes[name])}, {ref.path} has {list(ref.shapes[name])}",
            )
        if ref.dtypes[name] != other.dtypes[name]:
            raise _fail(
                other.path,
                "dtype",
                f"tensor {name!r} is {other.dtypes[name]}, {ref.path} has {ref.dtypes[name]}",
            )


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
            data = _read_json(path, "tokenizer")
            if not isinstance(data, dict):
                raise _fail(path, "tokenizer", "must be a JSON object")
            core = {k: data.get(k) for k in _TOKENIZER_JSON_KEYS}
            h.update(json.dumps(core, sort_keys=True).encode())
        else:
            h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest() if found else None


def _count_params(model: _Model, groups: list[list[str]]) -> int:
    """Parameters as the model counts them: a tied tensor saved twice counts once."""
    total = 0
    for group in groups:
        present = [n for n in group if n in model.shapes]
        if present:
            total += math.prod(model.shapes[present[0]])
    return total


def _scan_tensors(models: Sequence[_Model], base: _Model | None) -> dict[tuple[int, int], float]:
    """One pass over the data: no NaN/Inf anywhere; mean per-tensor cosine of each input pair.

    Cosine is per matrix (>= 2-D tensors), then averaged: flattening the whole
    model would let norm weights (all ones at init) make random inits look related.
    """
    import torch
    from safetensors import safe_open

    handles: dict[Path, Any] = {}

    def load(model: _Model, name: str) -> tuple[torch.Tensor, float]:
        """The tensor (float32 when floating) and its norm; the norm doubles as the NaN/Inf probe."""
        shard = model.files[name]
        if shard not in handles:
            handles[shard] = safe_open(str(shard), framework="pt")
        try:
            t: torch.Tensor = handles[shard].get_tensor(name)
        except Exception as exc:  # a header that parses over data that does not
            raise _fail(shard, "weights", f"cannot read tensor {name!r} ({exc})") from None
        if not t.is_floating_point():
            return t, 0.0
        t = t.reshape(-1).float()
        norm = float(torch.linalg.vector_norm(t))
        if not math.isfinite(norm):  # NaN/Inf, or a float32 overflow of huge finite values
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise _fail(model.path, "weights", f"tensor {name!r} has {bad} NaN/Inf values")
            norm = float(torch.linalg.vector_norm(t.double()))
        return t, norm

    pairs = list(combinations(range(len(models)), 2))
    sums = dict.fromkeys(pairs, 0.0)
    counts = dict.fromkeys(pairs, 0)
    try:
        for name in sorted(models[0].shapes):
            loaded = [load(m, name) for m in models]
            if base is not None:
                load(base, name)
            if len(models[0].shapes[name]) < 2 or not loaded[0][0].is_floating_point():
                continue
            for i, j in pairs:
                (ti, ni), (tj, nj) = loaded[i], loaded[j]
                if ni > 0 and nj > 0:
                    sums[(i, j)] += float(torch.dot(ti, tj)) / (ni * nj)
                    counts[(i, j)] += 1
    finally:
        handles.clear()
    return {p: (sums[p] / counts[p] if counts[p] else float("nan")) for p in pairs}


def _config_differences(ref: _Model, other: _Model) -> list[str]:
    keys = (set(ref.config) | set(other.config)) - _CONFIG_KEYS_IGNORED
    return sorted(k for k in keys if ref.config.get(k) != other.config.get(k))


def validate_inputs(
    model_dirs: Sequence[Path],
    *,
    architecture: str | None,
    expected_params: int | None,
    params_tolerance: float = 0.05,
    base_model: Path | None = None,
    min_cosine: float = UNRELATED_COSINE,
) -> ValidatedInputs:
    """Check the three input models (and optional base) can be merged; raise on the first problem.

    ``architecture`` None means the first input's own ``model_type``; the
    others must have the same. Any family ``AutoModelForCausalLM`` builds is
    accepted without a plugin (``evomerge.architectures.get_architecture``).
    Warnings (returned, and logged) do not stop a run: inputs that look
    unrelated, or configs that differ in a key that does not change tensor shapes.
    """
    paths = tuple(Path(p) for p in model_dirs)
    if len(paths) != 3:
        where = ", ".join(str(p) for p in paths) or "(none)"
        raise InputValidationError(
            f"{where}: count: exactly 3 input models are required, got {len(paths)}"
        )
    if len(set(p.resolve() for p in paths)) != 3:
        raise InputValidationError(f"{paths[0]}: count: the 3 input models must be different dirs")

    # 1. Files and configs (milliseconds).
    if architecture is None:
        architecture = str(_read_config(paths[0], None)["model_type"])
    for p in paths:
        _read_config(p, architecture)
        _weight_files(p)
    if base_model is not None:
        _read_config(Path(base_model), architecture)

    from evomerge.architectures import UnknownArchitectureError, get_architecture

    try:
        arch = get_architecture(architecture)
    except UnknownArchitectureError as exc:
        raise InputValidationError(f"{paths[0]}: architecture: {exc}") from None

    # 2. Safetensors headers: readable, fit their config, identical across inputs.
    models = [_read_model(p, architecture) for p in paths]
    groups = _check_fits_config(models[0], arch)
    for m in models[1:]:
        _check_same_tensors(models[0], m)
        _check_fits_config(m, arch)
    base = None
    if base_model is not None:
        base = _read_model(Path(base_model), architecture)
        _check_same_tensors(models[0], base)

    # 3. Tokenizer: present and identical.
    hashes: list[str] = []
    for p in paths:
        h = tokenizer_hash(p)
        if h is None:
            raise _fail(p, "tokenizer", f"no tokenizer files (one of {', '.join(TOKENIZER_FILES)})")
        if hashes and h != hashes[0]:
            raise _fail(
                p, "tokenizer", f"differs from {paths[0]}'s (hash {h[:12]} vs {hashes[0][:12]})"
            )
        hashes.append(h)
    if base is not None:
        bh = tokenizer_hash(base.path)
        if bh is not None and bh != hashes[0]:
            raise _fail(
                base.path,
                "tokenizer",
                f"differs from {paths[0]}'s (hash {bh[:12]} vs {hashes[0][:12]})",
            )

    # 4. Parameter count.
    count = _count_params(models[0], groups)
    if expected_params is not None:
        low, high = (
            expected_params * (1 - params_tolerance),
            expected_params * (1 + params_tolerance),
        )
        if not low <= count <= high:
            raise _fail(
                paths[0],
                "param_count",
                f"{count:,} parameters, expected {expected_params:,} ± {params_tolerance:.0%} "
                f"({int(math.ceil(low)):,}..{int(high):,})",
            )

    # 5. Tensor data (the only step that reads the weights).
    cosine = _scan_tensors(models, base)

    warnings: list[str] = []
    for m in models[1:]:
        diff = _config_differences(models[0], m)
        if diff:
            warnings.append(f"{m.path}: config differs from {paths[0]} in {', '.join(diff)}")
    finite = [c for c in cosine.values() if not math.isnan(c)]
    mean = sum(finite) / len(finite) if finite else float("nan")
    if finite and mean < min_cosine:
        pairs = ", ".join(f"{i + 1}-{j + 1}: {c:.2f}" for (i, j), c in cosine.items())
        warnings.append(
            f"inputs look unrelated: mean weight cosine similarity {mean:.2f} < {min_cosine} ({pairs}); "
            "merging models without a common ancestor rarely helps"
        )
    for w in warnings:
        logger.warning(w)

    return ValidatedInputs(
        paths=paths,
        architecture=architecture,
        param_count=count,
        tensor_names=tuple(sorted(models[0].shapes)),
        tokenizer_hash=hashes[0],
        pairwise_cosine=cosine,
        warnings=tuple(warnings),
        base_model=None if base_model is None else Path(base_model),
    )
