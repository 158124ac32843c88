"""Search benchmark for issue 12: genome search (CMA-ES) vs the soup and gen 0, selected honestly.

Research script, standalone: it uses evomerge as a library (fitness harness,
composite score, merge engine for the gen-0 combos) and materialises CMA-ES
candidates with plain torch over the state dicts (no I/O). Every held-out
number is the test split, 64 documents per task, as `recipe run` reports it;
the test split is never used for selection.

The fitness split is partitioned once per seed: per task a seeded permutation,
the first ``VAL_DOCS`` documents are the validation sample, the rest the
selection pool (fixed samples and fresh minibatches are drawn from it).

    OMP_NUM_THREADS=1 python benchmarks/search_bench.py --configs ta3-B48 --seeds 0 1 2

Results are appended as JSON lines to ``--out`` (default
benchmarks/search_runs.jsonl); ``--table`` prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

FAMILY = (
    Path(__file__).resolve().parents[1] / "runs" / "phase1-tiny"
)  # made by scripts/quickstart.sh
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
WORK = Path("/tmp/search_bench")
VAL_DOCS = 48
TEST_DOCS = 64
DOMAINS = ("narrative", "technical", "dialogue")


# --------------------------------------------------------------------------- configs
@dataclass
class Config:
    """One search configuration: genes, groups, CMA settings, selection protocol."""

    genes: str  # "ta" (task arithmetic vs base) | "linear" (softmax weights over inputs)
    k: int  # layer groups: 1 = global, 3 = layer0 / layer1 / non-layer, 7 = finer
    sel: str  # "fixed" (random sample of the pool) | "fresh" (per generation) | "first" (today's)
    docs: int  # selection sample size, documents per task
    popsize: int = 8
    gens: int = 9
    sigma0: float = 0.15
    topk_val: int = 0  # re-score the top k (by selection score) on validation before crowning
    extra: dict[str, Any] = field(default_factory=dict)


CONFIGS: dict[str, Config] = {
    "ta3-A16": Config("ta", 3, "fixed", 16),
    "ta3-F16": Config("ta", 3, "first", 16, topk_val=4),
    "ta3-B48": Config("ta", 3, "fixed", 48, topk_val=4),
    "ta3-C16": Config("ta", 3, "fresh", 16),
    "ta3-C32": Config("ta", 3, "fresh", 32),
    "ta3-D16": Config("ta", 3, "fixed", 16, topk_val=4),
    "ta1-B48": Config("ta", 1, "fixed", 48),
    "ta7-B48": Config("ta", 7, "fixed", 48),
    "lin3-B48": Config("linear", 3, "fixed", 48, sigma0=0.5),
    "ta3-C16-g24": Config("ta", 3, "fresh", 16, gens=24),
    "ta3-A16-g24": Config("ta", 3, "fixed", 16, gens=24),
    "ta3-C16v": Config("ta", 3, "fresh", 16, topk_val=4),
    "ta7-C16": Config("ta", 7, "fresh", 16),
    "ta3-C16-s3": Config("ta", 3, "fresh", 16, sigma0=0.3),
}


def group_of(name: str, k: int) -> int:
    """Layer group of a tensor: the tiny model has 2 layers (k=3: layer0, layer1, non-layer)."""
    if k == 1:
        return 0
    if ".layers." not in name:
        return k - 1
    layer = int(name.split(".layers.")[1].split(".")[0])
    if k == 3:
        return layer
    if k == 7:  # per layer: attention, memory, mlp+norms
        sub = 0 if ".self_attn." in name else 1 if ".memory." in name else 2
        return 3 * layer + sub
    raise ValueError(f"k={k} not supported for a 2-layer model")


# --------------------------------------------------------------------------- setup
class Bench:
    """Models, harnesses and reference scores shared by every configuration."""

    def __init__(self) -> None:
        from transformers import AutoTokenizer

        from evomerge.architectures import get_architecture
        from evomerge.data import prepare_data
        from evomerge.evolution.recipe import load_recipe
        from evomerge.fitness import write_tasks

        torch.set_num_threads(1)
        self.recipe = load_recipe(RECIPE)
        self.layout = prepare_data(progress=False)
        paths = [FAMILY / f"model_{i}" for i in (1, 2, 3)]
        self.inputs = [load_file(p / "model.safetensors") for p in paths]
        self.base = load_file(FAMILY / "base" / "model.safetensors")
        self.keys = list(self.base)
        self.deltas = [{k: m[k] - self.base[k] for k in self.keys} for m in self.inputs]
        arch = get_architecture("trm_titans_mag")
        self.model_config = arch.config_class.from_pretrained(paths[0])
        self.model = arch.model_class(self.model_config).eval()
        self.params = dict(self.model.state_dict())
        self.tokenizer = AutoTokenizer.from_pretrained(paths[0])
        WORK.mkdir(parents=True, exist_ok=True)
        self.task_dir = write_tasks(self.layout, WORK / "tasks", domains=DOMAINS)
        self.docs = {
            (kind, d): [
                line
                for line in Path(getattr(self.layout, f"{kind}_path")(d, "fitness"))
                .read_text()
                .splitlines()
                if line.strip()
            ]
            for kind in ("ppl", "cloze")
            for d in DOMAINS
        }
        self._harness_cache: dict[str, Any] = {}
        from evomerge.fitness import FitnessHarness, suite_for

        probe = FitnessHarness.build(
            suite_for(self.task_dir, domains=DOMAINS, split="test"),
            self.tokenizer,
            "cpu",
            config=self.cfg(1),
            model_config=self.model_config,
        )
        ms = [probe.measure(self.load(sd), cost=True) for sd in self.inputs]
        self.shared = (
            len(ms) / sum(1 / m.time_per_1k_tokens for m in ms),
            round(len(ms) / sum(1 / m.peak_memory_bytes for m in ms)),
        )

    # ---- fitness
    def cfg(self, max_items: int | None) -> Any:
        from evomerge.fitness import FitnessConfig

        data = self.recipe.fitness.model_dump()
        for extra in ("min_improvement", "report_max_items"):
            data.pop(extra)
        data["max_items"] = max_items
        return FitnessConfig.model_validate(data)

    def _build(self, task_dir: Path, split: str, max_items: int | None) -> Any:
        from evomerge.fitness import CompositeFitness, FitnessHarness, suite_for

        cfg = self.cfg(max_items)
        suite = suite_for(task_dir, domains=DOMAINS, split=split)
        # Any: the bench hangs its normalisation on the harness (composite, input_mean)
        harness: Any = FitnessHarness.build(
            suite, self.tokenizer, "cpu", config=cfg, model_config=self.model_config
        )
        ms = [self._share(harness.measure(self.load(sd), cost=False)) for sd in self.inputs]
        harness.composite = CompositeFitness.from_inputs(cfg, ms)
        harness.input_mean = statistics.mean(harness.composite.score(m).total for m in ms)
        return harness

    def harness_std(self, split: str, max_items: int | None) -> Any:
        """The run's own harness: first ``max_items`` documents per task of ``split``."""
        key = f"std-{split}-{max_items}"
        if key not in self._harness_cache:
            self._harness_cache[key] = self._build(self.task_dir, split, max_items)
        return self._harness_cache[key]

    def harness_subset(self, name: str, picks: dict[tuple[str, str], list[int]]) -> Any:
        """A harness over chosen fitness-split documents (indices per (kind, domain))."""
        from evomerge.fitness import write_tasks

        if name in self._harness_cache:
            return self._harness_cache[name]
        root = WORK / "subsets" / name
        for (kind, d), idx in picks.items():
            f = root / kind / d / "fitness.jsonl"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text("".join(self.docs[(kind, d)][i] + "\n" for i in sorted(idx)))

        class Layout:
            def ppl_path(self, domain: str, split: str) -> Path:
                return root / "ppl" / domain / "fitness.jsonl"

            def cloze_path(self, domain: str, split: str) -> Path:
                return root / "cloze" / domain / "fitness.jsonl"

        tdir = write_tasks(Layout(), root / "tasks", domains=DOMAINS, splits=("fitness",))
        h = self._build(tdir, "fitness", None)
        self._harness_cache[name] = h
        return h

    def _share(self, m: Any) -> Any:
        m.time_per_1k_tokens, m.peak_memory_bytes = self.shared
        return m

    def load(self, sd: dict[str, torch.Tensor]) -> torch.nn.Module:
        with torch.no_grad():
            for k in self.keys:
                self.params[k].copy_(sd[k])
        return self.model

    def improvement(self, harness: Any, sd: dict[str, torch.Tensor]) -> float:
        """Improvement of ``sd``'s composite fitness over the inputs' mean on ``harness``."""
        total = harness.composite.score(self._share(harness.measure(self.load(sd), cost=False)))
        return (total.total - harness.input_mean) / abs(harness.input_mean)

    # ---- genomes
    def materialise(self, genes: str, k: int, x: Any) -> dict[str, torch.Tensor]:
        lam = torch.as_tensor(list(x), dtype=torch.float64).view(k, 3)
        if genes == "linear":
            lam = torch.softmax(lam, dim=1)
        out = {}
        for key in self.keys:
            g = lam[group_of(key, k)].tolist()
            if genes == "ta":
                t = self.base[key].clone()
                for i in range(3):
                    t.add_(self.deltas[i][key], alpha=g[i])
            else:
                t = sum(g[i] * self.inputs[i][key] for i in range(3))
            out[key] = t
        return out

    def x0(self, genes: str, k: int) -> list[float]:
        """The uniform average: λ = 1/3 (task arithmetic) or logits 0 (linear)."""
        return [1 / 3 if genes == "ta" else 0.0] * (3 * k)


