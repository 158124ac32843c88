"""Stage 3 for genome strategies (``evolution.strategy: cmaes``, or a plugin's): the genome loop.

Generation 0 is the eight fixed combos, merged exactly as the seed loop merges
them and scored on the run's fitness sample. From then on the strategy
proposes genomes; each is rebuilt through the merge engine from the inputs
(and their ancestor), scored on the generation's *selection* minibatch and
told back. At the end the top ``selection.top_k`` genomes, the strategy's own
final candidates (CMA-ES: its mean) and the best generation-0 combo are
re-scored on a *validation* sample of the fitness split that no candidate was
selected on, and the best there is crowned (docs/search.md "Honest
selection"). The test split is never touched here.

Only the candidates being scored are resident (``IN_FLIGHT`` per process,
beside the inputs and their ancestor), and the checkpoint is JSON: the
strategy's state, the scored genomes and the run state, a few KB per
generation; resume re-merges what it needs.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from evomerge.evolution.checkpoint import Checkpoint
from evomerge.evolution.lineage import BASE_ID, INPUT_IDS, LineageBook, LineageNode
from evomerge.evolution.loop import LoopState
from evomerge.evolution.operators import apply_genome_mutation_, derive_seed
from evomerge.evolution.pool import weights
from evomerge.merge.combos import COMBO_LABELS
from evomerge.run.context import IN_FLIGHT, RunContext, recipe_hash, recipe_identity
from evomerge.run.prepare import PreparedInputs
from evomerge.run.reference import Reference, fitness_config, fitness_suite
from evomerge.search.genome import Genome, decoder_layers, genome_config, layer_group_filters
from evomerge.search.strategy import SearchContext, SearchState, build_strategy

STATE_FORMAT = "evomerge.run.search/1"


@dataclass
class Scored:
    """One evaluated genome: where it came from and its selection score."""

    id: str
    generation: int
    genome: Genome
    fitness: float
    terms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "generation": self.generation,
            "genome": json.loads(self.genome.to_json()),
            "fitness": self.fitness,
            "terms": self.terms,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scored:
        return cls(
            data["id"],
            data["generation"],
            Genome.from_json(data["genome"]),
            data["fitness"],
            data.get("terms", {}),
        )


class DocSamples:
    """The fitness split cut into a validation sample and a selection pool, per task, by seed."""

    def __init__(
        self,
        doc_counts: dict[str, int],
        own: dict[str, list[int]] | None,
        first: int,
        validation: int,
        seed: int,
    ):
        self.validation: dict[str, list[int]] = {}
        self.pool: dict[str, list[int]] = {}
        for name, n in doc_counts.items():
            # validation documents are outside the run's own sample, which generation 0
            # is selected on: ``own`` (fitness.sample: random), else the first ``first``
            taken = set(own[name]) if own is not None else set(range(min(first, n)))
            later = [i for i in range(n) if i not in taken]
            if not later:
                raise ValueError(
                    f"task {name!r} has {n} fitness documents: none left for the validation "
                    f"sample after the run's own {len(taken)} (lower fitness.max_items)"
                )
            rng = random.Random(derive_seed(seed, "validation", name))
            picked = sorted(rng.sample(later, min(validation, len(later))))
            self.validation[name] = picked
            chosen = set(picked)
            self.pool[name] = [i for i in range(n) if i not in chosen]

    def minibatch(self, size: int, seed: int, generation: int) -> dict[str, list[int]]:
        """A fresh selection sample of ``size`` documents per task for ``generation``."""
        out = {}
        for name, pool in self.pool.items():
            rng = random.Random(derive_seed(seed, "minibatch", name, generation))
            out[name] = sorted(rng.sample(pool, min(size, len(pool))))
        return out


class GenomeLoop:
    """Generation 0, the strategy's generations and the crowning; state like ``EvolutionLoop``'s."""

    def __init__(
        self,
        ctx: RunContext,
        prep: PreparedInputs,
        ref: Reference,
        engine: Any,
        on_generation: Callable[[dict[str, Any]], None],
        score_many: Callable[[list[PreTrainedModel], Any], list[Any]],
    ) -> None:
        evo = ctx.recipe.evolution
        self.ctx, self.prep, self.ref, self.engine = ctx, prep, ref, engine
        self.on_generation, self.score_many = on_generation, score_many
        self.settings = evo
        self.checkpoint = Checkpoint(ctx.out)
        self.recipe_hash = recipe_hash(ctx.recipe)
        self.recipe_identity = recipe_identity(ctx.recipe)
        self.state = LoopState()
        self.book = LineageBook()
        self.history: list[Scored] = []
        self.crowning: list[dict[str, Any]] = []
        self._seconds = {"merge": 0.0, "scoring": 0.0}  # this generation's, so far
        self.base = prep.load_base()
        self.input_set = self._input_set()
        keys = self.input_set.keys
        try:
            self.filters = layer_group_filters(
                keys, evo.layer_groups, decoder_layers(keys), embedding_group=evo.embedding_group
            )
        except ValueError as exc:
            raise ValueError(f"{ctx.recipe.where(('evolution', 'layer_groups'))}: {exc}") from None
        self.context = SearchContext(
            num_inputs=len(prep.inputs),
            layer_groups=evo.gene_groups,
            seed=evo.seed,
            has_base=self.base is not None,
        )
        self.strategy = build_strategy(evo.strategy, evo.strategy_options, self.context)
        self._suite = fitness_suite(ctx.recipe, ref.task_dir)
        counts = ref.doc_counts  # the reference already loaded the tasks
        self.first = ctx.recipe.fitness.max_items or max(counts.values())
        self.samples = DocSamples(
            counts, ref.sample, self.first, evo.selection.validation_items, evo.seed
        )

    # ------------------------------------------------------------------ merging
    def _input_set(self) -> Any:
        from evomerge.merge.inputs import InputSet

        return InputSet(
            [weights(m) for m in self.prep.inputs],
            base=weights(self.base) if self.base is not None else None,
            cache=False,
        )

    def _genome_into(
        self, genome: Genome, node_id: str, generation: int, out: PreTrainedModel
    ) -> LineageNode:
        """Rebuild ``genome`` into ``out``; its lineage node (resolved config, seed)."""
        if not genome.genes and genome.anchor == "inputs":  # a plain combo: the seed loop's merge
            seed = derive_seed(self.settings.seed, "combo", node_id)
            result = self.engine.merge_combo(
                genome.combo,
                [weights(m) for m in self.prep.inputs],
                out=weights(out),
                seed=seed,
                scratch_model=out,
            )
            parents, kind = list(INPUT_IDS), "combo"
        else:
            seed = derive_seed(self.settings.seed, "genome", node_id)
            names, base_name = self.input_set.names, self.input_set.base_name
            config = genome_config(
                genome,
                names,
                base_name if self.base is not None else None,
                self.engine.params,
                self.filters,
                seed=seed,
            )
            result = self.engine.run_config(
                config, self.input_set, out=weights(out), scratch_model=out, label=genome.combo
            )
            parents = [*INPUT_IDS, *([BASE_ID] if genome.anchor == "ancestor" else [])]
            kind = "genome"
        genome_json = json.loads(genome.to_json())
        apply_genome_mutation_(weights(out), genome_json)
        fallbacks = [
            {"stage": s.stage, "method": s.method, "reason": s.fallback}
            for s in result.stage_logs
            if s.fallback
        ]
        if all(f["node"] != node_id for f in self.state.fallbacks):  # crowning re-merges some
            self.state.fallbacks.extend({"node": node_id, **f} for f in fallbacks)
        return LineageNode(
            id=node_id,
            generation=generation,
            kind=kind,  # type: ignore[arg-type]
            parents=parents,
            seed=seed,
            combo=genome.combo,
            merge_record={
                "label": genome.combo,
                "genome": genome_json,
                "config_yaml": result.config_yaml,
                "resolved_slices": result.resolved_slices,
                "fallbacks": fallbacks,
            },
        )

    def _evaluate(
        self, genomes: Sequence[Genome], ids: Sequence[str], generation: int, harness: Any
    ) -> list[tuple[LineageNode, Any]]:
        """Merge and score ``genomes`` on ``harness``, a few at a time.

        Candidates are scored one after another anyway, so only as many are
        materialised at once as the processes score in parallel (at least 2):
        resident memory is the inputs plus that many models, whatever the
        population size (docs/search.md "Checkpoints and resume").
        """
        pool = self.prep.pool
        done: list[tuple[LineageNode, Any]] = []
        in_flight = max(IN_FLIGHT, int(self.ctx.dist.num_processes))
        chunk = max(1, min(in_flight, pool.capacity - pool.live))
        for start in range(0, len(genomes), chunk):
            part = list(
                zip(genomes[start : start + chunk], ids[start : start + chunk], strict=True)
            )
            slots = [pool.acquire() for _ in part]
            try:
                merge_started = time.perf_counter()
                nodes = [
                    self._genome_into(g, i, generation, s)
                    for (g, i), s in zip(part, slots, strict=True)
                ]
                scoring_started = time.perf_counter()
                scores = self.score_many(slots, harness)
                self._seconds["merge"] += scoring_started - merge_started
                self._seconds["scoring"] += time.perf_counter() - scoring_started
            finally:
                for slot in slots:
                    pool.release(slot)
            done.extend(zip(nodes, scores, strict=True))
        return done

    def _harness(self, samples: dict[str, list[int]] | None) -> Any:
        """A fitness-split harness over chosen documents (None: the run's own fitness sample)."""
        if samples is None:
            return self.ref.harness
        from evomerge.fitness import FitnessHarness

        return FitnessHarness.build(
            self._suite,
            self.prep.tokenizer,
            self.prep.device,
            config=fitness_config(self.ctx.recipe),
            model_config=self.prep.model_config,
            samples=samples,
        )

    def _selection_harness(self, generation: int) -> Any:
        if self.settings.selection.minibatch == "fixed":
            return self.ref.harness
        return self._harness(self.samples.minibatch(self.first, self.settings.seed, generation))

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Generation 0: the eight combos of the inputs, on the run's fitness sample."""
        started = time.perf_counter()
        self.ctx.log("generation 0: 8 combos")
        genomes = [
            Genome(combo=label, layer_groups=self.settings.gene_groups) for label in COMBO_LABELS
        ]
        ids = [f"g0000-{i}" for i in range(len(genomes))]
        results = self._evaluate(genomes, ids, 0, self.ref.harness)
        self._record(0, genomes, results, started, observe=False)

    def resume(self) -> None:
        from evomerge.search.strategy import find_strategy

        saved = self.checkpoint.load_state(self.recipe_hash, self.recipe_identity)
        if saved.get("search", {}).get("format") != STATE_FORMAT:
            raise ValueError(f"{self.checkpoint.dir}: not a genome-strategy checkpoint")
        search = saved["search"]
        self.state = LoopState.from_json(saved["loop"])
        self.book = LineageBook.from_json(saved["lineage"])
        self.history = [Scored.from_json(h) for h in search["history"]]
        cls = find_strategy(self.settings.strategy)
        self.strategy = cls.from_state_dict(search["strategy"], self.context)

    def run(self) -> LoopState:
        while self.state.generation < self.settings.generations:
            gen = self.state.generation + 1
            started = time.perf_counter()
            genomes = self.strategy.propose(SearchState(gen, len(self.history)))
            ids = [f"g{gen:04d}-{i}" for i in range(len(genomes))]
            results = self._evaluate(genomes, ids, gen, self._selection_harness(gen))
            self._record(gen, genomes, results, started, observe=True)
        self._crown()
        return self.state

    # --------------------------------------------------------------- bookkeeping
    def _record(
        self,
        gen: int,
        genomes: Sequence[Genome],
        results: Sequence[tuple[LineageNode, Any]],
        started: float,
        *,
        observe: bool,
    ) -> None:
        scored = []
        for genome, (node, score) in zip(genomes, results, strict=True):
            node.fitness = float(score.total)
            # a generation's candidates, not every merge: crowning and the report re-merge some
            self.state.combo_usage[genome.combo] += 1
            scored.append(
                Scored(
                    node.id,
                    gen,
                    genome,
                    float(score.total),
                    {k: float(v) for k, v in score.terms.items()},
                )
            )
        if observe:
            self.strategy.observe(list(genomes), [s.fitness for s in scored])
        self.history.extend(scored)
        ranked = sorted(zip(scored, results, strict=True), key=lambda t: (-t[0].fitness, t[0].id))
        best, (best_node, best_score) = ranked[0][0], ranked[0][1]
        if gen == 0:
            self.state.best_gen0 = best_node.to_json()
            self.book.add(best_node)
            self._set_champion(best_node, best_score)
        self.state.generation = gen
        self.state.best_fitness_per_gen.append(best.fitness)
        self.state.diversity_per_gen.append(_gene_spread(genomes))
        if self.ctx.is_main:
            self._save()
        self.on_generation(
            {
                "generation": gen,
                "best_fitness": best.fitness,
                "generation_best": best.fitness,
                "diversity": self.state.diversity_per_gen[-1],
                "elite1_fitness": ranked[0][0].fitness,
                "elite2_fitness": ranked[1][0].fitness if len(ranked) > 1 else ranked[0][0].fitness,
                "terms": best.terms,
                "combo_usage": dict(self.state.combo_usage),
                "reseeded": False,
                "resident_models": self.prep.pool.live,
                "seconds": time.perf_counter() - started,
                "merge_seconds": self._seconds["merge"],
                "scoring_seconds": self._seconds["scoring"],
            }
        )
        self._seconds = {"merge": 0.0, "scoring": 0.0}

    def _set_champion(self, node: LineageNode, score: Any) -> None:
        self.state.champion_id = node.id
        self.state.champion_fitness = float(score.total)
        self.state.champion_terms = {k: float(v) for k, v in score.terms.items()}

    def _save(self) -> None:
        state = {
            "generation": self.state.generation,
            "recipe_hash": self.recipe_hash,
            "recipe": self.recipe_identity,
            "loop": dict(self.state.__dict__),
            "lineage": self.book.to_json(),
            "search": {
                "format": STATE_FORMAT,
                "strategy": self.strategy.state_dict(),
                "history": [h.to_json() for h in self.history],
            },
        }
        self.checkpoint.save_state(state)

    def _crown(self) -> None:
        """Re-score the top genomes, the strategy's final candidates and the best gen-0 combo
        on the validation sample; the best there is the champion (scored on the fitness sample)."""
        k = self.settings.selection.top_k
        # selection scores of different generations come from different minibatches, so they
        # are compared within a generation only: each generation's best, the latest k of them
        winners: dict[int, Scored] = {}
        for h in self.history:
            if h.generation > 0:
                held = winners.get(h.generation)
                if held is None or (h.fitness, held.id) > (held.fitness, h.id):
                    winners[h.generation] = h
        searched = [winners[g] for g in sorted(winners, reverse=True)]
        gen0 = max((h for h in self.history if h.generation == 0), key=lambda h: (h.fitness, h.id))
        final = self.state.generation
        extra = [
            Scored(f"g{final:04d}-final{i}", final, g, math.nan)
            for i, g in enumerate(self.strategy.final_candidates() if searched else [])
        ]
        pool: list[Scored] = []
        seen: set[str] = set()
        for cand in [*searched[:k], *extra, gen0]:
            text = cand.genome.to_json()
            if text not in seen:
                seen.add(text)
                pool.append(cand)
        validation = self._harness(self.samples.validation)
        self.ctx.log(f"crowning: {len(pool)} candidates re-scored on the validation sample")
        results = self._evaluate([c.genome for c in pool], [c.id for c in pool], final, validation)
        self.crowning = [
            {
                "id": c.id,
                "selection_fitness": None if math.isnan(c.fitness) else c.fitness,
                "validation_fitness": float(s.total),
            }
            for c, (_, s) in zip(pool, results, strict=True)
        ]
        best = max(range(len(pool)), key=lambda i: (results[i][1].total, -i))
        winner = pool[best]
        ((node, score),) = self._evaluate(
            [winner.genome], [winner.id], winner.generation, self.ref.harness
        )
        if winner.generation == 0:
            node = LineageNode.from_json(self.state.best_gen0 or node.to_json())
        node.fitness = float(score.total)
        if node.id not in self.book.nodes:
            self.book.add(node)
        self._set_champion(node, score)
        self.champion_genome = winner.genome

    def finish(self) -> dict[str, torch.Tensor]:
        """The champion's weights, rebuilt from its genome (nothing else is resident)."""
        slot = self.prep.pool.acquire()
        try:
            node_id = self.state.champion_id or "champion"
            self._genome_into(self.champion_genome, node_id, self.state.generation, slot)
            return {k: v.detach().clone() for k, v in weights(slot).items()}
        finally:
            self.prep.pool.release(slot)


def _gene_spread(genomes: Sequence[Genome]) -> float:
    """Diversity of a generation: mean pairwise distance of the gene vectors (0 for combos)."""
    vectors = [[v for name in sorted(g.genes) for v in g.genes[name]] for g in genomes]
    if not vectors or not vectors[0]:
        return float(len({g.combo for g in genomes})) / len(COMBO_LABELS)
    total, pairs = 0.0, 0
    for i in range(len(vectors)):
        for j in range(i + 1, len(vectors)):
            total += math.dist(vectors[i], vectors[j])
            pairs += 1
    return total / max(1, pairs)
