"""A fixed budget of resident models, so the 12-model bound is enforced and measured, not assumed.

Every model-sized buffer the controller holds comes from this pool: the three
inputs, the eight population slots and one merge workspace (the champion lives
in the checkpoint on disk, not in memory). Asking for a 13th raises.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, overload

import torch
from transformers import PreTrainedModel

from evomerge.merge.inputs import FetchedTensors, tied_aliases


def blank_model(
    model_class: type[PreTrainedModel],
    config: Any,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> PreTrainedModel:
    """A model of ``config`` whose weights are about to be overwritten (a pool slot, a
    rebuild's workspace), built the way ``from_pretrained`` builds one before loading:
    straight in ``dtype`` on ``device``, weight initialisation skipped, weights tied.

    Built in float32 with random initialisation and then cast, a 736M llama slot took
    9.5 s and twice its bf16 bytes of host memory at its peak (an 8B one: minutes and
    32 GB, per slot); this takes milliseconds and its own bytes. Buffers computed at
    construction (RoPE's ``inv_freq``) keep the dtype ``from_pretrained`` gives them.
    """
    try:  # transformers >= 5
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - transformers 4.x
        from transformers.modeling_utils import no_init_weights  # type: ignore[attr-defined,no-redef]

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), no_init_weights():
            model = model_class(config)
    finally:
        torch.set_default_dtype(previous)
    model.tie_weights()  # skipped with the initialisation
    return model.eval()


class PoolExhaustedError(RuntimeError):
    """The controller asked for more resident models than the recipe allows."""


class ModelPool:
    """Hands out model instances up to ``capacity`` and recycles released ones."""

    def __init__(
        self,
        factory: Callable[[], PreTrainedModel],
        capacity: int = 12,
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
    ) -> None:
        self._factory = factory
        self.capacity = capacity
        #: The storage dtype every model the factory builds is held in.
        self.dtype = dtype
        #: The device the factory builds models on.
        self.device = device or torch.device("cpu")
        self._free: list[PreTrainedModel] = []
        self._live: set[int] = set()
        self.allocated = 0
        self.peak_live = 0

    def acquire(self) -> PreTrainedModel:
        """A model whose weights the caller will overwrite entirely."""
        if self._free:
            model = self._free.pop()
        else:
            if self.allocated >= self.capacity:
                raise PoolExhaustedError(
                    f"more than {self.capacity} models would be resident ({len(self._live)} live)"
                )
            model = self._factory()
            self.allocated += 1
        self._live.add(id(model))
        self.peak_live = max(self.peak_live, len(self._live))
        return model

    def release(self, model: PreTrainedModel) -> None:
        if id(model) not in self._live:
            raise ValueError("releasing a model that is not live in this pool")
        self._live.discard(id(model))
        self._free.append(model)

    @property
    def live(self) -> int:
        return len(self._live)


@overload
def weights(model: PreTrainedModel) -> dict[str, torch.Tensor]: ...
@overload
def weights(model: FetchedTensors) -> FetchedTensors: ...
def weights(model: PreTrainedModel | FetchedTensors) -> Mapping[str, torch.Tensor]:
    """The model's state dict with tied duplicates dropped (the first name of a shared tensor wins).

    Mutating, distancing or saving ``state_dict()`` directly would touch a tied
    embedding / lm_head twice. Which names are tied is decided in one place,
    :func:`evomerge.merge.inputs.tied_aliases`, the rule the merge engine uses.
    An input kept off the device (evomerge/evolution/residency.py) already is
    such a mapping, and is returned as it is.
    """
    if isinstance(model, FetchedTensors):
        return model
    state = model.state_dict()
    aliases = tied_aliases(state)
    return {name: tensor for name, tensor in state.items() if name not in aliases}


def copy_weights_(dst: PreTrainedModel, src: PreTrainedModel | FetchedTensors) -> None:
    """dst <- src in place, tensor by tensor (no new allocation)."""
    load_weights_(dst, weights(src))


def load_weights_(dst: PreTrainedModel, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``dst``'s existing tensors; names must match its untied weights exactly."""
    target = weights(dst)
    if set(target) != set(state):
        missing, extra = sorted(set(target) - set(state)), sorted(set(state) - set(target))
        raise ValueError(
            f"weights do not match the model: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            target[name].copy_(tensor)