def partition(bench: Bench, seed: int) -> tuple[dict, dict]:
    """Validation picks (VAL_DOCS per task) and the selection pool, per (kind, domain)."""
    val, pool = {}, {}
    for key, docs in bench.docs.items():
        idx = list(range(len(docs)))
        random.Random(f"partition-{seed}-{key}").shuffle(idx)
        val[key], pool[key] = idx[:VAL_DOCS], idx[VAL_DOCS:]
    return val, pool


def draw(pool: dict, n: int, rng: random.Random) -> dict:
    return {key: rng.sample(idx, min(n, len(idx))) for key, idx in pool.items()}


# --------------------------------------------------------------------------- baselines
def gen0(bench: Bench, seed: int) -> list[dict[str, torch.Tensor]]:
    """The eight gen-0 combos exactly as the run merges them (engine, recipe stages, seeds)."""
    from evomerge.evolution.operators import derive_seed
    from evomerge.merge.combos import COMBO_LABELS as COMBOS
    from evomerge.merge.combos import StageParams
    from evomerge.merge.engine import MergeEngine

    cal = bench.harness_std("fitness", bench.recipe.fitness.max_items)
    engine = MergeEngine(StageParams(methods=bench.recipe.stages), calibration=cal.calibration_loss)
    out = []
    for i, label in enumerate(COMBOS):
        target = {k: torch.empty_like(v) for k, v in bench.base.items()}
        engine.merge_combo(
            label,
            [dict(sd) for sd in bench.inputs],
            out=target,
            seed=derive_seed(seed, "combo", f"g0000-{i}"),
            scratch_model=bench.model,
        )
        out.append({k: v.clone() for k, v in target.items()})
    return out


