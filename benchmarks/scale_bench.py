"""Scale benchmark (issue 13): a ~100M llama family through `evomerge recipe run`, and one
candidate through mergekit ``run_merge`` + ``lm_eval.simple_evaluate`` for comparison.

The family is random-initialised (random weights are fine for memory and speed): a base
from a transformers ``LlamaConfig`` and three "fine-tunes", each the base plus a seeded
1 % perturbation, saved with ``save_pretrained``, the demo tokenizer and a generation
config. The run is the genome strategy (``cmaes``: only the candidates being scored are
resident, the checkpoint holds genomes) for ``--generations`` generations of ``--popsize``,
CPU by default. Read back from its result.json and evolution.jsonl:

* ``resources``: peak host RSS (and the CUDA allocator peak on a GPU), checkpoint bytes
  per generation, against the inputs' own bytes (3 fine-tunes + the base);
* seconds per candidate: each generation's wall time over its candidates (merge + score);
* the same candidate (the champion's generated config) merged by mergekit ``run_merge``
  disk to disk, and scored by ``lm_eval.simple_evaluate`` on the run's own task YAML and
  documents: the per-candidate ratio.

    .venv/bin/python benchmarks/scale_bench.py                      # ~100M, CPU
    .venv/bin/python benchmarks/scale_bench.py --layers 16 --hidden 2048 --device cuda  # ~1B
    .venv/bin/python benchmarks/scale_bench.py --inputs disk --no-reference  # inputs in files

Prints one JSON line; docs/benchmarks.md "Scale" holds the numbers and names the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from recipe_subprocess import run_recipe

WORK = Path(tempfile.gettempdir()) / "scale_bench"  # --work


def build_family(root: Path, hidden: int, layers: int, vocab: int) -> tuple[list[Path], Path, int]:
    """Base + three perturbed fine-tunes as save_pretrained dirs; (models, base, parameters)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from evomerge.data import get_tokenizer

    tokenizer = get_tokenizer(vocab)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=int(hidden * 8 / 3) // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 256),  # grouped-query attention, as released models
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    base = LlamaForCausalLM(config).eval()
    base.generation_config = GenerationConfig(max_new_tokens=32, do_sample=False)
    params = sum(p.numel() for p in base.parameters())
    dirs = []
    for name, seed in (("base_model", None), ("model_1", 1), ("model_2", 2), ("model_3", 3)):
        dest = root / name
        dirs.append(dest)
        if (dest / "config.json").is_file():
            continue
        model = base
        if seed is not None:
            model = LlamaForCausalLM(config).eval()
            model.load_state_dict(base.state_dict())
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * p.std().clamp_min(1e-3) * torch.randn(p.shape, generator=gen))
            model.generation_config = base.generation_config
        model.save_pretrained(dest)
        tokenizer.save_pretrained(dest)
    return dirs[1:], dirs[0], params


