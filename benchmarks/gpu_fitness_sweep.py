"""Per-candidate fitness on one device: eval batch size x shared contexts (issue 14 items 1-2).

    python benchmarks/gpu_fitness_sweep.py [--device cuda] [--items 64] [--preset phase1-25m]

A random-initialised TRM x Titans-MAG model of the preset (timing only: weights do not
change the work) or a Llama of a given width, the demo tasks over standard-library
docstrings (no data download), and ``FitnessHarness.measure(cost=False)`` timed for every
``fitness.batch_tokens`` x ``fitness.shared_contexts`` pair, median of ``--repeats``.
Scores of every pair are compared with the first (rows, default batch): the largest
relative difference is in each line. One JSON line per pair on stdout; runs on the CPU
too (use small --items).

``--compile`` adds issue 14 item 1's question, fewer and fused launches: each block of the
model compiled with ``torch.compile`` (``BACKEND[:MODE]``, e.g. ``inductor``,
``inductor:reduce-overhead`` for CUDA graphs, ``aot_eager`` to check that it captures),
every block separately so the recursion's repeated calls of one block share its graph.
The warm-up measure, which compiles, is timed apart (``warmup_seconds``).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--items", type=int, default=64, help="documents per task")
    parser.add_argument("--model", choices=["trm", "llama"], default="trm")
    parser.add_argument("--preset", default="phase1-25m", help="TRM preset")
    parser.add_argument("--hidden", type=int, default=1024, help="llama width")
    parser.add_argument("--layers", type=int, default=8, help="llama layers")
    parser.add_argument(
        "--batch-tokens",
        type=lambda v: v if v == "auto" else int(v),
        nargs="+",
        default=[8192, 32768, 131072, "auto"],
        help="token counts, or auto (sized to the device at the first measure)",
    )
    parser.add_argument("--shared", nargs="+", default=["off", "on"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--compile",
        nargs="+",
        default=["off"],
        help="off, or torch.compile BACKEND[:MODE] per block (inductor:reduce-overhead, ...)",
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    from evomerge.fitness import FitnessConfig, FitnessHarness, suite_for, write_tasks
    from evomerge.fitness.testing import (
        LARGE_MODULES,
        make_bench_model,
        stdlib_paragraphs,
        write_fixture_data,
    )

    paragraphs = stdlib_paragraphs(modules=LARGE_MODULES)
    model, tokenizer = make_bench_model(
        paragraphs,
        args.preset if args.model == "trm" else None,
        hidden=args.hidden,
        layers=args.layers,
        vocab=8192,
        max_positions=512,
    )
    model = model.to(args.device).eval()
    blocks = model.model.layers  # TRM's shared blocks, or Llama's decoder layers
    tmp = Path(tempfile.mkdtemp(prefix="fitness-sweep-"))
    task_dir = write_tasks(
        write_fixture_data(tmp / "data", paragraphs, per_split=args.items), tmp / "tasks"
    )
    suite = suite_for(task_dir, split="fitness")
    reference: list[float] | None = None
    pairs = [(b, s) for b in args.batch_tokens for s in args.shared]
    for compiled in args.compile:
        torch._dynamo.reset()  # each setting compiles afresh (its warm-up is its cost)
        for block in blocks:
            if compiled == "off":
                block._compiled_call_impl = None  # back to eager (nn.Module.compile's slot)
            else:
                backend, _, mode = compiled.partition(":")
                block.compile(backend=backend, mode=mode or None)
        for batch_tokens, shared in pairs:
            config = FitnessConfig(
                max_items=args.items, batch_tokens=batch_tokens, shared_contexts=shared
            )
            harness = FitnessHarness.build(
                suite, tokenizer, args.device, config=config, model_config=model.config
            )
            start = time.perf_counter()
            harness.measure(model, cost=False)  # warm-up (lazy CUDA init, compilation)
            warmup = time.perf_counter() - start
            times, last = [], None
            for _ in range(args.repeats):
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                last = harness.measure(model, cost=False)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            assert last is not None
            scores = [v for task in sorted(last.tasks) for _, v in sorted(last.tasks[task].items())]
            if reference is None:
                reference = scores
            worst = max(
                abs(a - b) / max(abs(b), 1e-12) for a, b in zip(scores, reference, strict=True)
            )
            packed = harness._packed
            cached = packed.can_share_contexts(model, shared)
            print(
                json.dumps(
                    {
                        "device": torch.cuda.get_device_name()
                        if args.device.startswith("cuda")
                        else "cpu",
                        "model": args.model if args.model == "llama" else args.preset,
                        "items": args.items,
                        "batch_tokens": batch_tokens,
                        "resolved_batch_tokens": harness.batch_tokens,
                        "shared_contexts": shared,
                        "tokens": packed.n_tokens_context if cached else packed.n_tokens,
                        "compile": compiled,
                        "seconds": round(statistics.median(times), 4),
                        "warmup_seconds": round(warmup, 2),
                        "max_rel_diff_vs_first": worst,
                        "peak_device_bytes": torch.cuda.max_memory_allocated()
                        if args.device.startswith("cuda")
                        else None,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
