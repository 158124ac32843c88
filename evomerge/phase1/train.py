"""Token-budgeted causal-LM training on a flat token stream, on the accelerate device.

Budgets are in tokens, not seconds, so the same command gives the same model on
any machine (docs/data.md "Phase-1 training budgets": a 25M model overfits quickly on a GPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel


@dataclass(frozen=True)
class TrainSpec:
    """How much and how fast to train; `tokens` is the budget actually consumed."""

    tokens: int
    seq_len: int
    batch_size: int
    lr: float
    warmup_frac: float = 0.05
    weight_decay: float = 0.01
    seed: int = 0

    @property
    def steps(self) -> int:
        return max(1, self.tokens // (self.seq_len * self.batch_size))


@dataclass(frozen=True)
class TrainStats:
    steps: int
    tokens: int
    first_loss: float
    final_loss: float
    seconds: float


def _batches(stream: torch.Tensor, spec: TrainSpec, generator: torch.Generator):
    """Random (B, T) windows of the stream; the generator makes the order reproducible."""
    high = stream.numel() - spec.seq_len
    if high <= 0:
        raise ValueError(
            f"token stream of {stream.numel()} tokens is shorter than one window ({spec.seq_len})"
        )
    offsets = torch.arange(spec.seq_len)
    for _ in range(spec.steps):
        starts = torch.randint(0, high, (spec.batch_size,), generator=generator)
        yield stream[starts[:, None] + offsets[None, :]]  # (B, T)


def train_causal_lm(
    model: PreTrainedModel,
    stream: torch.Tensor,
    spec: TrainSpec,
    *,
    description: str = "training",
    progress: bool = True,
) -> TrainStats:
    """Train ``model`` in place for ``spec.tokens`` tokens of ``stream`` (1-D token ids)."""
    import time

    from accelerate import Accelerator
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    cuda = torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision="bf16" if cuda else "no", cpu=not cuda)
    torch.manual_seed(spec.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": spec.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=spec.lr,
        betas=(0.9, 0.95),
    )
    warmup = max(1, int(spec.steps * spec.warmup_frac))

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress_frac = (step - warmup) / max(1, spec.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_frac))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()
    generator = torch.Generator().manual_seed(spec.seed)
    first = final = float("nan")
    ema: float | None = None
    start = time.perf_counter()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task(description, total=spec.steps, loss="-")
        for step, window in enumerate(_batches(stream, spec, generator)):
            window = window.to(accelerator.device, dtype=torch.long)
            loss = model(input_ids=window, labels=window).loss  # labels shift inside the model
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            if step == 0:
                first = value
            ema = value if ema is None else 0.95 * ema + 0.05 * value
            final = ema
            bar.update(task, advance=1, loss=f"{ema:.3f}")
            if (
                progress
                and not bar.console.is_terminal
                and (step + 1) % max(1, spec.steps // 10) == 0
            ):
                # no terminal (CI, a log file): a plain line every 10 % instead of a bar
                print(f"{description}: step {step + 1}/{spec.steps} loss {ema:.3f}", flush=True)
    model = accelerator.unwrap_model(model)
    model.eval()
    return TrainStats(
        steps=spec.steps,
        tokens=spec.steps * spec.seq_len * spec.batch_size,
        first_loss=first,
        final_loss=final,
        seconds=time.perf_counter() - start,
    )
