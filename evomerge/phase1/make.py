"""`evomerge phase1 make`: build the demo Phase-1 family reproducibly and resumably.

Output layout (``DIR``): ``base/`` (the shared ancestor, usable as a merge
``base_model``), ``model_1``..``model_3`` (specialists, one per domain, in
``DOMAINS`` order) and ``phase1.json`` in the seed's Phase-1 handoff shape.
Every model dir is written under a temporary name and renamed when complete,
and ``phase1.json`` is written last: a run that was killed never leaves a
model that looks complete, and re-running reuses what is done.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evomerge.phase1.train import TrainSpec, train_causal_lm

ARCHITECTURE = "trm_titans_mag"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class FamilySpec:
    """Everything that determines the family's weights; saved in phase1.json to detect reuse."""

    preset: str
    seed: int
    vocab_size: int
    base: TrainSpec
    specialist: TrainSpec
    config_overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_preset(cls, preset: str, seed: int = 0) -> FamilySpec:
        """The budgets we ship per preset; tiny is sized to finish in ~1.5 min on 2 CPU cores."""
        if preset == "tiny":
            # (64, 64) windows: the best tokens/s of the tiny model on a CPU (measured, 3.8k
            # tokens/s on 2 quiet cores); the quickstart's 5-minute budget leaves ~90 s here.
            # Specialists take smaller batches: more optimizer steps for their few tokens.
            return cls(
                preset=preset,
                seed=seed,
                vocab_size=2048,
                base=TrainSpec(tokens=160_000, seq_len=64, batch_size=64, lr=3e-3, seed=seed),
                specialist=TrainSpec(
                    tokens=40_000, seq_len=64, batch_size=32, lr=2e-3, seed=seed + 1
                ),
            )
        if preset == "phase1-25m":
            # ~3 epochs of the 2.1M-token train split for the base, ~2-4 of each domain
            # for the specialists: more only overfits (docs/data.md), and it keeps making
            # the family a few GPU minutes (one forward is 24 block passes)
            return cls(
                preset=preset,
                seed=seed,
                vocab_size=8192,
                base=TrainSpec(tokens=6_000_000, seq_len=256, batch_size=64, lr=1.5e-3, seed=seed),
                specialist=TrainSpec(
                    tokens=1_000_000, seq_len=256, batch_size=64, lr=5e-4, seed=seed + 1
                ),
            )
        raise ValueError(f"unknown preset {preset!r}; choose 'tiny' or 'phase1-25m'")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _token_stream(
    tokenizer: PreTrainedTokenizerBase, paragraphs: list[str], cache: Path
) -> torch.Tensor:
    """Paragraphs joined by EOS as one 1-D tensor, cached next to the data."""
    if cache.exists():
        return torch.load(cache)
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for enc in tokenizer(paragraphs)["input_ids"]:
        ids.extend(enc)
        ids.append(eos)
    stream = torch.tensor(ids, dtype=torch.int32)
    tmp = cache.with_suffix(".tmp")
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(stream, tmp)
    os.replace(tmp, cache)
    return stream


