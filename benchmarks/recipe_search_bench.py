"""Search benchmark through `evomerge recipe run`: strategies × seeds on the quickstart family.

Each config is the shipped quickstart recipe (recipes/quickstart.yaml) with a few
fields overridden; each (config, seed) is one real `recipe run` into its own
output dir, and the numbers are read back from its result.json: the held-out
improvement over the inputs' mean (test split, 64 documents per task), the two
honest baselines, `loop_gain_test` with its bootstrap interval, the evaluations
used and the wall time. Rows record which test documents the report scored: the
first 64 of each task (before session 13) or 64 drawn at random (``sample``), which
fitness documents the run started from (``own_sample``: the first ``max_items`` or a
draw by its seed, from session 14) and its generation-0 pick (``best_gen0_combo``).

    bash scripts/quickstart.sh            # makes runs/phase1-tiny once
    .venv/bin/python benchmarks/recipe_search_bench.py --configs seed-g3 cmaes-k2-g3 --seeds 0 1 2
    .venv/bin/python benchmarks/recipe_search_bench.py --table

Results are appended as JSON lines to ``--out`` (benchmarks/recipe_search_runs.jsonl);
``--table`` prints the per-config mean and spread (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
from pathlib import Path
from typing import Any

import yaml
from recipe_subprocess import run_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "quickstart.yaml"
WORK = Path("/tmp/recipe_search_bench")


def _cmaes(
    k: int, gens: int, pop: int = 8, sigma0: float = 0.1, emb: bool = False, **sel: Any
) -> dict[str, Any]:
    evo: dict[str, Any] = {
        "strategy": "cmaes",
        "generations": gens,
        "layer_groups": k,
        "embedding_group": emb,
        "strategy_options": {"popsize": pop, "sigma0": sigma0},
    }
    if sel:
        evo["selection"] = sel
    return {"evolution": evo}


def _seed(gens: int) -> dict[str, Any]:
    """The user's loop (the quickstart's settings before it shipped ``cmaes``)."""
    evo = {"strategy": "seed", "generations": gens, "strategy_options": {}, "layer_groups": 1}
    return {"evolution": {**evo, "embedding_group": False}}


#: name -> overrides of the quickstart recipe (merged into its mapping)
CONFIGS: dict[str, dict[str, Any]] = {
    "seed-g3": _seed(3),
    "seed-g8": _seed(8),
    "cmaes-k2-g3": _cmaes(2, 3),
    "cmaes-k2-g8": _cmaes(2, 8),
    "cmaes-k2-g8-s2": _cmaes(2, 8, sigma0=0.2),
    "cmaes-k2-g6-p6": _cmaes(2, 6, pop=6),
    "cmaes-k1-g8": _cmaes(1, 8),
    "cmaes-k2e-g8": _cmaes(2, 8, emb=True),
    "cmaes-k2e-g4": _cmaes(2, 4, emb=True),
    "cmaes-k2e-g8-fixed": _cmaes(2, 8, emb=True, minibatch="fixed"),
    "cmaes-k2e-g4-p12": _cmaes(2, 4, pop=12, emb=True),
    "cmaes-k2e-g8-s075": _cmaes(2, 8, sigma0=0.075, emb=True),  # the shipped quickstart
    "cmaes-k2-g8-s075": _cmaes(2, 8, sigma0=0.075),
    # the shipped quickstart with its own fitness sample drawn at random (by the run's seed)
    "cmaes-k2e-g8-s075-own-random": {
        **_cmaes(2, 8, sigma0=0.075, emb=True),
        "fitness": {"sample": "random"},
    },
    "seed-g8-own-random": {**_seed(8), "fitness": {"sample": "random"}},
    # the same document budget spent on fewer, better-measured candidates
    "cmaes-k2e-g4-s075-d32": {
        **_cmaes(2, 4, sigma0=0.075, emb=True),
        "fitness": {"max_items": 32},
    },
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and value and isinstance(out.get(key), dict):  # {} replaces
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _combo(config_yaml: str) -> str | None:
    """The 3-bit label in a combo config's header ("# evomerge combo 011: ...")."""
    found = re.search(r"combo (\d{3})", config_yaml)
    return found.group(1) if found else None


def run_one(name: str, seed: int) -> dict[str, Any]:
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe = _merge(recipe, CONFIGS[name])
    recipe["evolution"]["seed"] = seed
    recipe["inputs"]["phase1"]["out"] = str(ROOT / "runs" / "phase1-tiny")
    out = WORK / f"{name}-s{seed}"
    recipe["output"] = str(out)
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"{name}-s{seed}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    result, wall = run_recipe(path, out, f"{name} seed {seed}")
    search = result.get("search") or {}
    evals = search.get("evaluations")
    if evals is None:  # the seed loop: 8 per generation, generation 0 included
        evals = 8 * (1 + int(result["evolution_log"]["generations"]))
    base = result["baselines_test_improvement"]
    intervals = result.get("held_out_intervals") or {}
    return {
        "config": name,
        "seed": seed,
        "sample": "random" if "held_out_documents" in result else "first",
        # documents per task the report scored (report_max_items, or max_items where null)
        "report_items": max(d["scored"] for d in result["held_out_documents"].values())
        if "held_out_documents" in result
        else 64,
        "own_sample": result["recipe"]["fitness"].get("sample", "first"),
        "best_gen0_combo": _combo(result["baselines_merge_config"]["best_gen0"]),
        "loop_gain_interval": intervals.get("loop_gain_test"),
        "test_improvement": result["test_improvement"],
        "uniform_average": base["uniform_average"],
        "best_gen0": base["best_gen0"],
        "loop_gain_test": result["loop_gain_test"],
        "evaluations": evals,
        "wall_s": round(wall, 1),
    }


def table(rows: list[dict[str, Any]]) -> str:
    by: dict[str, list[dict[str, Any]]] = {}
    for row in rows:  # rows before session 13 scored each task's first 64 test documents
        sample = f"{row.get('sample', 'first')} {row.get('report_items', 64)}"
        by.setdefault(f"{row['config']} ({sample})", []).append(row)

    def gains(group: list[dict[str, Any]]) -> str:
        spans: list[Any] = [r.get("loop_gain_interval") for r in group]
        if not all(spans):
            return "—"
        return " / ".join(f"[{lo:+.1%}, {hi:+.1%}]" for lo, hi in spans)

    def stat(values: list[float], pct: bool = True) -> str:
        mean = statistics.fmean(values)
        spread = max(values) - min(values)
        return f"{mean:+.2%} ± {spread / 2:.2%}" if pct else f"{mean:.0f} ± {spread / 2:.0f}"

    lines = [
        "| config (report documents per task) | seeds | held-out vs inputs' mean "
        "| loop_gain_test | its 95 % interval per seed | evaluations | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, group in by.items():
        lines.append(
            f"| {name} | {','.join(str(r['seed']) for r in group)} "
            f"| {stat([r['test_improvement'] for r in group])} "
            f"| {stat([r['loop_gain_test'] for r in group])} "
            f"| {gains(group)} "
            f"| {stat([float(r['evaluations']) for r in group], pct=False)} "
            f"| {stat([r['wall_s'] for r in group], pct=False)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", default=[], choices=sorted(CONFIGS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/recipe_search_runs.jsonl")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    for name in args.configs:
        for seed in args.seeds:
            row = run_one(name, seed)
            print(json.dumps(row), flush=True)
            with args.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
    if args.table:
        rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
        print(table(rows))


if __name__ == "__main__":
    main()
