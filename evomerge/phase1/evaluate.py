"""Per-domain test metrics of the Phase-1 family (the seed's `metrics` handoff block).

Deliberately small: token perplexity over test paragraphs and cloze accuracy
(argmax of summed choice log-likelihood, lm-eval's multiple-choice rule).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@torch.inference_mode()
def token_perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    paragraphs: list[str],
    *,
    seq_len: int,
    max_tokens: int = 200_000,
) -> float:
    """exp(mean token NLL) over the paragraphs joined by EOS, in non-overlapping windows."""
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in paragraphs:
        ids.extend(tokenizer(text)["input_ids"])
        ids.append(eos)
        if len(ids) >= max_tokens:
            break
    stream = torch.tensor(ids[:max_tokens])
    n = (stream.numel() // seq_len) * seq_len
    if n == 0:
        raise ValueError("not enough text for one evaluation window")
    windows = stream[:n].view(-1, seq_len)  # (N, T)
    total, count = 0.0, 0
    for batch in windows.split(16):
        batch = batch.to(device)
        logits = model(input_ids=batch).logits[:, :-1].float()  # (B, T-1, V)
        nll = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(nll)
        count += batch[:, 1:].numel()
    return math.exp(total / count)


@torch.inference_mode()
def cloze_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    cloze_jsonl: Path,
    *,
    max_items: int = 300,
) -> float:
    """Fraction of cloze items where the correct choice has the highest summed log-likelihood."""
    device = next(model.parameters()).device
    items = [json.loads(line) for line in cloze_jsonl.read_text().splitlines() if line.strip()]
    items = items[:max_items]
    if not items:
        raise ValueError(f"{cloze_jsonl}: no cloze items")
    correct = 0
    for item in items:
        ctx = tokenizer(item["context"])["input_ids"]
        conts = [tokenizer(" " + c)["input_ids"] for c in item["choices"]]
        seqs = [ctx + c for c in conts]
        width = max(len(s) for s in seqs)
        batch = torch.full((len(seqs), width), tokenizer.eos_token_id, dtype=torch.long)
        for row, seq in enumerate(seqs):
            batch[row, : len(seq)] = torch.tensor(seq)
        logprobs = model(input_ids=batch.to(device)).logits.float().log_softmax(-1)  # (C, T, V)
        scores = []
        for row, cont in enumerate(conts):
            positions = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(cont), device=device)
            targets = torch.tensor(cont, device=device)
            scores.append(float(logprobs[row, positions, targets].sum()))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == item["label"])
    return correct / len(items)
