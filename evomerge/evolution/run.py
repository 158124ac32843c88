"""`evomerge recipe run`: wire inputs, merge engine, fitness harness, loop, tracking and report.

Order matters for the promises the CLI makes: the recipe and the inputs are
validated before the output dir is touched (bad input writes nothing), and the
checkpoint is written after every evaluated generation (a killed run resumes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from evomerge.evolution.checkpoint import Checkpoint, atomic_write_bytes
from evomerge.evolution.loop import EvolutionLoop, LoopSettings
from evomerge.evolution.pool import ModelPool, load_weights_, weights
from evomerge.evolution.recipe import Recipe, RecipeError
from evomerge.merge.combos import COMBO_LABELS

EXIT_PASS, EXIT_BELOW_TARGET, EXIT_BAD_INPUT = 0, 1, 2
RESIDENT_LIMIT = 12


@dataclass
class RunOutcome:
    exit_code: int
    out_dir: Path
    result: dict[str, Any]


def recipe_hash(recipe: Recipe) -> str:
    """What must match for --resume: everything but the output dir and the generation count."""
    data = recipe.model_dump(mode="json")
    data.pop("output", None)
    data["evolution"].pop("generations", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def resolve_inputs(
    recipe: Recipe, log: Callable[[str], None], progress: bool
) -> tuple[list[Path], Path | None]:
    """The three input dirs (making the demo family first when the recipe asks for it)."""
    if recipe.inputs.models is not None:
        return list(recipe.inputs.models), recipe.inputs.base_model
    from evomerge.phase1 import FamilySpec, make_family

    src = recipe.inputs.phase1
    assert src is not None
    family = make_family(
        src.out, FamilySpec.for_preset(src.preset, seed=src.seed), progress=progress, log=log
    )
    base = recipe.inputs.base_model or Path(family["base_model"])
    return [Path(p) for p in family["models"]], base


def _prepare_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    if resume:
        if not Checkpoint(out).exists():
            raise RecipeError(f"{out}: --resume: no checkpoint in this output dir")
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RecipeError(
                f"{out}: output dir is not empty; use --resume to continue or --overwrite to start over"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _shared_cost(measurements: Sequence[Any]) -> tuple[float, int]:
    """Harmonic means of the inputs' time and memory: 1/shared = mean(1/x_i), so with
    ``normalize: inputs`` the shared speed and memory terms are 1.0 (memory: to a byte)."""
    n = len(measurements)
    return (
        n / sum(1 / m.time_per_1k_tokens for m in measurements),
        round(n / sum(1 / m.peak_memory_bytes for m in measurements)),
    )


def _device_report(device: torch.device) -> dict[str, Any]:
    """Which device ran the run and its allocator peak (the seed's < 6 GB budget is per GPU)."""
    report: dict[str, Any] = {"type": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        report["name"] = torch.cuda.get_device_name(device)
        from evomerge.fitness.cost import process_peak_memory

        report["peak_memory_allocated_bytes"] = process_peak_memory(device)
    return report


def _device(recipe: Recipe) -> torch.device:
    if recipe.device.device == "auto":
        from accelerate import PartialState

        return PartialState().device
    return torch.device(recipe.device.device)


class Run:
    """One evolution run; `execute()` does everything and returns the outcome."""

    def __init__(
        self,
        recipe: Recipe,
        *,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        self.recipe = recipe
        self.resume = resume
        self.overwrite = overwrite
        self.progress = progress
        self.log = log
        self.out = Path(recipe.output)
        self._display: Any = None  # the live progress line, set up by execute()

    # ----------------------------------------------------------------- setup
    def _load_inputs(self, paths: Sequence[Path], pool: ModelPool) -> list[PreTrainedModel]:
        from transformers import AutoModelForCausalLM

        models = []
        for path in paths:
            loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            slot = pool.acquire()
            load_weights_(slot, {k: v for k, v in weights(loaded).items()})
            models.append(slot)
            del loaded
        return models

    def _fitness_config(self, split_items: int | None) -> Any:
        from evomerge.fitness import FitnessConfig

        data = self.recipe.fitness.model_dump()
        for extra in ("min_improvement", "report_max_items"):
            data.pop(extra)
        if split_items is not None:
            data["max_items"] = split_items
        if self.recipe.device.precision == "bf16":
            data["precision"] = "bf16"
        return FitnessConfig.model_validate(data)

    def _reference(
        self, composite_cls: Any, cfg: Any, harness: Any, inputs: Sequence[PreTrainedModel]
    ) -> tuple[Any, list[Any]]:
        """Normalisation reference and shared cost from the inputs; on resume, the run's own.

        Every candidate has the inputs' architecture (same tensors, shapes and
        dtypes), so its latency and peak memory equal the inputs' up to timing
        noise. Measuring them per candidate would let noise pick winners and
        make runs irreproducible; instead the inputs' median latency and mean
        peak memory are measured once (with their repeat noise, reported) and
        shared by every candidate.
        """
        from evomerge.fitness.cost import noise_stats

        ref_file = self.out / ".checkpoint" / "reference.json"
        measurements = [harness.measure(m) for m in inputs]
        if self.resume and ref_file.exists():
            saved = json.loads(ref_file.read_text())
            composite = composite_cls(cfg, saved["reference"])
            self.shared_cost = saved["shared_cost"]
        else:
            composite = composite_cls.from_inputs(cfg, measurements)
            samples = [t for m in measurements for t in m.time_samples]
            time_shared, memory_shared = _shared_cost(measurements)
            self.shared_cost = {
                "time_per_1k_tokens": time_shared,
                "peak_memory_bytes": memory_shared,
                "time_noise": noise_stats(samples),
                "peak_memory_per_input": [m.peak_memory_bytes for m in measurements],
            }
            payload = {"reference": composite.reference, "shared_cost": self.shared_cost}
            payload = self._broadcast(payload)  # every process uses the main process's numbers
            composite = composite_cls(cfg, payload["reference"])
            self.shared_cost = payload["shared_cost"]
            if self.is_main:
                ref_file.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(ref_file, json.dumps(payload).encode())
        for m in measurements:
            self._share_cost(m)
        return composite, [composite.score(m) for m in measurements]

    @staticmethod
    def _broadcast(payload: dict[str, Any]) -> dict[str, Any]:
        from accelerate import PartialState

        if PartialState().num_processes == 1:
            return payload
        from accelerate.utils import broadcast_object_list

        box = [payload]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def _share_cost(self, m: Any) -> Any:
        m.time_per_1k_tokens = self.shared_cost["time_per_1k_tokens"]
        m.peak_memory_bytes = self.shared_cost["peak_memory_bytes"]
        return m

    # ------------------------------------------------------------------- run
    def execute(self) -> RunOutcome:
        from accelerate import PartialState
        from transformers import AutoTokenizer

        from evomerge.architectures import get_architecture
        from evomerge.data import prepare_data
        from evomerge.evolution.tracking import Tracker
        from evomerge.evolution.validate import validate_inputs
        from evomerge.fitness import CompositeFitness, FitnessHarness, suite_for, write_tasks
        from evomerge.merge.combos import StageParams
        from evomerge.merge.engine import MergeEngine

        dist = PartialState()
        self.is_main = dist.is_main_process
        recipe = self.recipe
        with (
            dist.main_process_first()
        ):  # one process makes the demo family / data, the rest reuse it
            paths, base = resolve_inputs(recipe, self.log, self.progress and self.is_main)
            layout = prepare_data(progress=self.progress and self.is_main)
        self.input_paths = [Path(p) for p in paths]
        validated = validate_inputs(
            paths,
            architecture=recipe.inputs.architecture,
            expected_params=recipe.inputs.expected_params,
            params_tolerance=recipe.inputs.params_tolerance,
            base_model=base,
        )
        for warning in validated.warnings:
            self.log(f"warning: {warning}")
        if self.is_main:
            _prepare_out_dir(self.out, resume=self.resume, overwrite=self.overwrite)
        dist.wait_for_everyone()
        device = _device(recipe)
        arch = get_architecture(recipe.inputs.architecture)
        config = arch.config_class.from_pretrained(paths[0])
        dtype = torch.float32

        def factory() -> PreTrainedModel:
            model = arch.model_class(config)
            return model.to(device=device, dtype=dtype).eval()  # type: ignore[call-arg]

        pool = ModelPool(factory, capacity=RESIDENT_LIMIT)
        inputs = self._load_inputs(paths, pool)
        tokenizer = AutoTokenizer.from_pretrained(paths[0])

        domains = recipe.fitness.domains
        with dist.main_process_first():
            task_dir = write_tasks(layout, self.out / "tasks", domains=domains)
        cfg = self._fitness_config(None)
        suite = suite_for(
            task_dir, domains=domains, split="fitness", tasks=cfg.tasks, extra_dirs=cfg.task_dirs
        )
        harness = FitnessHarness.build(suite, tokenizer, device, config=cfg, model_config=config)
        composite, input_scores = self._reference(CompositeFitness, cfg, harness, inputs)

        engine = MergeEngine(
            StageParams(methods=recipe.stages, table=recipe.combo_table()),
            calibration=harness.calibration_loss,
        )

        def merge(
            label: str, parents: Sequence[PreTrainedModel], out: PreTrainedModel, seed: int
        ) -> dict[str, Any]:
            result = engine.merge_combo(
                label, [weights(p) for p in parents], out=weights(out), seed=seed, scratch_model=out
            )
            return {
                "label": label,
                "config_yaml": result.config_yaml,
                "frankenmerge_slices": result.frankenmerge_slices,
                "fallbacks": [
                    {"stage": s.stage, "method": s.method, "reason": s.fallback}
                    for s in result.stage_logs
                    if s.fallback
                ],
            }

        def score(model: PreTrainedModel) -> Any:
            return composite.score(self._share_cost(harness.measure(model, cost=False)))

        def score_many(models: list[PreTrainedModel]) -> list[Any]:
            """Each process scores every n-th candidate; results are gathered to all."""
            if dist.num_processes == 1:
                return [score(m) for m in models]
            from accelerate.utils import gather_object

            from evomerge.fitness import FitnessScore

            mine = {
                i: score(m).to_dict()
                for i, m in enumerate(models)
                if i % dist.num_processes == dist.process_index
            }
            merged: dict[int, dict[str, Any]] = {}
            for part in gather_object([mine]):
                merged.update(part)
            return [FitnessScore(**merged[i]) for i in range(len(models))]

        evo = recipe.evolution
        settings = LoopSettings(
            generations=evo.generations,
            sigma=evo.mutation.sigma,
            sigma_mode=evo.mutation.sigma_mode,
            operator=evo.mutation.operator,
            rate=evo.mutation.rate,
            min_diversity=evo.min_diversity,
            early_stop_min_improvement=None
            if evo.early_stop is None
            else evo.early_stop.min_improvement,
            early_stop_patience=5 if evo.early_stop is None else evo.early_stop.patience,
            seed=evo.seed,
        )
        baseline = sum(s.total for s in input_scores) / len(input_scores)
        tracker_cm: Any = (
            Tracker(
                self.out,
                run_name=recipe.name,
                project=recipe.tracking.project,
                wandb_mode=recipe.tracking.wandb_mode,
                config=recipe.model_dump(mode="json"),
                resume=self.resume,
                baseline=baseline,
                target=baseline * (1 + recipe.fitness.min_improvement),
            )
            if self.is_main
            else contextlib.nullcontext(None)
        )
        from evomerge.evolution.display import GenerationDisplay

        self._display = GenerationDisplay(evo.generations, enabled=self.progress and self.is_main)
        with tracker_cm as tracker, self._display:
            loop = EvolutionLoop(
                inputs=inputs,
                pool=pool,
                merge=merge,
                score=score,
                settings=settings,
                checkpoint=Checkpoint(self.out),
                recipe_hash=recipe_hash(recipe),
                on_generation=lambda rec: self._on_generation(tracker, rec),
                on_progress=self.log,
                score_many=score_many,
                is_main_process=self.is_main,
            )
            if self.resume:
                loop.resume()
                self._display.resumed(loop.state.generation)
                self.log(f"resumed after generation {loop.state.generation}")
            else:
                loop.start()
            state = loop.run()
            dist.wait_for_everyone()
            if not self.is_main:  # the main process writes the report; the others are done
                return RunOutcome(EXIT_PASS, self.out, {})
            result = self._report(
                loop, pool, inputs, input_scores, tokenizer, task_dir, device, config
            )
            tracker.finish(
                {
                    k: result[k]
                    for k in ("fitness", "improvement", "test_improvement", "passed")
                    if k in result
                }
            )
        shutil.rmtree(
            self.out / ".checkpoint", ignore_errors=True
        )  # intermediate models are not kept
        code = EXIT_PASS if result["passed"] else EXIT_BELOW_TARGET
        self.log(
            f"champion {state.champion_id}: fitness {result['fitness']:.4f} "
            f"({result['improvement']:+.1%} vs inputs; test split {result['test_improvement']:+.1%})"
        )
        return RunOutcome(code, self.out, result)

    def _on_generation(self, tracker: Any, record: dict[str, Any]) -> None:
        if tracker is None:
            return
        tracker.log_generation(record)
        self._display.update(record)
        self.log(
            f"gen {record['generation']:>3}  best {record['best_fitness']:.4f}  "
            f"diversity {record['diversity']:.3f}  resident {record['resident_models'] + 0}"
            + ("  (re-seeded)" if record["reseeded"] else "")
        )

    # --------------------------------------------------------------- report
    def _report(
        self,
        loop: EvolutionLoop,
        pool: ModelPool,
        inputs: Sequence[PreTrainedModel],
        input_scores: Sequence[Any],
        tokenizer: Any,
        task_dir: Path,
        device: torch.device,
        config: Any,
    ) -> dict[str, Any]:
        from evomerge.fitness import CompositeFitness, FitnessHarness, suite_for

        state = loop.state
        for cand in loop.population:  # the population is done: make room for the champion
            pool.release(cand.model)
        loop.population = []
        champion = pool.acquire()
        load_weights_(champion, loop.champion_weights())
        champion_dir = self.out / "champion"
        tmp = self.out / ".tmp-champion"
        shutil.rmtree(tmp, ignore_errors=True)
        champion.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(champion_dir, ignore_errors=True)
        os.replace(tmp, champion_dir)

        # held-out test split: never used for selection
        cfg = self._fitness_config(self.recipe.fitness.report_max_items)
        suite = suite_for(
            task_dir,
            domains=self.recipe.fitness.domains,
            split="test",
            tasks=None,
            extra_dirs=cfg.task_dirs,
        )
        test_harness = FitnessHarness.build(
            suite, tokenizer, device, config=cfg, model_config=config
        )
        test_inputs = [test_harness.measure(m) for m in inputs]
        test_fitness = CompositeFitness.from_inputs(cfg, test_inputs)
        # Same architecture as in selection: the champion and the inputs share the inputs'
        # measured cost, so timing noise cannot move the held-out improvement (a champion
        # timed alone once measured 1.49x "faster" while the other process was exiting).
        shared = _shared_cost(test_inputs)
        for m in test_inputs:
            m.time_per_1k_tokens, m.peak_memory_bytes = shared
        test_input_scores = [test_fitness.score(m) for m in test_inputs]
        measured_champion = test_harness.measure(champion, cost=False)
        measured_champion.time_per_1k_tokens, measured_champion.peak_memory_bytes = shared
        test_champion = test_fitness.score(measured_champion)

        input_mean = sum(s.total for s in input_scores) / len(input_scores)
        test_input_mean = sum(s.total for s in test_input_scores) / len(test_input_scores)
        improvement = (state.champion_fitness - input_mean) / abs(input_mean)
        test_improvement = (test_champion.total - test_input_mean) / abs(test_input_mean)
        target = self.recipe.fitness.min_improvement
        checks = {
            "min_improvement_fitness_split": improvement >= target,
            "min_improvement_test_split": test_improvement >= target,
            "beats_each_input_fitness_split": all(
                state.champion_fitness > s.total for s in input_scores
            ),
            "beats_each_input_test_split": all(
                test_champion.total > s.total for s in test_input_scores
            ),
        }
        ancestry = loop.book.ancestry(state.champion_id or "")
        # the champion's merge config: its own if it is a combo, else its nearest combo ancestor's
        combos = [n for n in ancestry if n.kind == "combo"]
        champion_node = combos[-1] if combos else None
        result: dict[str, Any] = {
            "model": str(champion_dir),
            "fitness": state.champion_fitness,
            "improvement": improvement,
            "test_fitness": test_champion.total,
            "test_improvement": test_improvement,
            "min_improvement": target,
            "checks": checks,
            # pass/fail is judged on the held-out split: the fitness split was optimised on
            "passed": checks["min_improvement_test_split"]
            and checks["beats_each_input_test_split"],
            "evolution_log": {
                "generations": state.generation,
                "stopped_early": state.stopped_early,
                "best_fitness_per_gen": state.best_fitness_per_gen,
                "diversity_per_gen": state.diversity_per_gen,
                "reseeded_generations": state.reseeded_generations,
            },
            "merge_combo_usage": {label: state.combo_usage.get(label, 0) for label in COMBO_LABELS},
            "champion_terms": state.champion_terms,
            "inputs": {
                "models": [str(p) for p in self.input_paths],
                "fitness": [s.total for s in input_scores],
                "test_fitness": [s.total for s in test_input_scores],
                "test_terms": [s.terms for s in test_input_scores],
            },
            "champion_test_terms": test_champion.terms,
            "champion_test_raw": test_champion.raw,
            "champion_lineage": [n.to_json() for n in ancestry],
            "champion_merge_config": None
            if champion_node is None
            else champion_node.merge_record.get("config_yaml"),
            "fallbacks": state.fallbacks,
            "shared_cost": self.shared_cost,
            "resident_models": {
                "limit": RESIDENT_LIMIT,
                "peak": pool.peak_live,
                "allocated": pool.allocated,
            },
            "device": _device_report(device),
            "recipe": self.recipe.model_dump(mode="json"),
        }
        atomic_write_bytes(
            self.out / "result.json", json.dumps(result, indent=2, default=str).encode()
        )
        return result
