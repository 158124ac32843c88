"""Disk edges of merging (CLI only): load a model, build a text calibration, save the result.

The engine itself never touches disk; these helpers feed it and store what it made.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from evomerge.data.tokenizer import TOKENIZER_FILES
from evomerge.merge.base import MergeConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def load_model(path: str) -> PreTrainedModel:
    """A saved causal LM in float32, eval mode; a missing directory is a one-line error."""
    if not Path(path).is_dir():
        raise MergeConfigError(f"model directory {path!r} does not exist")
    from transformers import AutoModelForCausalLM

    import evomerge

    evomerge.load_plugins()  # plugin architectures load with AutoModel

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def text_calibration(
    tokenizer_dir: str, text_file: str, *, seq_len: int = 128, batch: int = 4
) -> Callable[[PreTrainedModel], float]:
    """Causal-LM loss on the first ``batch × seq_len`` tokens of a text file (use fitness-split text)."""
    path = Path(text_file)
    if not path.is_file():
        raise MergeConfigError(f"calibration file {text_file!r} does not exist")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    except (OSError, ValueError) as exc:
        raise MergeConfigError(
            f"calibration needs a tokenizer in {tokenizer_dir!r} ({exc})"
        ) from None
    ids = tokenizer(path.read_text(encoding="utf-8"), return_tensors="pt")["input_ids"][0]
    usable = (ids.numel() // seq_len) * seq_len
    if usable == 0:
        raise MergeConfigError(f"calibration file {text_file!r} has fewer than {seq_len} tokens")
    tokens = ids[: min(usable, batch * seq_len)].view(-1, seq_len)

    def loss(model: PreTrainedModel) -> float:
        with torch.no_grad():
            return float(
                model(input_ids=tokens.to(model.device), labels=tokens.to(model.device)).loss
            )

    return loss


def save_merged(
    model: PreTrainedModel, out_dir: str, *, tokenizer_from: str, config_yaml: str
) -> Path:
    """``save_pretrained`` + the tokenizer files of ``tokenizer_from`` + ``merge_config.yaml``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        src = Path(tokenizer_from) / name
        if src.is_file():
            shutil.copy2(src, out / name)
    (out / "merge_config.yaml").write_text(config_yaml, encoding="utf-8")
    return out
