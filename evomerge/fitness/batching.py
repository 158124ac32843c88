"""How many tokens one eval batch holds: fixed, or sized to the device (``fitness.batch_tokens: auto``).

On a CPU the forward is FLOP-bound, so a bigger batch buys nothing and 8192
tokens (DEFAULT_BATCH_TOKENS) keeps the logits small. On a GPU a small model is
launch-bound: one forward of 8192 tokens costs about what one of 131072 does, so
the batch should be as large as the device's memory allows. ``auto`` measures
what one batch of this model adds to the allocator's peak, per token, and sizes
batches to a share of the device's total memory; an out-of-memory error while
scoring halves the batch and scores again (lm-eval's ``batch_size: auto`` does the same
search with accelerate's ``find_executable_batch_size``; evomerge halves tokens,
not rows, and keeps the size it found for the next candidates).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from evomerge.fitness.cost import remember_process_peak
from evomerge.fitness.scoring import DEFAULT_BATCH_TOKENS

#: ``auto``'s largest batch: the largest of benchmarks/gpu_speed.sh's sweep.
AUTO_MAX_TOKENS = 131072
#: The smallest batch halving goes to before the out-of-memory error is the user's.
MIN_BATCH_TOKENS = 512
#: Share of the device's total memory one eval batch may take. Of the total, not of what
#: is free when the batch is sized: free memory depends on what the process happens to hold
#: then, and the batch size must not (float rounding follows the packing, and a resumed run
#: or another process must score with the same batches). Out-of-memory backs off from it.
SHARE_OF_TOTAL = 0.25


def auto_batch_tokens(bytes_per_token: float, total: int) -> int:
    """The largest power of two of tokens whose batch fits SHARE_OF_TOTAL of ``total``
    device bytes, between MIN_BATCH_TOKENS and AUTO_MAX_TOKENS."""
    fit = int(total * SHARE_OF_TOTAL / max(bytes_per_token, 1.0))
    tokens = MIN_BATCH_TOKENS
    while tokens * 2 <= min(fit, AUTO_MAX_TOKENS):
        tokens *= 2
    return tokens


def initial_batch_tokens(setting: int | str) -> int:
    """The size batches are packed at before a model is seen (``auto``: the CPU default)."""
    return setting if isinstance(setting, int) else DEFAULT_BATCH_TOKENS


def sizes_to_device(setting: int | str, device: torch.device) -> bool:
    """Whether batches are sized by measuring a forward: ``auto`` on a GPU."""
    return setting == "auto" and device.type == "cuda"


def bytes_per_token(device: torch.device, forward: Callable[[], int]) -> float:
    """What ``forward()`` (one batch; it returns its input tokens) adds to the CUDA
    allocator's peak, per token."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    remember_process_peak(device)  # the reset below would lose the run's peak
    torch.cuda.reset_peak_memory_stats(device)
    tokens = forward()
    torch.cuda.synchronize(device)
    return max(int(torch.cuda.max_memory_allocated(device)) - base, 1) / max(tokens, 1)


def device_total_memory(device: torch.device) -> int:
    """Total bytes of a CUDA device."""
    return int(torch.cuda.get_device_properties(device).total_memory)


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failure that a smaller batch may avoid (CUDA, CPU, MPS, XPU)."""
    out_of_memory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch < 2.5
    if isinstance(exc, out_of_memory):
        return True
    from accelerate.utils.memory import should_reduce_batch_size

    return isinstance(exc, Exception) and should_reduce_batch_size(exc)
