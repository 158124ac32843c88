"""The generation loop (docs/design.md "Evolution"), independent of how merging and scoring are done.

The loop sees two callables: ``merge(label, parents, out, seed)`` writes a combo
of three parent models into ``out`` and returns a JSON-able record of what it
did; ``score(model)`` returns a ``Score``. That keeps this module testable and
lets the same loop run with any engine or harness.

Resident models: 3 inputs + 8 population slots + 1 merge workspace = 12, from
a ``ModelPool`` that raises on a 13th; the champion is kept in the checkpoint.
Reproduction order frees slots before it needs them: the first loser group
merges into the workspace, the second into a freed loser slot, then the elite
children are copies (and finally an in-place mutation) of their parent.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel

from evomerge.evolution.checkpoint import Checkpoint
from evomerge.evolution.lineage import INPUT_IDS, LineageBook, LineageNode
from evomerge.evolution.operators import (
    apply_mutation_,
    derive_seed,
    diversity,
    mean_pairwise_distance,
)
from evomerge.evolution.pool import ModelPool, copy_weights_, load_weights_, weights
from evomerge.evolution.residency import InputWeights
from evomerge.merge.combos import COMBO_LABELS


class Score(Protocol):
    total: float
    terms: Mapping[str, float]


MergeFn = Callable[[str, Sequence[InputWeights], PreTrainedModel, int], dict[str, Any]]
ScoreFn = Callable[[PreTrainedModel], Score]


@dataclass(frozen=True)
class LoopSettings:
    generations: int
    sigma: float
    sigma_mode: str
    rate: float
    min_diversity: float
    early_stop_min_improvement: float | None
    early_stop_patience: int
    seed: int
    operator: str = "gaussian"


@dataclass
class Candidate:
    model: PreTrainedModel
    node: LineageNode
    score: Score | None = None

    @property
    def fitness(self) -> float:
        if self.score is None:
            raise RuntimeError(f"candidate {self.node.id} was not evaluated")
        return float(self.score.total)


@dataclass
class LoopState:
    """Everything that survives a generation boundary (and a checkpoint)."""

    generation: int = -1
    champion_id: str | None = None
    champion_fitness: float = float("-inf")
    champion_terms: dict[str, float] = field(default_factory=dict)
    champion_file: str | None = None
    best_fitness_per_gen: list[float] = field(default_factory=list)
    diversity_per_gen: list[float] = field(default_factory=list)
    reseeded_generations: list[int] = field(default_factory=list)
    combo_usage: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COMBO_LABELS, 0))
    fallbacks: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    #: the best generation-0 combo's lineage node (with its fitness): the report rebuilds it
    #: from this as a baseline, since the book prunes it once nothing descends from it
    best_gen0: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LoopState:
        """The state saved in a checkpoint; keys of fields since removed are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _state(model: InputWeights) -> Mapping[str, torch.Tensor]:
    return weights(model)


