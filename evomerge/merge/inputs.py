"""The inputs of a merge, validated once, with the caches that make combos cheap to repeat."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence

import torch

from evomerge.merge.base import MergeConfigError
from evomerge.merge.results import StageLog

Tensors = Mapping[str, torch.Tensor]


class InputSet:
    """The inputs of a merge (+ optional common ancestor), validated once, with reusable caches.

    Keep one per input group: every combo merged from it reuses its stage-1
    outputs and task vectors. ``cache=False`` keeps memory at the inputs only
    (the evolution loop's one-shot group merges).
    """

    def __init__(
        self,
        models: Sequence[Tensors],
        *,
        base: Tensors | None = None,
        names: Sequence[str] | None = None,
        base_name: str = "base_model",
        cache: bool = True,
    ):
        if len(models) < 2:
            raise MergeConfigError(f"a merge needs at least 2 input models, got {len(models)}")
        self.models = list(models)
        self.names = (
            list(names) if names is not None else [f"model_{i + 1}" for i in range(len(models))]
        )
        if len(self.names) != len(self.models) or len(set(self.names)) != len(self.names):
            raise MergeConfigError(
                f"input names must be {len(models)} distinct names, got {self.names}"
            )
        self.base, self.base_name, self.cache = base, base_name, cache
        self.all_keys = list(self.models[0])
        self.aliases = tied_aliases(self.models[0])
        self.keys = [k for k in self.all_keys if k not in self.aliases]  # the tensors merged
        others = [*self.models[1:], *([base] if base is not None else [])]
        for i, other in enumerate(others, start=2):
            label = f"input {i}" if i <= len(self.models) else "base model"
            if set(other) != set(self.all_keys):
                diff = sorted(set(other) ^ set(self.all_keys))
                raise MergeConfigError(
                    f"{label} has different tensors than input 1 (first: {diff[0]!r})"
                )
            for key in self.keys:
                if other[key].shape != self.models[0][key].shape:
                    raise MergeConfigError(
                        f"{label} tensor {key!r} has shape {tuple(other[key].shape)}, "
                        f"input 1 has {tuple(self.models[0][key].shape)}"
                    )
        self.stage_cache: dict[str, tuple[dict[str, torch.Tensor], StageLog]] = {}
        self.delta_cache: dict[str, dict[str, list[torch.Tensor]]] = {}

    def lookup(self) -> dict[str, Tensors]:
        env = dict(zip(self.names, self.models, strict=True))
        if self.base is not None:
            env[self.base_name] = self.base
        return env


def tied_aliases(state: Tensors) -> dict[str, str]:
    """Keys whose tensor is the same storage as an earlier key's (tied embeddings): alias -> first key.

    Tied tensors are merged once, under the first name (mergekit merges the
    embedding and treats the tied head as optional), so per-name DARE masks agree.
    """
    seen: dict[tuple[int, tuple[int, ...], tuple[int, ...]], str] = {}
    aliases = {}
    for key, value in state.items():
        ident = (value.data_ptr(), tuple(value.shape), tuple(value.stride()))
        if value.numel() and ident in seen:
            aliases[key] = seen[ident]
        else:
            seen.setdefault(ident, key)
    return aliases


def fill_aliases(target: MutableMapping[str, torch.Tensor], inputs: InputSet, final: bool) -> None:
    """Give every tied alias the value of its first key (in place when ``target`` is the final output)."""
    for alias, key in inputs.aliases.items():
        current = target.get(alias) if final else None
        if current is None:
            target[alias] = target[key]
        elif current.data_ptr() != target[key].data_ptr():
            current.copy_(target[key])