def baselines(bench: Bench, seed: int, val_h: Any) -> dict[str, Any]:
    test = bench.harness_std("test", TEST_DOCS)
    fit16 = bench.harness_std("fitness", bench.recipe.fitness.max_items)
    combos = gen0(bench, seed)
    fit_scores = [bench.improvement(fit16, sd) for sd in combos]
    val_scores = [bench.improvement(val_h, sd) for sd in combos]
    b_fit = max(range(8), key=lambda i: fit_scores[i])
    b_val = max(range(8), key=lambda i: val_scores[i])
    uniform = bench.materialise("ta", 1, [1 / 3] * 3)
    return {
        "uniform_average": bench.improvement(test, uniform),
        "best_gen0_fit16": bench.improvement(test, combos[b_fit]),
        "best_gen0_val": bench.improvement(test, combos[b_val]),
        "gen0_fit16": fit_scores,
        "gen0_val": val_scores,
        "best_gen0_fit16_idx": b_fit,
        "best_gen0_val_idx": b_val,
        "uniform_val": bench.improvement(val_h, uniform),
    }


# --------------------------------------------------------------------------- search
def _fresh(bench: Bench, name: str, picks: dict, ref: Any) -> Any:
    """A minibatch harness that borrows ``ref``'s normalisation (no extra input evaluations)."""
    from evomerge.fitness import FitnessHarness, suite_for, write_tasks

    if name in bench._harness_cache:
        return bench._harness_cache[name]
    root = WORK / "subsets" / name
    for (kind, d), idx in picks.items():
        f = root / kind / d / "fitness.jsonl"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("".join(bench.docs[(kind, d)][i] + "\n" for i in sorted(idx)))

    class Layout:
        def ppl_path(self, domain: str, split: str) -> Path:
            return root / "ppl" / domain / "fitness.jsonl"

        def cloze_path(self, domain: str, split: str) -> Path:
            return root / "cloze" / domain / "fitness.jsonl"

    tdir = write_tasks(Layout(), root / "tasks", domains=DOMAINS, splits=("fitness",))
    cfg = bench.cfg(None)
    h: Any = FitnessHarness.build(  # Any: the normalisation hangs on it, as in Bench._build
        suite_for(tdir, domains=DOMAINS, split="fitness"),
        bench.tokenizer,
        "cpu",
        config=cfg,
        model_config=bench.model_config,
    )
    h.composite, h.input_mean = ref.composite, ref.input_mean
    bench._harness_cache[name] = h
    return h


