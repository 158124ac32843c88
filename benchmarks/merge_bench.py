"""Benchmark: one 3-stage combo, in-memory engine vs mergekit ``run_merge`` disk to disk.

Three ``phase1-25m``-sized models (TRM×Titans-MAG when its plugin is installed,
else a ~25M transformers Llama), seeded base + three seeded perturbations.
For each combo the engine merges resident state dicts into a preallocated model;
mergekit runs the same generated YAML (frankenmerge already resolved into
slices, so mergekit does no calibration at all) stage by stage through disk.
Prints both times and their ratio. Target: >= 20x on CPU.

    python benchmarks/merge_bench.py [--arch auto|trm|llama] [--combos 011 001 010] [--repeats 3]
                                     [--threads N]

On a shared 2-core machine, try ``--threads 1``: OpenMP barriers between two
threads cost milliseconds per op when the other core is busy (both sides
benefit; the per-op overhead hits the engine's many small ops harder).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def build_family(arch: str) -> tuple[str, Any, list[dict[str, torch.Tensor]]]:
    """(description, model factory, three state dicts); tied weights stay tied."""
    import evomerge

    evomerge.load_plugins()  # registers plugin architectures
    from evomerge.architectures import UnknownArchitectureError, get_architecture

    factory = None
    if arch in ("auto", "trm"):
        try:
            spec = get_architecture("trm_titans_mag")
            config = spec.config("phase1-25m")
            factory, name = (lambda: spec.model_class(config).eval()), "TRM×Titans-MAG phase1-25m"
        except UnknownArchitectureError:
            if arch == "trm":
                raise
    if factory is None:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=8192,
            hidden_size=512,
            intermediate_size=1536,
            num_hidden_layers=6,
            num_attention_heads=8,
            num_key_value_heads=8,
            tie_word_embeddings=True,
        )
        factory, name = (lambda: LlamaForCausalLM(config).eval()), "Llama ~25M"
    torch.manual_seed(0)
    base = factory()
    states = []
    for seed in (1, 2, 3):
        model = factory()
        model.load_state_dict(base.state_dict())
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(
                    0.01
                    * p.std().nan_to_num(0.0).clamp_min(0.01)
                    * torch.randn(p.shape, generator=generator)
                )
        states.append(model.state_dict())
    params = sum(p.numel() for p in base.parameters())
    return f"{name} ({params / 1e6:.1f}M parameters)", factory, states


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="auto", choices=["auto", "trm", "llama"])
    parser.add_argument("--combos", nargs="+", default=["011", "001", "010"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads for both sides (0: torch default)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from evomerge.merge import InputSet, MergeEngine
    from evomerge.merge.mergekit_bridge import register_with_mergekit, run_with_mergekit

    what, factory, states = build_family(args.arch)
    tokens = torch.randint(
        0, 2048, (1, 32), generator=torch.Generator().manual_seed(0)
    )  # small batch

    def calibration(model: Any) -> float:
        with torch.no_grad():
            return float(model(input_ids=tokens, labels=tokens).loss)

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), python {sys.version.split()[0]}"
    )
    print(f"models: {what}")
    register_with_mergekit()  # mergekit import is not part of either timing
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, state in enumerate(states, start=1):
            model = factory()
            model.load_state_dict(state)
            model.save_pretrained(Path(tmp) / f"model_{i}")
            paths.append(str(Path(tmp) / f"model_{i}"))
        engine = MergeEngine(calibration=calibration)
        out_model = factory()
        out = out_model.state_dict()
        for label in args.combos:
            engine_times, calls = [], 0
            result = None
            for _ in range(args.repeats):
                inputs = InputSet(states, names=paths, cache=False)  # cold: nothing reused
                start = time.perf_counter()
                result = engine.merge_combo(label, inputs, out=out, seed=0, scratch_model=out_model)
                engine_times.append(time.perf_counter() - start)
            assert result is not None
            stages = ", ".join(f"{s.method} {s.seconds:.2f}s" for s in result.stage_logs)
            if label[2] == "0":
                calls = 1 + 3 * len(result.stage_logs[2].details.get("layer_losses", []))
            mk_times = []
            for r in range(max(1, args.repeats - 1)):
                work = Path(tmp) / f"mk-{label}-{r}"
                start = time.perf_counter()
                run_with_mergekit(
                    result.config_yaml, work / "out", intermediate_dir=work / "stages"
                )
                mk_times.append(time.perf_counter() - start)
            ours, theirs = statistics.median(engine_times), statistics.median(mk_times)
            note = f" (incl. {calls} calibration forwards)" if calls else ""
            print(
                f"combo {label}: engine {ours:.3f} s{note} [{stages}]; mergekit run_merge {theirs:.2f} s; "
                f"ratio {theirs / ours:.1f}x"
            )


if __name__ == "__main__":
    main()