def _save_atomic(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dest: Path) -> None:
    tmp = dest.with_name(f".tmp-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def _release_device_cache() -> None:
    """Hand training's cached GPU memory back: the evolution often runs next in this process
    (on an H200, nvidia-smi showed 78 GB held from the first training step to the end)."""
    if torch.cuda.is_available():
        import gc

        gc.collect()
        torch.cuda.empty_cache()


#: Documents per task when scoring the family (enough to rank the specialists, fast on a CPU).
EVAL_ITEMS = 32


def family_scorer(
    layout: Any, tokenizer: PreTrainedTokenizerBase, task_dir: Path, *, max_items: int = EVAL_ITEMS
) -> Any:
    """A callable scoring a model on every domain's test split with the fitness harness.

    Uses the same lm-eval tasks and metrics as the evolution's fitness
    (word perplexity, cloze accuracy), so Phase-1 and Phase-2 numbers compare.
    """
    from evomerge.data import DOMAINS
    from evomerge.fitness import FitnessConfig, FitnessHarness, suite_for, write_tasks
    from evomerge.fitness.tasks import cloze_task_name, ppl_task_name

    write_tasks(layout, task_dir, splits=("test",))
    config = FitnessConfig(split="test", max_items=max_items)
    # None: accelerate's device for this process (the GPU when there is one)
    harness = FitnessHarness.build(
        suite_for(task_dir, split="test"), tokenizer, None, config=config
    )

    def score(model: PreTrainedModel) -> dict[str, Any]:
        measured = harness.measure(model, cost=False)
        per_domain = {
            d: {
                "perplexity": measured.tasks[ppl_task_name(d, "test")]["word_perplexity"],
                "accuracy": measured.tasks[cloze_task_name(d, "test")]["acc"],
            }
            for d in DOMAINS
        }
        return {
            "perplexity": measured.perplexity,
            "accuracy": measured.accuracy,
            "per_domain": per_domain,
        }

    return score


def _forget_other_specs(out: Path, spec: FamilySpec) -> None:
    """Models made with other arguments must not be reused: remove them, then stamp this spec."""
    stamp = out / ".spec.json"
    wanted = json.dumps(spec.to_json(), sort_keys=True)
    if stamp.exists() and stamp.read_text() != wanted:
        for name in ("base", "model_1", "model_2", "model_3"):
            shutil.rmtree(out / name, ignore_errors=True)
    stamp.write_text(wanted)


def _load(dest: Path) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    import evomerge

    evomerge.load_plugins()  # trm_titans_mag is a plugin family
    return AutoModelForCausalLM.from_pretrained(dest)


def reusable_family(out: Path, spec: FamilySpec) -> dict[str, Any] | None:
    """The manifest of a family ``make_family`` would reuse as it is (it names ``spec`` and
    all four dirs are there), else None."""
    manifest_path = Path(out) / "phase1.json"
    if not manifest_path.is_file():
        return None
    try:
        existing = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return None
    names = ["base", *(f"model_{i}" for i in range(1, 4))]
    complete = (
        isinstance(existing, dict)
        and existing.get("spec") == json.loads(json.dumps(spec.to_json()))
        and all((Path(out) / name / "config.json").exists() for name in names)
    )
    return existing if complete else None


def make_family(
    out: Path,
    spec: FamilySpec,
    *,
    cache_dir: Path | None = None,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Build (or reuse) the family in ``out`` and return the phase1.json content."""
    from evomerge.architectures import get_architecture
    from evomerge.data import DOMAINS, prepare_data
    from evomerge.data.tokenizer import get_tokenizer

    out = Path(out).resolve()
    manifest_path = out / "phase1.json"
    existing = reusable_family(out, spec)
    if existing is not None:
        # a family copied to another machine or path is still the same family:
        # point the handoff at where it is now, not where it was made
        log(f"reusing complete Phase-1 family in {out}")
        moved = {
            "models": [str(out / f"model_{i}") for i in range(1, 4)],
            "base_model": str(out / "base"),
        }
        if {k: existing.get(k) for k in moved} != moved:  # the handoff file says so too
            existing.update(moved)
            tmp = manifest_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(existing, indent=2))
            tmp.replace(manifest_path)
        return dict(existing)
    out.mkdir(parents=True, exist_ok=True)
    (out / "phase1.json").unlink(missing_ok=True)  # stale or foreign: never trust it half-way
    _forget_other_specs(out, spec)
    layout = prepare_data(cache_dir, progress=progress)
    tokenizer = get_tokenizer(spec.vocab_size, cache_dir=cache_dir)
    streams_dir = layout.root / f"tokens-{spec.vocab_size}"
    streams = {
        d: _token_stream(tokenizer, layout.paragraphs(d, "train"), streams_dir / f"{d}-train.pt")
        for d in DOMAINS
    }

    arch = get_architecture(ARCHITECTURE)
    config = arch.config(
        spec.preset,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **spec.config_overrides,
    )
    timings: dict[str, float] = {}
    base_dir = out / "base"
    if (base_dir / "config.json").exists():
        log(f"reusing base model {base_dir}")
    else:
        torch.manual_seed(spec.seed)
        base = arch.model_class(config)
        # interleave the domains so the base sees all of them from the first step
        mixed = torch.cat([streams[d] for d in DOMAINS])
        stats = train_causal_lm(
            base, mixed, spec.base, description="base (all domains)", progress=progress
        )
        timings["base"] = stats.seconds
        _save_atomic(base, tokenizer, base_dir)
        del base
        _release_device_cache()

    model_dirs = []
    for index, domain in enumerate(DOMAINS, start=1):
        dest = out / f"model_{index}"
        model_dirs.append(dest)
        if (dest / "config.json").exists():
            log(f"reusing specialist {dest}")
            continue
        model = _load(base_dir)
        specialist_spec = TrainSpec(
            **{**asdict(spec.specialist), "seed": spec.specialist.seed + index}
        )
        stats = train_causal_lm(
            model,
            streams[domain],
            specialist_spec,
            description=f"model_{index} ({domain})",
            progress=progress,
        )
        timings[f"model_{index}"] = stats.seconds
        _save_atomic(model, tokenizer, dest)
        del model
        _release_device_cache()

    log("scoring the family on the test split")
    start = time.perf_counter()
    scorer = family_scorer(layout, tokenizer, out / ".tasks", max_items=EVAL_ITEMS)
    metrics = {
        name: scorer(_load(path).eval())
        for name, path in [
            ("base", base_dir),
            *[(f"model{i}", d) for i, d in enumerate(model_dirs, 1)],
        ]
    }
    timings["evaluate"] = time.perf_counter() - start

    result: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "models": [str(d) for d in model_dirs],
        "domains": list(DOMAINS),
        "base_model": str(base_dir),
        "configs": [json.loads((d / "config.json").read_text()) for d in model_dirs],
        "metrics": {k: v for k, v in metrics.items() if k != "base"},
        "base_metrics": metrics["base"],
        "spec": json.loads(json.dumps(spec.to_json())),
        "timings_s": timings,
    }
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, manifest_path)
    return result
