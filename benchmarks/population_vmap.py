"""Scoring a population at once (issue 14 item 2): K candidates' forwards as one ``torch.vmap``
over their stacked weights (``torch.func.stack_module_state`` + ``functional_call``), against
K forwards one after another on the same batch. Prints one JSON line per model: seconds of
each (median of ``--repeats``) and the largest logit difference.

Not wired into the harness: it answers whether the lever pays before it is built. On a
launch-bound GPU it should (one kernel per op for all K candidates); on the CPU, which is
FLOP-bound, it cannot. Two findings it encodes:

* the module ``functional_call`` runs must be a real copy, not one moved to ``meta``: with
  tied embeddings (TRM x Titans-MAG, qwen2) the meta copy gives NaN logits;
* TRM x Titans-MAG updates its memory's fast weights in place when autograd is off
  (``addcmul(out=)``, which vmap cannot batch); under ``torch.enable_grad()`` with weights
  that need no grad it takes its functional update, builds no graph and vmaps.

    .venv/bin/python benchmarks/population_vmap.py                  # CPU, TRM tiny + Llama
    python3 benchmarks/population_vmap.py --device cuda --preset phase1-25m --rows 64
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def _timed(fn: Callable[[], torch.Tensor], device: str, repeats: int) -> tuple[float, torch.Tensor]:
    times, out = [], fn()  # warm-up
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _models(kind: str, preset: str, k: int, device: str) -> list[Any]:
    import evomerge

    evomerge.load_plugins()
    torch.manual_seed(0)
    models = []
    for _ in range(k):
        if kind == "trm":
            from evomerge_trm_titans.configuration import PRESETS, TrmTitansConfig
            from evomerge_trm_titans.modeling import TrmTitansForCausalLM

            model = TrmTitansForCausalLM(TrmTitansConfig(**PRESETS[preset]))
        else:
            from evomerge.fitness.testing import make_llama

            model = make_llama(8192, hidden=256, layers=4, max_positions=512)
        models.append(model.to(device).eval())
    with torch.no_grad():  # K distinct candidates
        for model in models[1:]:
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
    return models


def measure(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """One model family: K candidates scored together and one by one."""
    from torch.func import functional_call, stack_module_state

    models = _models(kind, args.preset, args.candidates, args.device)
    params, buffers = stack_module_state(models)
    params = {name: value.detach() for name, value in params.items()}
    base = copy.deepcopy(models[0])  # a real copy: a meta one breaks tied weights
    vocab = models[0].config.vocab_size
    ids = torch.randint(0, vocab, (args.rows, args.seq), device=args.device)

    def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor) -> Any:
        return functional_call(base, (p, b), (x,), kwargs={"use_cache": False}).logits

    def together() -> torch.Tensor:
        with torch.enable_grad():  # TRM's functional memory update (see the docstring)
            return torch.vmap(one, in_dims=(0, 0, None))(params, buffers, ids)

    def one_by_one() -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([m(input_ids=ids, use_cache=False).logits for m in models])

    seconds_vmap, stacked = _timed(together, args.device, args.repeats)
    seconds_loop, looped = _timed(one_by_one, args.device, args.repeats)
    cuda = args.device.startswith("cuda")
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "model": kind if kind == "llama" else f"trm-{args.preset}",
        "candidates": args.candidates,
        "tokens": args.rows * args.seq,
        "threads": torch.get_num_threads(),
        "seconds_vmap": round(seconds_vmap, 4),
        "seconds_one_by_one": round(seconds_loop, 4),
        "speedup": round(seconds_loop / seconds_vmap, 2),
        "max_abs_logit_diff": float((stacked - looped).abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=["trm", "llama"])
    parser.add_argument("--preset", default="tiny", help="TRM preset")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for kind in args.models:
        print(json.dumps(measure(kind, args)), flush=True)


if __name__ == "__main__":
    main()
