"""The ``evomerge`` model type for lm-eval: HFLM that never re-ties weights, with a real batch size.

Importing this module registers the type, so after ``import
evomerge.fitness.lm_eval_adapter`` both ``lm_eval.simple_evaluate(model="evomerge",
model_args="pretrained=DIR")`` and ``EvoMergeLM(pretrained=model, tokenizer=tok)``
work. lm-eval 0.4.13 looks models up in a plain registry with no entry-point
discovery, so ``python -m lm_eval --model evomerge`` cannot find it on its own:
``evomerge lm-eval ...`` is lm-eval's own CLI with this module imported first.

Why not HFLM as is: HFLM calls ``model.tie_weights()``. On a merged model whose
config says ``tie_word_embeddings`` but whose head and embedding were merged to
different values, that silently replaces the merged head by the embedding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from evomerge.fitness.offline import ensure_offline

ensure_offline()

import lm_eval.models  # noqa: E402,F401  # fills the registry first: get_model only does it when empty
import torch  # noqa: E402
from lm_eval.api.registry import model_registry, register_model  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

#: Default batch size: HFLM's default of 1 leaves most of the device idle.
DEFAULT_BATCH_SIZE = 16
MODEL_NAME = "evomerge"


def _no_tie(*args: Any, **kwargs: Any) -> None:
    """Stands in for ``tie_weights`` while HFLM initialises."""


@contextmanager
def _tie_weights_disabled(model: torch.nn.Module) -> Iterator[None]:
    """Make ``model.tie_weights()`` a no-op on this instance only, for the duration."""
    own = model.__dict__
    had_own = "tie_weights" in own
    previous = own.get("tie_weights")
    own["tie_weights"] = _no_tie
    try:
        yield
    finally:
        if had_own:
            own["tie_weights"] = previous
        else:
            del own["tie_weights"]


class EvoMergeLM(HFLM):
    """HFLM for evomerge models: weights are used exactly as given, batch size 16 by default.

    ``pretrained`` is a model directory (loaded with ``AutoModelForCausalLM``,
    which ties weights exactly as the saved config says, once) or an in-memory
    ``PreTrainedModel``, in which case ``tokenizer`` is required.
    """

    def __init__(
        self,
        pretrained: Any,
        tokenizer: Any = None,
        batch_size: int | str | None = DEFAULT_BATCH_SIZE,
        **kwargs: Any,
    ) -> None:
        import evomerge

        evomerge.load_plugins()  # every plugin's model family loads with AutoModel

        device = kwargs.get("device")
        if not isinstance(pretrained, torch.nn.Module) and (
            device is None or (str(device).startswith("cuda") and not torch.cuda.is_available())
        ):
            # HFLM keeps its default "cuda" even without CUDA; use accelerate's device instead.
            from accelerate import PartialState

            kwargs["device"] = str(PartialState().device)
        if isinstance(pretrained, torch.nn.Module):
            if tokenizer is None:
                raise ValueError("EvoMergeLM: an in-memory model needs tokenizer=")
            with _tie_weights_disabled(pretrained):
                super().__init__(
                    pretrained=pretrained, tokenizer=tokenizer, batch_size=batch_size, **kwargs
                )
            return
        super().__init__(
            pretrained=pretrained, tokenizer=tokenizer, batch_size=batch_size, **kwargs
        )
        self._model.__dict__.pop("tie_weights", None)  # undo the patch made in _create_model

    def _create_model(self, *args: Any, **kwargs: Any) -> None:
        super()._create_model(*args, **kwargs)
        # from_pretrained has tied what the checkpoint's config says; HFLM's own
        # tie_weights() call, right after this returns, must not tie anything again.
        self._model.__dict__["tie_weights"] = _no_tie


def _register() -> None:
    if MODEL_NAME not in model_registry:
        register_model(MODEL_NAME)(EvoMergeLM)


_register()
