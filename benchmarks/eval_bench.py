"""Candidates per second: evomerge's fast fitness harness vs lm_eval.simple_evaluate (same model, tasks).

Run: ``python benchmarks/eval_bench.py [--candidates 20] [--threads 1] [--shared-contexts auto|on|off]``

One process, CPU. A tiny Llama and a byte-level BPE are built on the spot;
tasks are evomerge's generated lm-eval YAMLs over fixture data in the
``evomerge.data`` format (standard-library docstrings). Each "candidate" is
the same model after an in-place weight perturbation, as in the evolution loop.

- fast harness: ``FitnessHarness.build`` once, then ``measure(model)`` per candidate
  (with and without the speed/memory probe);
- lm-eval: per candidate, a new ``EvoMergeLM`` (HFLM) around the in-memory model and
  ``simple_evaluate`` with a TaskManager built once over the task dir only (the
  most favourable setup for lm-eval: no built-in task indexing per call).

It checks that both give the same scores on the final candidate (accuracy
identical, perplexities within 1e-4 relative) and prints the speed ratio.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def harness_max_len(model: torch.nn.Module) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "max_position_embeddings", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=20, help="fast-harness candidates")
    parser.add_argument("--lm-eval-candidates", type=int, default=3)
    parser.add_argument("--items", type=int, default=12, help="documents per task")
    parser.add_argument(
        "--model", choices=["trm-tiny", "llama"], default="trm-tiny",
        help="trm-tiny: the TRM x Titans-MAG 'tiny' preset (the CI evolution model); llama: a tiny Llama",
    )  # fmt: skip
    parser.add_argument("--hidden", type=int, default=64, help="llama only")
    parser.add_argument("--layers", type=int, default=4, help="llama only")
    parser.add_argument("--vocab", type=int, default=2048, help="llama only")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--noise-repeats", type=int, default=10)
    parser.add_argument(
        "--shared-contexts", choices=["auto", "on", "off"], default="auto",
        help="fitness.shared_contexts: off scores every choice as a whole row",
    )  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)

    import lm_eval

    from evomerge.fitness import FitnessConfig, FitnessHarness, suite_for, write_tasks
    from evomerge.fitness.lm_eval_adapter import EvoMergeLM
    from evomerge.fitness.testing import (
        LARGE_MODULES,
        make_bench_model,
        stdlib_paragraphs,
        write_fixture_data,
    )

    paragraphs = stdlib_paragraphs(modules=LARGE_MODULES)
    trm = args.model == "trm-tiny"
    model, tokenizer = make_bench_model(
        paragraphs,
        "tiny" if trm else None,
        hidden=args.hidden,
        layers=args.layers,
        vocab=args.vocab,
        max_positions=256,
    )
    label = "TRM x Titans-MAG tiny" if trm else f"Llama h{args.hidden} L{args.layers}"
    n_params = sum(p.numel() for p in model.parameters())
    tmp = Path(tempfile.mkdtemp(prefix="eval-bench-"))
    task_dir = write_tasks(
        write_fixture_data(tmp / "data", paragraphs, per_split=args.items), tmp / "tasks"
    )
    suite = suite_for(task_dir, split="fitness")
    config = FitnessConfig(max_items=args.items, shared_contexts=args.shared_contexts)
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}; model: {label}, {n_params / 1e6:.2f}M params, "
        f"vocab {len(tokenizer)}, context {harness_max_len(model)}; "
        f"tasks: {len(suite.names)} x {args.items} docs"
    )

    gen = torch.Generator().manual_seed(0)

    def perturb() -> None:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 1e-3)

    t0 = time.perf_counter()
    harness = FitnessHarness.build(
        suite, tokenizer, "cpu", config=config, model_config=model.config
    )
    build_s = time.perf_counter() - t0
    harness.measure(model)  # warm-up
    fast, fast_cost = [], []
    for _ in range(args.candidates):
        perturb()
        t0 = time.perf_counter()
        harness.measure(model, cost=False)
        fast.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        harness.measure(model)
        fast_cost.append(time.perf_counter() - t0)

    manager = suite.task_manager()
    slow = []
    for _ in range(args.lm_eval_candidates):
        perturb()
        t0 = time.perf_counter()
        results = lm_eval.simple_evaluate(
            model=EvoMergeLM(pretrained=model, tokenizer=tokenizer),
            tasks=list(suite.names),
            task_manager=manager,
            limit=args.items,
        )["results"]
        slow.append(time.perf_counter() - t0)

    ours = harness.measure(model, cost=False).tasks
    worst = 0.0
    for task, metrics in results.items():
        for key, value in metrics.items():
            if key.endswith(",none") and "stderr" not in key:
                mine = ours[task][key.removesuffix(",none")]
                if key.startswith("acc"):
                    assert mine == value, (task, key, mine, value)
                else:
                    worst = max(worst, abs(mine - value) / abs(value))
    assert worst < 1e-4, worst

    fast_s, cost_s, slow_s = (statistics.median(x) for x in (fast, fast_cost, slow))
    packed = harness._packed
    cached = packed.can_share_contexts(model, args.shared_contexts)
    print(
        f"harness build (once per run): {build_s:.2f} s; tokens per candidate: "
        f"{packed.n_tokens_context if cached else packed.n_tokens} "
        f"({'shared contexts from the model cache' if cached else 'row layout'}; "
        f"lm-eval forwards {packed.n_tokens}+)"
    )
    print(
        f"fast harness, metrics only : {fast_s * 1e3:8.1f} ms/candidate  {1 / fast_s:7.2f} candidates/s"
    )
    print(
        f"fast harness, + speed & mem: {cost_s * 1e3:8.1f} ms/candidate  {1 / cost_s:7.2f} candidates/s"
    )
    print(
        f"lm_eval.simple_evaluate    : {slow_s * 1e3:8.1f} ms/candidate  {1 / slow_s:7.2f} candidates/s"
    )
    print(
        f"speed-up: {slow_s / fast_s:.1f}x (metrics only), {slow_s / cost_s:.1f}x (with speed & memory)"
    )
    print(f"same scores: accuracy identical, perplexity max rel. diff {worst:.2e}")

    noise = harness.repeat_noise(model, repeats=args.noise_repeats)
    t, m = noise["time_per_1k_tokens"], noise["peak_memory_bytes"]
    print(
        f"repeat noise over {args.noise_repeats} measurements (each the median of "
        f"{config.time_repeats} timed forwards of a {tuple(harness.probe.input_ids.shape)} batch): "
        f"time {t['median'] * 1e3:.3f} ms/1k tok, rel. std {t['rel_std']:.1%}, rel. IQR {t['rel_iqr']:.1%}; "
        f"memory {m['median'] / 2**20:.2f} MiB, rel. std {m['rel_std']:.1%}"
    )


if __name__ == "__main__":
    main()