class EvolutionLoop:
    """Runs generation 0 and the loop; checkpoints after every evaluated generation."""

    def __init__(
        self,
        *,
        inputs: Sequence[InputWeights],
        pool: ModelPool,
        merge: MergeFn,
        score: ScoreFn,
        settings: LoopSettings,
        checkpoint: Checkpoint,
        recipe_hash: str,
        recipe_identity: dict[str, Any] | None = None,
        on_generation: Callable[[dict[str, Any]], None] | None = None,
        on_progress: Callable[[str], None] | None = None,
        score_many: Callable[[list[PreTrainedModel]], list[Score]] | None = None,
        is_main_process: bool = True,
    ) -> None:
        if len(inputs) != 3:
            raise ValueError("the loop needs exactly 3 input models")
        self.inputs = list(inputs)
        self.pool = pool
        self.merge = merge
        self.score = score
        self.settings = settings
        self.checkpoint = checkpoint
        self.recipe_hash = recipe_hash
        #: What was hashed, saved beside it: a refused --resume names what changed.
        self.recipe_identity = recipe_identity
        self.on_generation = on_generation or (lambda record: None)
        self.on_progress = on_progress or (lambda msg: None)
        # several processes (accelerate launch) each score a share and gather; see run.py
        self.score_many = score_many or (lambda models: [score(m) for m in models])
        self.is_main_process = is_main_process
        self.book = LineageBook()
        self.state = LoopState()
        self.population: list[Candidate] = []
        self.input_distance = mean_pairwise_distance([_state(m) for m in self.inputs])
        self._merge_seconds = 0.0  # this generation's merges and mutations so far

    # ------------------------------------------------------------------ ops
    def _combo_into(
        self,
        out: PreTrainedModel,
        label: str,
        parents: Sequence[Candidate] | None,
        node_id: str,
        generation: int,
    ) -> Candidate:
        seed = derive_seed(self.settings.seed, "combo", node_id)
        parent_models = self.inputs if parents is None else [p.model for p in parents]
        merge_started = time.perf_counter()
        record = self.merge(label, parent_models, out, seed)
        self._merge_seconds += time.perf_counter() - merge_started
        self.state.combo_usage[label] += 1
        for stage in record.get("fallbacks", []):
            self.state.fallbacks.append({"node": node_id, **stage})
        node = LineageNode(
            id=node_id,
            generation=generation,
            kind="combo",
            parents=list(INPUT_IDS) if parents is None else [p.node.id for p in parents],
            seed=seed,
            combo=label,
            merge_record=record,
        )
        return Candidate(out, self.book.add(node))

    def _mutant_into(
        self, out: PreTrainedModel, parent: Candidate, node_id: str, generation: int
    ) -> Candidate:
        seed = derive_seed(self.settings.seed, "mutation", node_id)
        merge_started = time.perf_counter()
        if out is not parent.model:
            copy_weights_(out, parent.model)
        mutation: dict[str, Any] = {
            "operator": self.settings.operator,
            "sigma": self.settings.sigma,
            "rate": self.settings.rate,
            "mode": self.settings.sigma_mode,
        }
        drawn = apply_mutation_(
            _state(out), mutation, seed=seed, inputs=[_state(m) for m in self.inputs]
        )
        self._merge_seconds += time.perf_counter() - merge_started
        node = LineageNode(
            id=node_id,
            generation=generation,
            kind="mutation",
            parents=[parent.node.id],
            seed=seed,
            mutation={**mutation, **drawn},
        )
        return Candidate(out, self.book.add(node))

    def _random_label(self, *key: object) -> str:
        return random.Random(derive_seed(self.settings.seed, "label", *key)).choice(COMBO_LABELS)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Generation 0: the eight combos of the inputs."""
        started = time.perf_counter()
        self.on_progress("generation 0: 8 combos")
        self.population = [
            self._combo_into(self.pool.acquire(), label, None, f"g0000-{i}", 0)
            for i, label in enumerate(COMBO_LABELS)
        ]
        self._evaluate_and_record(0, reseeded=False, started=started)

    def resume(self) -> None:
        """Rebuild the population and state from the checkpoint (weights, not re-merging)."""
        saved = self.checkpoint.load_state(self.recipe_hash, self.recipe_identity)
        self.book = LineageBook.from_json(saved["lineage"])
        self.state = LoopState.from_json(saved["loop"])
        weights = self.checkpoint.load_population(saved)
        self.population = []
        for entry, sd in zip(saved["population"], weights, strict=True):
            model = self.pool.acquire()
            load_weights_(model, sd)
            score = _StoredScore(entry["fitness"], entry["terms"])
            self.population.append(Candidate(model, self.book.nodes[entry["id"]], score))

    def run(self) -> LoopState:
        """Generations 1..G after start() or resume(); returns the final state."""
        while self.state.generation < self.settings.generations and not self.state.stopped_early:
            self.step()
        return self.state

    def step(self) -> None:
        started = time.perf_counter()
        gen = self.state.generation + 1
        ranked = sorted(self.population, key=lambda c: (-c.fitness, c.node.id))
        elites, losers = ranked[:2], ranked[2:]
        reseed = self.state.diversity_per_gen[-1] < self.settings.min_diversity
        new: list[Candidate] = []
        # loser merging (or re-seeding from the inputs when diversity collapsed)
        workspace = self.pool.acquire()
        for group_index, group in enumerate((losers[:3], losers[3:])):
            out = workspace if group_index == 0 else self.pool.acquire()
            label = self._random_label(gen, group_index)
            node_id = f"g{gen:04d}-{6 + group_index}"
            new.append(self._combo_into(out, label, None if reseed else group, node_id, gen))
            for member in group:
                self.pool.release(member.model)
        # elite mutation: two copies, then the parent itself mutated in place
        for e_index, elite in enumerate(elites):
            for k in range(3):
                out = self.pool.acquire() if k < 2 else elite.model
                new.append(self._mutant_into(out, elite, f"g{gen:04d}-{3 * e_index + k}", gen))
        # the one free slot left is the next generation's workspace
        self.population = sorted(new, key=lambda c: c.node.id)
        self._evaluate_and_record(gen, reseeded=reseed, started=started)

    # --------------------------------------------------------- evaluation
    def _evaluate_and_record(self, gen: int, *, reseeded: bool, started: float) -> None:
        """``started``: when the generation's merges began (its seconds include them)."""
        scoring_started = time.perf_counter()
        scores = self.score_many([c.model for c in self.population])
        scoring_seconds = time.perf_counter() - scoring_started
        merge_seconds, self._merge_seconds = self._merge_seconds, 0.0
        for cand, cand_score in zip(self.population, scores, strict=True):
            cand.score = cand_score
            cand.node.fitness = cand.fitness
        best = max(self.population, key=lambda c: (c.fitness, c.node.id))
        new_champion = best.fitness > self.state.champion_fitness
        if new_champion:
            self.state.champion_id = best.node.id
            self.state.champion_fitness = best.fitness
            self.state.champion_terms = {k: float(v) for k, v in best.score.terms.items()}  # type: ignore[union-attr]
        div = diversity([_state(c.model) for c in self.population], self.input_distance)
        ranked = sorted(self.population, key=lambda c: (-c.fitness, c.node.id))
        self.state.generation = gen
        self.state.best_fitness_per_gen.append(self.state.champion_fitness)
        self.state.diversity_per_gen.append(div)
        if reseeded:
            self.state.reseeded_generations.append(gen)
        if gen == 0:
            self.state.best_gen0 = best.node.to_json()
        self._check_early_stop()
        self.book.prune([c.node.id for c in self.population] + [self.state.champion_id or ""])
        if new_champion:
            self.state.champion_file = f"champion-g{gen:04d}.safetensors"
        if self.is_main_process:  # other processes hold identical state; one writer
            self._save(champion=best if new_champion else None)
        self.on_generation(
            {
                "generation": gen,
                "best_fitness": self.state.champion_fitness,
                "generation_best": ranked[0].fitness,
                "diversity": div,
                "elite1_fitness": ranked[0].fitness,
                "elite2_fitness": ranked[1].fitness,
                "terms": {k: float(v) for k, v in ranked[0].score.terms.items()},  # type: ignore[union-attr]
                "combo_usage": dict(self.state.combo_usage),
                "reseeded": reseeded,
                "resident_models": self.pool.live,
                "seconds": time.perf_counter() - started,
                "merge_seconds": merge_seconds,
                "scoring_seconds": scoring_seconds,
            }
        )

    def _check_early_stop(self) -> None:
        s = self.settings
        hist = self.state.best_fitness_per_gen
        if s.early_stop_min_improvement is None or len(hist) <= s.early_stop_patience:
            return
        old, now = hist[-1 - s.early_stop_patience], hist[-1]
        if (now - old) / max(abs(old), 1e-12) < s.early_stop_min_improvement:
            self.state.stopped_early = True

    def _save(self, champion: Candidate | None) -> None:
        state: dict[str, Any] = {
            "generation": self.state.generation,
            "recipe_hash": self.recipe_hash,
            "recipe": self.recipe_identity,
            "loop": dict(self.state.__dict__),
            "lineage": self.book.to_json(),
            "population": [
                {
                    "id": c.node.id,
                    "fitness": c.fitness,
                    "terms": {k: float(v) for k, v in c.score.terms.items()},  # type: ignore[union-attr]
                }
                for c in self.population
            ],
            "champion_file": self.state.champion_file,
        }
        champion_weights = None if champion is None else _state(champion.model)
        self.checkpoint.save(state, [_state(c.model) for c in self.population], champion_weights)

    def finish(self) -> dict[str, torch.Tensor]:
        """End the run: release the population's slots to the pool; the champion's weights.

        The report then has the pool's population slots for the champion and
        the baselines it scores, within the same resident-model bound.
        """
        for cand in self.population:
            self.pool.release(cand.model)
        self.population = []
        return self.champion_weights()

    def champion_weights(self) -> dict[str, torch.Tensor]:
        """The champion's weights from the checkpoint (it is not kept resident)."""
        from safetensors.torch import load_file

        if self.state.champion_file is None:
            raise RuntimeError("no champion yet")
        return load_file(str(self.checkpoint.dir / self.state.champion_file))


@dataclass
class _StoredScore:
    total: float
    terms: Mapping[str, float]