def recipe(models: list[Path], base: Path, out: Path, args: argparse.Namespace) -> Path:
    import yaml

    data = {
        "name": "scale-bench",
        "inputs": {"models": [str(m) for m in models], "base_model": str(base)},
        "evolution": {
            "strategy": "cmaes",
            "generations": args.generations,
            "layer_groups": 2,
            "strategy_options": {"popsize": args.popsize},
            "selection": {"validation_items": args.items, "top_k": 1},
            "seed": 0,
        },
        "fitness": {
            "max_items": args.items,
            "report_max_items": args.items,
            "time_repeats": 1,
            "time_seq_len": 64,
            "calibration_sequences": 2,
            "calibration_seq_len": 64,
        },
        "tracking": {"wandb_mode": "disabled"},
        "device": {"device": args.device, "storage": args.storage, "inputs": args.inputs},
        "output": str(out),
    }
    path = out.parent / "scale-bench.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def reference_candidate(
    family: Path, out: Path, result: dict[str, Any], items: int, device: str, work_dir: Path
) -> dict[str, float]:
    """The champion's config through mergekit run_merge, then lm_eval.simple_evaluate on it."""
    import lm_eval
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.fitness import suite_for
    from evomerge.fitness.lm_eval_adapter import EvoMergeLM
    from evomerge.merge.mergekit_bridge import run_with_mergekit

    work = Path(tempfile.mkdtemp(prefix="mk-", dir=work_dir))
    cwd = os.getcwd()
    os.chdir(family)  # the config names its inputs model_1.., base_model: dirs here
    try:
        start = time.perf_counter()
        merged = run_with_mergekit(
            result["champion_merge_config"], work / "out", intermediate_dir=work / "stages"
        )
        merge_s = time.perf_counter() - start
    finally:
        os.chdir(cwd)
    suite = suite_for(out / "tasks", split="fitness")
    start = time.perf_counter()
    model: Any = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    model = model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(family / "model_1")
    lm_eval.simple_evaluate(
        model=EvoMergeLM(pretrained=model, tokenizer=tokenizer),
        tasks=list(suite.names),
        task_manager=suite.task_manager(),
        limit=items,
    )
    return {"mergekit_merge_s": merge_s, "lm_eval_score_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=14)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--popsize", type=int, default=4)
    parser.add_argument("--items", type=int, default=8, help="documents per task")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--storage", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="device.storage"
    )
    parser.add_argument(
        "--inputs",
        default="auto",
        choices=["auto", "device", "host", "disk"],
        help="device.inputs: where the inputs are held",
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="skip mergekit run_merge + lm_eval.simple_evaluate (memory runs)",
    )
    parser.add_argument(
        "--work", type=Path, default=WORK, help="where the family (kept) and the run are written"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    family = args.work / f"llama-h{args.hidden}-l{args.layers}-v{args.vocab}"
    family.mkdir(parents=True, exist_ok=True)
    models, base, params = build_family(family, args.hidden, args.layers, args.vocab)
    input_bytes = sum((d / "model.safetensors").stat().st_size for d in [*models, base])
    out = args.work / "run"
    path = recipe(models, base, out, args)
    result, run_s = run_recipe(path, out, "recipe run")
    gens = [json.loads(line) for line in (out / "evolution.jsonl").read_text().splitlines()]
    searched = [g["seconds"] for g in gens if g["generation"] > 0]
    per_candidate = sum(searched) / (len(searched) * args.popsize)
    reference = (
        {}
        if args.no_reference
        else reference_candidate(family, out, result, args.items, args.device, args.work)
    )
    # the bytes one model is held in (the family is saved in fp32; bf16/fp16 storage halves it)
    model_bytes = input_bytes / 4 / (2 if args.storage in ("bf16", "fp16") else 1)
    resources = result["resources"]
    row = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
        "device": args.device,
        "storage": args.storage,
        "inputs": result["device"].get("inputs"),
        "parameters": params,
        "generations": args.generations,
        "popsize": args.popsize,
        "items_per_task": args.items,
        "run_s": round(run_s, 1),
        "seconds_per_candidate": round(per_candidate, 2),
        **{k: round(v, 2) for k, v in reference.items()},
        "ratio_vs_mergekit_lm_eval": (
            round(sum(reference.values()) / per_candidate, 1) if reference else None
        ),
        "input_bytes": input_bytes,
        "peak_host_bytes": resources["peak_host_bytes"],
        "peak_host_over_inputs_in_models": round(
            (resources["peak_host_bytes"] - input_bytes) / model_bytes, 2
        ),
        # inputs + libraries + harness, scored once: everything resident before a candidate
        "peak_host_bytes_before_search": resources["peak_host_bytes_before_search"],
        "peak_host_bytes_after_search": resources["peak_host_bytes_after_search"],
        "search_raised_peak_in_models": round(
            (resources["peak_host_bytes_after_search"] - resources["peak_host_bytes_before_search"])
            / model_bytes,
            2,
        ),
        "report_raised_peak_in_models": round(
            (resources["peak_host_bytes"] - resources["peak_host_bytes_after_search"])
            / model_bytes,
            2,
        ),
        # one forward batch's fp32 logits (fitness.batch_tokens x vocab)
        "eval_batch_tokens": result["device"]["eval_batch_tokens"],
        "eval_batch_logits_bytes": result["device"]["eval_batch_tokens"] * args.vocab * 4,
        "peak_device_bytes": resources["peak_device_bytes"],
        # the weights `recipe validate` planned on the device; the peak above it is eval
        # batches and merge temporaries
        "planned_device_weight_bytes": resources["planned_device_weight_bytes"],
        "checkpoint_bytes_per_generation": resources["checkpoint_bytes_per_generation"],
        "test_improvement": result["test_improvement"],
        "loop_gain_test": result["loop_gain_test"],
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
