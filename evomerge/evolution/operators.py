"""Mutation and diversity: the two operators the loop adds on top of merging.

Two mutation operators: ``gaussian`` (the seed's noise, ``mutate_``) and
``input_direction`` (a random step toward one input, ``step_toward_input_``).

Randomness is keyed, not streamed: each tensor's noise comes from a generator
seeded by (seed, tensor name), so a child can be rebuilt from its lineage
alone and a resumed run draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any printable parts (same on every machine and Python)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@torch.no_grad()
def mutate_(
    state: Mapping[str, torch.Tensor],
    *,
    sigma: float,
    rate: float,
    mode: str,
    seed: int,
) -> None:
    """Add N(0, sigma) noise to a random fraction ``rate`` of every floating tensor, in place.

    ``mode="relative"`` scales sigma by each tensor's RMS, so noise has the
    inputs' own scale (docs/design.md "Mutation": absolute sigma=0.01 swamped a real family).
    """
    if mode not in ("absolute", "relative"):
        raise ValueError(f"mutation mode must be 'absolute' or 'relative', got {mode!r}")
    for name in sorted(state):
        tensor = state[name]
        if not tensor.is_floating_point():
            continue
        gen = torch.Generator(device=tensor.device).manual_seed(derive_seed(seed, name))
        mask = torch.rand(tensor.shape, generator=gen, device=tensor.device) < rate
        noise = torch.randn(tensor.shape, generator=gen, device=tensor.device, dtype=torch.float32)
        scale = sigma
        if mode == "relative":
            scale = sigma * float(tensor.float().pow(2).mean().sqrt())
        tensor.add_((noise * scale * mask).to(tensor.dtype))


@torch.no_grad()
def step_toward_input_(
    state: Mapping[str, torch.Tensor],
    inputs: Sequence[Mapping[str, torch.Tensor]],
    *,
    sigma: float,
    rate: float,
    seed: int,
) -> dict[str, float | int]:
    """Move a random fraction ``rate`` of the elements ``eps ~ N(0, sigma)`` of the way to one input.

    Isotropic noise explores directions no input model ever took; a step along
    ``input_k - parent`` re-weights the parent's mix of the specialists (a
    merge-coefficient search done in weight space). ``k`` and ``eps`` come from
    ``seed``, so the step is rebuilt from the lineage; they are returned for it.
    """
    import random

    rng = random.Random(seed)
    k = rng.randrange(len(inputs))
    eps = rng.gauss(0.0, sigma)
    for name in sorted(state):
        tensor = state[name]
        if not tensor.is_floating_point():
            continue
        delta = inputs[k][name].to(tensor.dtype) - tensor  # (same shape as the tensor)
        if rate < 1.0:
            gen = torch.Generator(device=tensor.device).manual_seed(derive_seed(seed, name))
            delta *= torch.rand(tensor.shape, generator=gen, device=tensor.device) < rate
        tensor.add_(delta, alpha=eps)
    return {"input": k, "eps": eps}


@torch.no_grad()
def apply_mutation_(
    state: Mapping[str, torch.Tensor],
    mutation: Mapping[str, Any],
    *,
    seed: int,
    inputs: Sequence[Mapping[str, torch.Tensor]],
) -> dict[str, float | int]:
    """Apply the mutation a lineage node records (the loop and ``lineage rebuild`` share this)."""
    operator = mutation.get("operator", "gaussian")  # lineage written before operators existed
    if operator == "gaussian":
        mutate_(
            state, sigma=mutation["sigma"], rate=mutation["rate"], mode=mutation["mode"], seed=seed
        )
        return {}
    if operator == "input_direction":
        return step_toward_input_(
            state, inputs, sigma=mutation["sigma"], rate=mutation["rate"], seed=seed
        )
    raise ValueError(f"unknown mutation operator {operator!r}")


@torch.no_grad()
def apply_genome_mutation_(state: Mapping[str, torch.Tensor], genome: Mapping[str, Any]) -> None:
    """The ``mutation`` gene of a genome (its JSON form), if any, on its merged ``state``."""
    mutation = genome.get("mutation")
    if mutation:
        mutate_(
            state,
            sigma=mutation["sigma"],
            rate=mutation.get("rate", 0.01),
            mode=mutation.get("mode", "relative"),
            seed=mutation["seed"],
        )


@torch.no_grad()
def mean_pairwise_distance(states: Sequence[Mapping[str, torch.Tensor]]) -> float:
    """Mean L2 distance over all pairs of models, accumulated tensor by tensor (no flattening)."""
    if len(states) < 2:
        return 0.0
    pairs = list(itertools.combinations(range(len(states)), 2))
    squared: torch.Tensor | None = None
    for name in states[0]:
        if not states[0][name].is_floating_point():
            continue
        tensors = [s[name] for s in states]
        # direct differences, not a Gram matrix: merged models are close, and
        # |a|^2 + |b|^2 - 2ab cancels catastrophically in float32; summed on the
        # tensors' device, read back once (no host sync per tensor on a GPU)
        per_pair = torch.stack(
            [
                (tensors[i].float() - tensors[j].float()).pow_(2).sum(dtype=torch.float64)
                for i, j in pairs
            ]
        )
        squared = per_pair if squared is None else squared + per_pair
    if squared is None:
        return 0.0
    return float(squared.clamp_min(0).sqrt().mean())


def diversity(population: Sequence[Mapping[str, torch.Tensor]], input_distance: float) -> float:
    """Population distance relative to the three inputs' own (inputs score 1.0)."""
    if input_distance <= 0:
        raise ValueError("the three inputs are identical: diversity is undefined")
    return mean_pairwise_distance(population) / input_distance
