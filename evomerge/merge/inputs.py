"""The inputs of a merge, validated once, with the caches that make combos cheap to repeat."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping, Sequence

import torch

from evomerge.merge.base import MergeConfigError
from evomerge.merge.results import StageLog

Tensors = Mapping[str, torch.Tensor]
#: A tensor's shape and dtype, known without reading its values.
TensorSpec = tuple[torch.Size, torch.dtype]


class FetchedTensors(Mapping[str, torch.Tensor]):
    """A state dict whose tensors live elsewhere (host memory, a file) and are fetched when read.

    Why: inputs resident on the merge device are what stops an 8B run fitting one
    80 GB GPU (four bf16 copies are 64 GB before any candidate); the engine only
    ever reads one key of each source at a time, so the inputs can stay where they
    are and come to the device tensor by tensor. Shapes and dtypes are known up
    front (``spec``), so checks never fetch. The last tensor read is kept until
    another key is read, because the stages of a streamed chain read the same key
    of an input one after another; ``release`` drops it when a merge is done.
    Subclasses implement ``_fetch``; see evomerge/evolution/residency.py.
    """

    def __init__(self, specs: Mapping[str, TensorSpec]) -> None:
        self._specs = dict(specs)
        self._last: tuple[str, torch.Tensor] | None = None

    def _fetch(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, key: str) -> torch.Tensor:
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        if key not in self._specs:
            raise KeyError(key)
        value = self._fetch(key)
        self._last = (key, value)
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def spec(self, key: str) -> TensorSpec:
        return self._specs[key]

    def release(self) -> None:
        """Drop the tensor kept from the last read."""
        self._last = None


def tensor_spec(state: Tensors, key: str) -> TensorSpec:
    """``state[key]``'s shape and dtype, without fetching it when ``state`` is fetched."""
    if isinstance(state, FetchedTensors):
        return state.spec(key)
    value = state[key]
    return value.shape, value.dtype


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
        first = self.models[0]
        self.all_keys = list(first)
        # fetched tensors are never tied: each read is a tensor of its own
        self.aliases = {} if isinstance(first, FetchedTensors) else tied_aliases(first)
        self.keys = [k for k in self.all_keys if k not in self.aliases]  # the tensors merged
        #: input 1's shape and dtype per merged key (what outputs are checked and stored as)
        self.specs = {key: tensor_spec(first, key) for key in self.keys}
        others = [*self.models[1:], *([base] if base is not None else [])]
        for i, other in enumerate(others, start=2):
            label = f"input {i}" if i <= len(self.models) else "base model"
            if set(other) != set(self.all_keys):
                diff = sorted(set(other) ^ set(self.all_keys))
                raise MergeConfigError(
                    f"{label} has different tensors than input 1 (first: {diff[0]!r})"
                )
            for key in self.keys:
                shape = tensor_spec(other, key)[0]
                if shape != self.specs[key][0]:
                    raise MergeConfigError(
                        f"{label} tensor {key!r} has shape {tuple(shape)}, "
                        f"input 1 has {tuple(self.specs[key][0])}"
                    )
        self.stage_cache: dict[str, tuple[dict[str, torch.Tensor], StageLog]] = {}
        self.delta_cache: dict[str, dict[str, list[torch.Tensor]]] = {}

    def lookup(self) -> dict[str, Tensors]:
        env = dict(zip(self.names, self.models, strict=True))
        if self.base is not None:
            env[self.base_name] = self.base
        return env

    def release_fetched(self) -> None:
        """Drop what fetched inputs keep from their last read (a merge is done with them)."""
        for state in [*self.models, self.base]:
            if isinstance(state, FetchedTensors):
                state.release()


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