def search(bench: Bench, name: str, cfg: Config, seed: int, base: dict[str, Any]) -> dict[str, Any]:
    import cma

    val_picks, pool = partition(bench, seed)
    val_h = bench.harness_subset(f"val-{seed}", val_picks)
    rng = random.Random(f"selection-{seed}")
    t0 = time.perf_counter()
    evals = 0
    sel_h = None
    if cfg.sel == "first":  # today's sample: the first N documents per task, as the run cuts it
        sel_h = bench.harness_std("fitness", cfg.docs)
        evals += 3
    if cfg.sel == "fixed":
        sel_h = bench.harness_subset(f"fixed-{seed}-{cfg.docs}", draw(pool, cfg.docs, rng))
        evals += 3  # the inputs, for the normalisation reference
    x0 = bench.x0(cfg.genes, cfg.k)
    es = cma.CMAEvolutionStrategy(
        x0, cfg.sigma0, {"popsize": cfg.popsize, "seed": seed + 1, "verbose": -9}
    )
    history: list[dict[str, Any]] = []
    for g in range(cfg.gens):
        if cfg.sel == "fresh":
            sel_h = _fresh(bench, f"fresh-{seed}-{cfg.docs}-{g}", draw(pool, cfg.docs, rng), val_h)
        xs = es.ask()
        fs = [bench.improvement(sel_h, bench.materialise(cfg.genes, cfg.k, x)) for x in xs]
        evals += len(xs)
        es.tell(xs, [-f for f in fs])
        history += [
            {"gen": g, "x": [float(v) for v in x], "sel": f} for x, f in zip(xs, fs, strict=False)
        ]
    search_s = time.perf_counter() - t0
    mean = [float(v) for v in es.mean]
    champions: dict[str, list[float]] = {
        "best": max(history, key=lambda h: h["sel"])["x"],
        "mean": mean,
    }
    t1 = time.perf_counter()
    if cfg.topk_val:
        top = sorted(history, key=lambda h: -h["sel"])[: cfg.topk_val]
        scored = [
            (bench.improvement(val_h, bench.materialise(cfg.genes, cfg.k, h["x"])), h["x"])
            for h in top
        ]
        scored.append((bench.improvement(val_h, bench.materialise(cfg.genes, cfg.k, mean)), mean))
        best_val, x_val = max(scored, key=lambda t: t[0])
        champions["val"] = x_val
        # never crown below the soup on validation
        champions["val_soup"] = x_val if best_val > base["uniform_val"] else x0
    val_s = time.perf_counter() - t1
    test = bench.harness_std("test", TEST_DOCS)
    floor = max(base["uniform_average"], base["best_gen0_fit16"])
    results: dict[str, dict[str, Any]] = {}
    for rule, x in champions.items():
        t = bench.improvement(test, bench.materialise(cfg.genes, cfg.k, x))
        results[rule] = {"test": t, "loop_gain_test": t - floor, "x": x}
    return {
        "config": name,
        "seed": seed,
        "cfg": cfg.__dict__,
        "evals": evals + (cfg.topk_val + 1 if cfg.topk_val else 0),
        "search_s": search_s,
        "val_s": val_s,
        "best_sel": max(h["sel"] for h in history),
        "baselines": {k: v for k, v in base.items() if not k.startswith("gen0_")},
        "champions": results,
        "torch": torch.__version__,
    }


