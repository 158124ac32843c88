"""Tiny real components for tests, benchmarks and docs: a tokenizer, a Llama, local data files.

Everything is built on the spot from text that ships with Python (the standard
library's docstrings), so nothing is downloaded. The data files follow the
``evomerge.data`` contract exactly (``{"text"}`` perplexity lines and
``{"id","context","choices","label"}`` cloze lines), so the same code paths
run on them as on the real prepared data.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerFast

from evomerge.data.layout import DOMAINS, EVAL_SPLITS

_EOT = "<|endoftext|>"


#: Modules whose docstrings give the default paragraphs (~55 kB of text).
SMALL_MODULES: tuple[str, ...] = (
    "argparse",
    "collections",
    "functools",
    "inspect",
    "json",
    "pathlib",
    "re",
    "string",
    "textwrap",
)
#: A larger set (~220 kB), enough text for an 8k-token BPE vocabulary.
LARGE_MODULES: tuple[str, ...] = SMALL_MODULES + (
    "typing", "asyncio", "logging", "unittest", "email", "http.client", "urllib.request",
    "subprocess", "threading", "os", "shutil", "tarfile", "zipfile", "datetime", "decimal",
    "fractions", "statistics", "itertools", "contextlib", "dataclasses", "enum", "pickle", "csv",
    "sqlite3", "xml.etree.ElementTree", "difflib", "heapq", "bisect", "random", "socket", "ssl",
)  # fmt: skip


def stdlib_paragraphs(min_chars: int = 120, modules: tuple[str, ...] = SMALL_MODULES) -> list[str]:
    """Real English paragraphs: the docstrings of ``modules``, in a stable order."""
    import importlib

    seen: set[str] = set()
    out: list[str] = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        for _, obj in sorted(inspect.getmembers(module), key=lambda kv: kv[0]):
            doc = inspect.getdoc(obj)
            if not doc:
                continue
            for para in doc.split("\n\n"):
                text = " ".join(para.split())
                if len(text) >= min_chars and text not in seen and text.isascii():
                    seen.add(text)
                    out.append(text)
    return out


def make_tokenizer(texts: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``, ``<|endoftext|>`` as bos/eos/pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[_EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=_EOT, eos_token=_EOT, pad_token=_EOT
    )


def make_trm(preset: str = "tiny", *, max_positions: int = 256, seed: int = 0, **overrides: Any):
    """A randomly initialised TRM x Titans-MAG model of ``preset`` (fp32, eval mode)."""
    import torch

    from evomerge.architectures import get_architecture

    arch = get_architecture("trm_titans_mag")
    config = arch.config(preset, max_position_embeddings=max_positions, **overrides)
    torch.manual_seed(seed)
    return arch.model_class(config).eval()


def make_llama(
    vocab_size: int,
    *,
    hidden: int = 32,
    layers: int = 2,
    max_positions: int = 64,
    seed: int = 0,
    tie_word_embeddings: bool = False,
):
    """A randomly initialised tiny LlamaForCausalLM (fp32, eval mode)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model.eval()


def make_bench_model(
    paragraphs: list[str],
    trm_preset: str | None,
    *,
    hidden: int,
    layers: int,
    vocab: int,
    max_positions: int,
) -> tuple[Any, PreTrainedTokenizerFast]:
    """The benchmarks' model and a BPE sized to it: TRM ``trm_preset``, or (None) a Llama
    of ``hidden`` x ``layers`` over a ``vocab``-token BPE trained on ``paragraphs``."""
    if trm_preset is not None:
        model = make_trm(trm_preset, max_positions=max_positions)
        return model, make_tokenizer(paragraphs, vocab_size=model.config.vocab_size)
    tokenizer = make_tokenizer(paragraphs, vocab_size=vocab)
    llama = make_llama(len(tokenizer), hidden=hidden, layers=layers, max_positions=max_positions)
    return llama, tokenizer


@dataclass(frozen=True)
class FixtureLayout:
    """The ``evomerge.data.DataLayout`` interface over files written by :func:`write_fixture_data`."""

    root: Path

    def ppl_path(self, domain: str, split: str) -> Path:
        return self.root / domain / f"ppl_{split}.jsonl"

    def cloze_path(self, domain: str, split: str) -> Path:
        return self.root / domain / f"cloze_{split}.jsonl"


def _cloze_items(paragraphs: list[str], vocab: list[str], seed: str) -> list[dict]:
    """LAMBADA-style items: the last word of a window is the answer, 3 distractors from ``vocab``."""
    items = []
    for i, para in enumerate(paragraphs):
        words = para.split()[:40]
        answer = words[-1].strip(".,;:()'\"`")
        if len(words) < 8 or not answer.isalpha():
            continue
        context = " ".join(words[:-1])
        digest = hashlib.sha256(f"{seed}:{context}".encode()).hexdigest()
        rng = random.Random(int(digest[:16], 16))
        pool = [w for w in vocab if w != answer and w not in context.split()]
        choices = [answer, *rng.sample(pool, 3)]
        rng.shuffle(choices)
        items.append(
            {
                "id": f"{seed}-{i}",
                "context": context,
                "choices": choices,
                "label": choices.index(answer),
            }
        )
    return items


def write_fixture_data(
    root: Path,
    paragraphs: list[str] | None = None,
    *,
    per_split: int = 6,
) -> FixtureLayout:
    """Write ``per_split`` perplexity docs and cloze items per domain and split under ``root``."""
    paragraphs = paragraphs if paragraphs is not None else stdlib_paragraphs()
    vocab = sorted({w for p in paragraphs for w in p.split() if w.isalpha() and len(w) > 3})
    layout = FixtureLayout(Path(root).resolve())
    need = len(DOMAINS) * len(EVAL_SPLITS) * per_split * 2
    if len(paragraphs) < need:
        raise ValueError(f"need {need} paragraphs for the fixture data, got {len(paragraphs)}")
    chunks = iter(range(0, need, per_split))
    for domain in DOMAINS:
        (layout.root / domain).mkdir(parents=True, exist_ok=True)
        for split in EVAL_SPLITS:
            start = next(chunks)
            ppl = paragraphs[start : start + per_split]
            layout.ppl_path(domain, split).write_text(
                "".join(json.dumps({"text": t}) + "\n" for t in ppl)
            )
            start = next(chunks)
            items = _cloze_items(paragraphs[start : start + per_split], vocab, f"{domain}-{split}")
            layout.cloze_path(domain, split).write_text(
                "".join(json.dumps(item) + "\n" for item in items)
            )
    return layout


def train_briefly(
    model, tokenizer, texts: list[str], *, steps: int = 60, seq_len: int = 48, seed: int = 0
):
    """A few AdamW steps of next-token training, so perplexity and accuracy carry signal."""
    import torch

    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer.encode(text))
        ids.append(tokenizer.eos_token_id)
    stream = torch.tensor(ids)
    n = (len(stream) - 1) // seq_len
    if n < 1:
        raise ValueError("not enough text to train on")
    windows = stream[: n * seq_len + 1]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(windows) - seq_len - 1, (8,), generator=gen)
        batch = torch.stack([windows[s : s + seq_len + 1] for s in starts])  # (8, T+1)
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
