"""GPU probe: the whole Phase-2 path on one device in a few minutes, with per-step timings.

    python benchmarks/gpu_probe.py --out DIR [--preset phase1-25m] [--base-steps 40]
                                   [--specialist-steps 8] [--generations 3] [--max-items 200]

For a short device lease, where `recipes/phase2-evomerge.yaml` does not fit
(on an H200 one phase1-25m training step of 64 x 256 tokens took 0.95 s:
the 24 block passes x 16 memory chunks are launch-bound, so the shipped
family budget alone is ~10 minutes). It makes a family of the same
architecture with a token budget of a few dozen steps (weak models, but the
same shapes, dtypes and code paths), then runs the phase2 recipe's stages
and fitness on it for a few generations, and prints what each step cost:
training s/step, family scoring, per-generation seconds, the report, and the
device's allocator peak. Everything it writes stays under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="phase1-25m", choices=["tiny", "phase1-25m"])
    parser.add_argument("--base-steps", type=int, default=40)
    parser.add_argument("--specialist-steps", type=int, default=8)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--max-items", type=int, default=200)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from evomerge.evolution.recipe import load_recipe
    from evomerge.evolution.run import Run
    from evomerge.phase1 import FamilySpec, make_family
    from evomerge.phase1.train import TrainSpec

    shipped = FamilySpec.for_preset(args.preset)

    def budget(spec: TrainSpec, steps: int) -> TrainSpec:
        return TrainSpec(
            tokens=steps * spec.seq_len * spec.batch_size,
            seq_len=spec.seq_len,
            batch_size=spec.batch_size,
            lr=spec.lr,
            seed=spec.seed,
        )

    spec = FamilySpec(
        preset=args.preset,
        seed=0,
        vocab_size=shipped.vocab_size,
        base=budget(shipped.base, args.base_steps),
        specialist=budget(shipped.specialist, args.specialist_steps),
    )
    report: dict = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "preset": args.preset,
        "base_steps": args.base_steps,
        "specialist_steps": args.specialist_steps,
        "tokens_per_step": shipped.base.seq_len * shipped.base.batch_size,
    }
    start = time.perf_counter()
    family = make_family(args.out / "family", spec, progress=False)
    report["family_s"] = time.perf_counter() - start
    report["family_timings_s"] = family["timings_s"]
    report["train_s_per_step"] = {
        "base": family["timings_s"].get("base", 0.0) / max(1, args.base_steps),
        "specialist": family["timings_s"].get("model_1", 0.0) / max(1, args.specialist_steps),
    }
    print(json.dumps(report, indent=2), flush=True)

    phase2 = yaml.safe_load(Path("recipes/phase2-evomerge.yaml").read_text())
    phase2["inputs"] = {
        "models": family["models"],
        "base_model": family["base_model"],
        "architecture": "trm_titans_mag",
    }
    phase2["evolution"]["generations"] = args.generations
    phase2["evolution"]["early_stop"] = None
    phase2["fitness"]["max_items"] = args.max_items
    phase2["fitness"]["report_max_items"] = args.max_items
    phase2["tracking"] = {"wandb_mode": "offline", "project": "evomerge-probe"}
    phase2["output"] = str((args.out / "run").resolve())
    recipe_path = args.out / "probe-recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(phase2))
    start = time.perf_counter()
    outcome = Run(load_recipe(recipe_path), overwrite=True, progress=False, log=print).execute()
    report["recipe_s"] = time.perf_counter() - start
    result = outcome.result
    generations = [
        json.loads(line) for line in (args.out / "run" / "evolution.jsonl").read_text().splitlines()
    ]
    report["generation_s"] = [round(g["seconds"], 2) for g in generations]
    report["generation_split_s"] = [
        {k: round(g.get(f"{k}_seconds", 0.0), 2) for k in ("merge", "scoring")} for g in generations
    ]
    report["timing"] = result.get("timing")  # merge / scoring / bookkeeping, whole run
    report["fitness_improvement"] = result["improvement"]
    report["test_improvement"] = result["test_improvement"]
    report["device_report"] = result.get("device")
    report["exit_code"] = outcome.exit_code
    (args.out / "probe.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    main()