def time_evals(bench: Bench) -> dict[str, float]:
    """Seconds per candidate evaluation (materialise + measure + score) per sample size."""
    _, pool = partition(bench, 0)
    out = {}
    for n in (16, 32, 48, 64):
        h = bench.harness_subset(f"timing-{n}", draw(pool, n, random.Random(n)))
        x = bench.x0("ta", 3)
        t = time.perf_counter()
        for _ in range(3):
            bench.improvement(h, bench.materialise("ta", 3, x))
        out[str(n)] = (time.perf_counter() - t) / 3
    return out


def table(path: Path) -> str:
    """Markdown: per config and crowning rule, mean ± spread (sd) over seeds of the held-out figures."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    runs = [r for r in rows if "config" in r]
    lines = [
        "| config | rule | seeds | evals | search s (mean) | held-out impr. | loop_gain_test |",
        "|---|---|---|---|---|---|---|",
    ]
    names = list(dict.fromkeys(r["config"] for r in runs))
    for name in names:
        mine = [r for r in runs if r["config"] == name]
        for rule in mine[0]["champions"]:
            got = [r for r in mine if rule in r["champions"]]
            t = [r["champions"][rule]["test"] for r in got]
            g = [r["champions"][rule]["loop_gain_test"] for r in got]

            def sd(v):
                return statistics.stdev(v) if len(v) > 1 else float("nan")

            lines.append(
                f"| {name} | {rule} | {','.join(str(r['seed']) for r in got)} | "
                f"{got[0]['evals']} | {statistics.mean(r['search_s'] for r in got):.0f} | "
                f"{statistics.mean(t):+.2%} ± {sd(t):.2%} | {statistics.mean(g):+.4f} ± {sd(g):.4f} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="*", default=[])
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("search_runs.jsonl"))
    ap.add_argument("--time", action="store_true")
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    if args.table:
        print(table(args.out))
        return
    t = time.perf_counter()
    bench = Bench()
    print(f"setup {time.perf_counter() - t:.1f}s", flush=True)
    if args.time:
        row: dict[str, Any] = {"timing": time_evals(bench), "torch": torch.__version__}
        print(row, flush=True)
        with args.out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
    for seed in args.seeds:
        val_picks, _ = partition(bench, seed)
        cache = WORK / f"baselines-{seed}.json"
        if cache.exists():
            base = json.loads(cache.read_text())
        else:
            base = baselines(bench, seed, bench.harness_subset(f"val-{seed}", val_picks))
            cache.write_text(json.dumps(base))
        print(f"seed {seed} baselines", base, flush=True)
        for name in args.configs:
            row = search(bench, name, CONFIGS[name], seed, base)
            short = {
                r: (round(c["test"], 4), round(c["loop_gain_test"], 4))
                for r, c in row["champions"].items()
            }
            print(
                f"{name} seed {seed} evals {row['evals']} search {row['search_s']:.0f}s "
                f"best_sel {row['best_sel']:.4f} {short}",
                flush=True,
            )
            with args.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
