"""Input validation: refuse a bad set of input models before anything is merged or written.

Every check reads ``config.json`` and safetensors headers/tensors directly
(``safetensors.safe_open``); the only model ever built is an empty one on the
``meta`` device, to learn which tensors the config implies and which are tied.
Checks run cheapest first, so a typo in a path fails in milliseconds, not
after reading 100 MB of weights. Every failure is one ``InputValidationError``
line, ``PATH: CHECK: detail``; the CLI maps it to exit code 2.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evomerge.evolution.model_dir import (
    CONFIG_FILE,
    TOKENIZER_FILES,
    InputValidationError,
    ModelFiles,
    ShardReader,
    fail,
    read_config,
    read_model,
    tokenizer_hash,
    weight_files,
)

if TYPE_CHECKING:
    from evomerge.architectures import Architecture

__all__ = ["InputValidationError", "ValidatedInputs", "validate_inputs"]

logger = logging.getLogger(__name__)

#: config.json keys that may differ between inputs without changing the model.
_CONFIG_KEYS_IGNORED = {
    "_name_or_path",
    "transformers_version",
    "architectures",
    "dtype",
    "torch_dtype",
}
#: File bytes the tensor scan reads before it closes (unmaps) its safetensors handles.
_MAPPED_BYTES = 256 * 2**20
#: Below this mean pairwise cosine the inputs look unrelated: fine-tunes of one
#: ancestor score ~0.9-1.0, independent random initialisations ~0.
UNRELATED_COSINE = 0.5


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


def _expected_tensors(
    model: ModelFiles, arch: Any
) -> tuple[dict[str, tuple[int, ...]], list[list[str]]]:
    """The tensor shapes the config implies, and the groups of names that share one parameter.

    The model is built on the ``meta`` device: no memory, no initialisation cost.
    """
    import torch

    cfg_path = model.path / CONFIG_FILE
    try:
        config = arch.config_class.from_dict(dict(model.config))
    except Exception as exc:
        raise fail(cfg_path, "config", f"rejected by {arch.config_class.__name__}: {exc}") from None
    try:
        with torch.device("meta"):
            meta = arch.model_class(config)
    except Exception as exc:
        raise fail(cfg_path, "config", f"cannot build {arch.model_class.__name__}: {exc}") from None
    shapes = {name: tuple(t.shape) for name, t in meta.state_dict().items()}
    groups: dict[int, list[str]] = {}
    for name, param in meta.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return shapes, list(groups.values())


def _check_fits_config(model: ModelFiles, arch: Any) -> list[list[str]]:
    """Every tensor the config implies is in the file with its shape (tied ones once), nothing else."""
    expected, groups = _expected_tensors(model, arch)
    aliases = {name: group for group in groups for name in group if len(group) > 1}
    for name, shape in expected.items():
        if name in model.shapes:
            if model.shapes[name] != shape:
                raise fail(
                    model.path,
                    "weights",
                    f"tensor {name!r} has shape {list(model.shapes[name])}, config implies {list(shape)}",
                )
        elif not any(alias in model.shapes for alias in aliases.get(name, [])):
            raise fail(
                model.path, "weights", f"tensor {name!r} missing (config implies {list(shape)})"
            )
    extra = sorted(set(model.shapes) - set(expected))
    if extra:
        raise fail(
            model.path,
            "weights",
            f"unexpected tensor {extra[0]!r} (not in the model the config builds)",
        )
    return groups


def _check_same_tensors(ref: ModelFiles, other: ModelFiles) -> None:
    for name in sorted(set(ref.shapes) | set(other.shapes)):
        if name not in other.shapes:
            raise fail(other.path, "tensors", f"lacks tensor {name!r} that {ref.path} has")
        if name not in ref.shapes:
            raise fail(other.path, "tensors", f"has tensor {name!r} that {ref.path} lacks")
        if ref.shapes[name] != other.shapes[name]:
            raise fail(
                other.path,
                "shape",
                f"tensor {name!r} is {list(other.shapes[name])}, {ref.path} has {list(ref.shapes[name])}",
            )
        if ref.dtypes[name] != other.dtypes[name]:
            raise fail(
                other.path,
                "dtype",
                f"tensor {name!r} is {other.dtypes[name]}, {ref.path} has {ref.dtypes[name]}",
            )


def _count_params(model: ModelFiles, groups: list[list[str]]) -> int:
    """Parameters as the model counts them: a tied tensor saved twice counts once."""
    total = 0
    for group in groups:
        present = [n for n in group if n in model.shapes]
        if present:
            total += math.prod(model.shapes[present[0]])
    return total


def _scan_tensors(
    models: Sequence[ModelFiles], base: ModelFiles | None
) -> dict[tuple[int, int], float]:
    """One pass over the data: no NaN/Inf anywhere; mean per-tensor cosine of each input pair.

    Cosine is per matrix (>= 2-D tensors), then averaged: flattening the whole
    model would let norm weights (all ones at init) make random inits look related.
    """
    import torch

    reader = ShardReader(_MAPPED_BYTES)

    def load(model: ModelFiles, name: str) -> tuple[torch.Tensor, float]:
        """The tensor (float32 when floating) and its norm; the norm doubles as the NaN/Inf probe."""
        t = reader.get(model.files[name], name)
        if not t.is_floating_point():
            return t, 0.0
        t = t.reshape(-1).float()
        norm = float(torch.linalg.vector_norm(t))
        if not math.isfinite(norm):  # NaN/Inf, or a float32 overflow of huge finite values
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise fail(model.path, "weights", f"tensor {name!r} has {bad} NaN/Inf values")
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
        reader.close()
    return {p: (sums[p] / counts[p] if counts[p] else float("nan")) for p in pairs}


def _config_differences(ref: ModelFiles, other: ModelFiles) -> list[str]:
    keys = (set(ref.config) | set(other.config)) - _CONFIG_KEYS_IGNORED
    return sorted(k for k in keys if ref.config.get(k) != other.config.get(k))


def _check_count(model_dirs: Sequence[Path]) -> tuple[Path, ...]:
    paths = tuple(Path(p) for p in model_dirs)
    if len(paths) != 3:
        where = ", ".join(str(p) for p in paths) or "(none)"
        raise InputValidationError(
            f"{where}: count: exactly 3 input models are required, got {len(paths)}"
        )
    if len(set(p.resolve() for p in paths)) != 3:
        raise InputValidationError(f"{paths[0]}: count: the 3 input models must be different dirs")
    return paths


def _check_files(
    paths: Sequence[Path], architecture: str | None, base: Path | None
) -> Architecture:
    """Step 1 (milliseconds): configs name one model_type and weight files exist; its family."""
    if architecture is None:
        architecture = str(read_config(paths[0], None)["model_type"])
    for p in paths:
        read_config(p, architecture)
        weight_files(p)
    if base is not None:
        read_config(base, architecture)
    from evomerge.architectures import UnknownArchitectureError, get_architecture

    try:
        return get_architecture(architecture)
    except UnknownArchitectureError as exc:
        auto_map = read_config(paths[0], None).get("auto_map")
        if isinstance(auto_map, dict):
            code = auto_map.get("AutoModelForCausalLM") or next(iter(auto_map.values()), "?")
            raise fail(
                paths[0] / CONFIG_FILE,
                "trust_remote_code",
                f"model_type {architecture!r} is the model's own code (auto_map: {code}); "
                "evomerge never runs remote code: register the architecture with a plugin "
                "(docs/plugins.md)",
            ) from None
        raise InputValidationError(f"{paths[0]}: architecture: {exc}") from None


#: config.json keys that change tensor shapes or the layer count: a difference is named, not
#: left to surface as the first tensor whose shape or name differs.
STRUCTURE_KEYS = (
    "vocab_size",
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
)


def _check_same_structure(ref: ModelFiles, other: ModelFiles) -> None:
    for key in STRUCTURE_KEYS:
        mine, theirs = other.config.get(key), ref.config.get(key)
        if mine != theirs:
            raise fail(
                other.path / CONFIG_FILE, key, f"is {mine}, {ref.path} has {theirs}; cannot merge"
            )


def _check_tokenizers(models: Sequence[ModelFiles], base: ModelFiles | None) -> str:
    """Step 3: every input has a tokenizer, all the same (and the base's, if it has one)."""
    hashes: list[str] = []
    first = models[0].path
    for m in models:
        h = tokenizer_hash(m.path)
        if h is None:
            raise fail(
                m.path, "tokenizer", f"no tokenizer files (one of {', '.join(TOKENIZER_FILES)})"
            )
        if hashes and h != hashes[0]:
            raise fail(
                m.path, "tokenizer", f"differs from {first}'s (hash {h[:12]} vs {hashes[0][:12]})"
            )
        hashes.append(h)
    if base is not None:
        bh = tokenizer_hash(base.path)
        if bh is not None and bh != hashes[0]:
            raise fail(
                base.path,
                "tokenizer",
                f"differs from {first}'s (hash {bh[:12]} vs {hashes[0][:12]})",
            )
    return hashes[0]


def _check_param_count(path: Path, count: int, expected: int | None, tolerance: float) -> None:
    """Step 4: the parameter count is within ``tolerance`` of ``expected`` (when given)."""
    if expected is None:
        return
    low, high = expected * (1 - tolerance), expected * (1 + tolerance)
    if not low <= count <= high:
        raise fail(
            path,
            "param_count",
            f"{count:,} parameters, expected {expected:,} ± {tolerance:.0%} "
            f"({int(math.ceil(low)):,}..{int(high):,})",
        )


def _warnings(
    models: Sequence[ModelFiles], cosine: dict[tuple[int, int], float], min_cosine: float
) -> list[str]:
    """What does not stop a run: configs that differ harmlessly, inputs that look unrelated."""
    warnings: list[str] = []
    for m in models[1:]:
        diff = _config_differences(models[0], m)
        if diff:
            warnings.append(f"{m.path}: config differs from {models[0].path} in {', '.join(diff)}")
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
    return warnings


def validate_inputs(
    model_dirs: Sequence[Path],
    *,
    architecture: str | None,
    expected_params: int | None,
    params_tolerance: float = 0.05,
    base_model: Path | None = None,
    min_cosine: float = UNRELATED_COSINE,
    scan: bool = True,
) -> ValidatedInputs:
    """Check the three input models (and optional base) can be merged; raise on the first problem.

    ``architecture`` None means the first input's own ``model_type``; the
    others must have the same. Any family ``AutoModelForCausalLM`` builds is
    accepted without a plugin (``evomerge.architectures.get_architecture``).
    Warnings (returned, and logged) do not stop a run: inputs that look
    unrelated, or configs that differ in a key that does not change tensor shapes.
    ``scan=False`` stops before the one step that reads the weights (`recipe validate`:
    files, configs, headers and tokenizers only; no NaN check, no relatedness warning).
    """
    paths = _check_count(model_dirs)
    base_path = None if base_model is None else Path(base_model)
    arch = _check_files(paths, architecture, base_path)

    # 2. Safetensors headers: readable, fit their config, identical across inputs.
    models = [read_model(p, arch.model_type) for p in paths]
    groups = _check_fits_config(models[0], arch)
    for m in models[1:]:
        _check_same_structure(models[0], m)
        _check_same_tensors(models[0], m)
        _check_fits_config(m, arch)
    base = None
    if base_path is not None:
        base = read_model(base_path, arch.model_type)
        _check_same_structure(models[0], base)
        _check_same_tensors(models[0], base)

    tokenizer = _check_tokenizers(models, base)  # 3.
    count = _count_params(models[0], groups)
    _check_param_count(paths[0], count, expected_params, params_tolerance)  # 4.
    # 5. Tensor data (the only step that reads the weights).
    cosine = _scan_tensors(models, base) if scan else {}
    return ValidatedInputs(
        paths=paths,
        architecture=arch.model_type,
        param_count=count,
        tensor_names=tuple(sorted(models[0].shapes)),
        tokenizer_hash=tokenizer,
        pairwise_cosine=cosine,
        warnings=tuple(_warnings(models, cosine, min_cosine)),
        base_model=base_path,
    )
