"""Small real-architecture families, built locally: a base and three domain fine-tunes of it.

Issue 13 asks that llama, mistral, qwen2, qwen3, gemma2 and phi3 merge and
evolve end to end. Each family here is the real transformers model class at a
toy size (hidden 64, 2 layers) with the features of the real checkpoints that
merging can break: grouped-query attention (``num_key_value_heads <
num_attention_heads``), rope scaling (llama3 on llama, yarn on qwen2, longrope
on phi3) and tied embeddings (qwen2, qwen3, gemma2, as the small released
models are). A base is random-initialised from the config and briefly trained
on all three demo domains; each "fine-tune" is the base trained a few more
steps on one domain (narrative, technical, dialogue), so the three are
distinct and related (per-matrix weight cosine with the base ~0.99, as in a
real fine-tune). Every dir is a ``save_pretrained`` model with the demo
byte-level BPE tokenizer (``evomerge.data.get_tokenizer``) and a non-default
``generation_config.json``, so a merge that drops either is caught.

Nothing is downloaded: the text is the prepared demo data
(``evomerge.data.prepare_data``), the weights are made here in seconds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

#: The six families of issue 13, item 1.
FAMILY_NAMES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3")
#: Shared toy shape: 4 query heads of 16 over 2 key/value heads (GQA), 2 decoder layers.
SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
    "use_cache": True,
}
#: What each family adds to SHAPE, as in its released checkpoints (scaled down).
FAMILY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": {
        "tie_word_embeddings": False,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
            "rope_theta": 500000.0,
        },
    },
    "mistral": {"tie_word_embeddings": False, "sliding_window": 32},
    "qwen2": {
        "tie_word_embeddings": True,
        "rope_scaling": {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 64,
            "rope_theta": 1000000.0,
        },
    },
    "qwen3": {"tie_word_embeddings": True},
    "gemma2": {
        "tie_word_embeddings": True,
        "query_pre_attn_scalar": 16,
        "sliding_window": 32,
        "hidden_activation": "gelu_pytorch_tanh",
    },
    "phi3": {
        "tie_word_embeddings": False,
        "max_position_embeddings": 256,
        "original_max_position_embeddings": 64,
        "rope_scaling": {
            "rope_type": "longrope",
            "short_factor": [1.0] * 8,  # head_dim / 2
            "long_factor": [1.0 + i / 8 for i in range(8)],
            "original_max_position_embeddings": 64,
            "rope_theta": 10000.0,
        },
    },
}
#: A non-default generation config: the exported / champion dir must carry it, not a fresh one.
GENERATION = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 24}
DOMAINS: tuple[str, ...] = ("narrative", "technical", "dialogue")


@dataclass(frozen=True)
class RealFamily:
    """One built family: ``base`` and ``models`` are absolute save_pretrained dirs."""

    name: str
    root: Path
    base: str
    models: tuple[str, str, str]
    config: Any  # the transformers PretrainedConfig every member was built from

    @property
    def tied(self) -> bool:
        return bool(self.config.tie_word_embeddings)


def require_model_type(model_type: str) -> None:
    """Skip (not fail) when the installed transformers has no such ``model_type``."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"transformers has no model_type {model_type!r}")


def family_config(name: str, tokenizer: Any) -> Any:
    """The family's transformers config at toy size, its vocab and special ids the tokenizer's."""
    from transformers import AutoConfig

    require_model_type(name)
    special = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return AutoConfig.for_model(name, **{**SHAPE, **FAMILY_CONFIGS[name], **special})


def token_stream(
    tokenizer: Any, paragraphs: Sequence[str], max_chars: int = 60_000
) -> torch.Tensor:
    """The first ``max_chars`` characters of a domain as one 1-D token stream."""
    text, used = [], 0
    for paragraph in paragraphs:
        if used >= max_chars:
            break
        text.append(paragraph)
        used += len(paragraph)
    ids = tokenizer(tokenizer.eos_token.join(text))["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def train_steps(
    model: Any, stream: torch.Tensor, *, steps: int, lr: float, seed: int, seq_len: int = 64
) -> float:
    """A few AdamW steps on random (8, seq_len) windows of ``stream``; returns the last loss."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    loss = torch.tensor(math.nan)
    offsets = torch.arange(seq_len)
    for _ in range(steps):
        starts = torch.randint(0, stream.numel() - seq_len, (8,), generator=generator)
        window = stream[starts[:, None] + offsets[None, :]]
        loss = model(input_ids=window, labels=window).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return float(loss.detach())


def _save(model: Any, tokenizer: Any, dest: Path) -> str:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.pad_token_id,
        **GENERATION,
    )
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return str(dest.resolve())


def build_family(
    name: str,
    root: Path,
    tokenizer: Any,
    texts: Mapping[str, Sequence[str]],
    *,
    seed: int = 0,
    base_steps: int = 30,
    finetune_steps: int = 12,
) -> RealFamily:
    """Make (or reuse, when ``root/family.json`` exists) the family ``name`` under ``root``.

    ``texts`` maps each of :data:`DOMAINS` to its paragraphs (the demo train split).
    """
    from transformers import AutoModelForCausalLM

    config = family_config(name, tokenizer)
    done = root / "family.json"
    if done.is_file():
        saved = json.loads(done.read_text())
        return RealFamily(name, root, saved["base"], tuple(saved["models"]), config)  # type: ignore[arg-type]
    streams = {d: token_stream(tokenizer, texts[d]) for d in DOMAINS}
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    train_steps(base, torch.cat(list(streams.values())), steps=base_steps, lr=3e-3, seed=seed)
    base_dir = _save(base, tokenizer, root / "base")
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    models = []
    for index, domain in enumerate(DOMAINS, start=1):
        base.load_state_dict(base_state)
        train_steps(base, streams[domain], steps=finetune_steps, lr=1e-3, seed=seed + index)
        models.append(_save(base, tokenizer, root / f"model_{index}"))
    done.write_text(json.dumps({"base": base_dir, "models": models}))
    return RealFamily(name, root, base_dir, tuple(models), config)  # type: ignore[arg-type]


def weight_cosine(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Mean per-matrix cosine similarity (>= 2-D tensors), as input validation measures it."""
    values = [
        float(torch.nn.functional.cosine_similarity(a[k].flatten(), b[k].flatten(), dim=0))
        for k in a
        if a[k].dim() >= 2
    ]
    return sum(values) / len(values)
