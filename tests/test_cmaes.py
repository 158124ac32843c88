"""CMA-ES (pycma) over genomes: bounds, seeds, bit-exact resume, the strategy interface, a real search."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from evomerge.merge import ComboConfig, InputSet, MergeEngine, StageParams
from evomerge.search.cmaes import CmaesSearch, GeneSpace, GeneSpec
from evomerge.search.genome import Genome, genome_config, layer_group_filters
from evomerge.search.strategy import (
    CmaesStrategy,
    SearchContext,
    Strategy,
    StrategyError,
    build_strategy,
    run_search,
)

SPACE = GeneSpace(
    genes=(
        GeneSpec(name="stage2.lambda", lower=0.0, upper=2.0, initial=1.0),
        GeneSpec(name="stage2.density", lower=0.05, upper=1.0, initial=0.2),
    ),
    layer_groups=3,
    combo="010",
)


def _sphere(genome: Genome) -> float:
    """Maximum at lambda = 1.5, density = 0.6 in every group."""
    lam, dens = genome.genes["stage2.lambda"], genome.genes["stage2.density"]
    return -sum((x - 1.5) ** 2 for x in lam) - sum((x - 0.6) ** 2 for x in dens)


def _step(search: CmaesSearch) -> list[Genome]:
    genomes = search.ask()
    np.random.seed(12345)  # other code using numpy's global RNG must not shift the search
    search.tell(list(reversed(genomes)), [_sphere(g) for g in reversed(genomes)])
    return genomes


def test_asks_are_feasible_seeded_and_improve() -> None:
    search = CmaesSearch(SPACE, sigma0=0.3, popsize=6, seed=0)
    first = search.ask()
    assert len(first) == 6 and search.ask() == first  # asking again before tell: same population
    for genome in first:
        assert genome.combo == "010" and genome.layer_groups == 3
        assert all(0.0 <= x <= 2.0 for x in genome.genes["stage2.lambda"])
        assert all(0.05 <= x <= 1.0 for x in genome.genes["stage2.density"])
    assert CmaesSearch(SPACE, 0.3, 6, seed=0).ask() == first
    assert CmaesSearch(SPACE, 0.3, 6, seed=1).ask() != first
    start = _sphere(SPACE.to_genome(SPACE.initial_vector()))
    for _ in range(15):
        _step(search)
    assert search.champion is not None and search.champion_fitness is not None
    assert search.champion_fitness > start / 5 and search.evaluations == 6 * 15
    with pytest.raises(ValueError, match="exactly the genomes"):
        search.tell(search.ask()[:1] + search.ask()[:1], [0.0, 0.0])


def test_resume_from_json_state_gives_identical_asks_and_champion() -> None:
    straight = CmaesSearch(SPACE, sigma0=0.3, popsize=5, seed=4)
    for _ in range(3):
        _step(straight)
    saved = json.dumps(straight.state_dict())
    later = [_step(straight) for _ in range(4)]
    resumed = CmaesSearch.from_state_dict(json.loads(saved))
    assert [_step(resumed) for _ in range(4)] == later
    assert resumed.champion == straight.champion
    assert resumed.champion_fitness == straight.champion_fitness
    # killed between ask and tell: the checkpoint holds the pending population
    pending = straight.ask()
    mid = CmaesSearch.from_state_dict(json.loads(json.dumps(straight.state_dict())))
    assert mid.ask() == pending
    _step(straight), _step(mid)
    assert straight.ask() == mid.ask()


_CHILD = """
import json, sys
import numpy as np
from evomerge.search.cmaes import CmaesSearch

def sphere(g):
    return -sum((x - 1.5) ** 2 for x in g.genes["stage2.lambda"]) - sum(
        (x - 0.6) ** 2 for x in g.genes["stage2.density"])

search = CmaesSearch.from_state_dict(json.loads(open(sys.argv[1]).read()))
out = []
for _ in range(3):
    genomes = search.ask()
    np.random.seed(12345)
    search.tell(list(reversed(genomes)), [sphere(g) for g in reversed(genomes)])
    out.append([g.to_json() for g in genomes])
print(json.dumps({"asks": out, "champion": search.champion.to_json()}))
"""


def test_resume_after_kill_in_a_fresh_process(tmp_path: Path) -> None:
    """A checkpoint written with an ask pending resumes in another process (other hash salt)."""
    search = CmaesSearch(SPACE, sigma0=0.3, popsize=5, seed=2)
    for _ in range(2):
        _step(search)
    search.ask()
    state = tmp_path / "state.json"
    state.write_text(json.dumps(search.state_dict()))
    expected = [[g.to_json() for g in _step(search)] for _ in range(3)]
    assert search.champion is not None
    env = {**os.environ, "PYTHONHASHSEED": "4242"}
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(state)], capture_output=True, text=True, env=env
    )
    assert child.returncode == 0, child.stderr
    got = json.loads(child.stdout.strip().splitlines()[-1])
    assert got == {"asks": expected, "champion": search.champion.to_json()}


def test_combo_bits_fixed_or_searched() -> None:
    searched = SPACE.model_copy(update={"search_combo": True})
    assert searched.dim == SPACE.dim + 3
    assert searched.to_genome(searched.initial_vector()).combo == "010"
    search = CmaesSearch(searched, sigma0=0.5, popsize=12, seed=0)
    combos = {g.combo for g in search.ask()}
    assert len(combos) > 1 and all(len(c) == 3 and set(c) <= {"0", "1"} for c in combos)
    assert {g.combo for g in CmaesSearch(SPACE, 0.5, 12, seed=0).ask()} == {"010"}


def test_bad_input_is_one_line() -> None:
    with pytest.raises(ValueError, match="sigma0 must be a positive number, got -0.1"):
        CmaesSearch(SPACE, sigma0=-0.1, popsize=4, seed=0)
    context = SearchContext(num_inputs=3, layer_groups=2)
    for options, message in [
        ({"sigma0": -1}, r"^cmaes option sigma0: Input should be greater than 0$"),
        ({"popsize": 4, "sigmaa": 1}, r"^cmaes option sigmaa: Extra inputs are not permitted$"),
        ({"combo": "2"}, r"^cmaes option combo: .*three bits"),
        ({"genes": ["stage9.x"]}, r"^genes: unknown gene 'stage9.x'"),
    ]:
        with pytest.raises(StrategyError, match=message):
            build_strategy("cmaes", options, context)
    with pytest.raises(
        StrategyError, match="^strategy: unknown strategy 'cmaess'; known: cmaes, seed$"
    ):
        build_strategy("cmaess", {}, context)


# -------------------------------------------------------------------- end to end, tiny Llama
@pytest.fixture(scope="module")
def inputs(tiny_llama_family, tiny_llama_dirs) -> InputSet:  # type: ignore[no-untyped-def]
    return InputSet(
        tiny_llama_family.models,
        base=tiny_llama_family.base,
        names=tiny_llama_dirs["models"],
        base_name=tiny_llama_dirs["base"],
        cache=False,
    )


def _search(inputs: InputSet, seed: int) -> tuple[CmaesStrategy, float]:
    """CMA-ES over stage-1 linear weights in 2 layer groups toward model_2; the uniform score too."""
    target = inputs.models[1]
    filters = layer_group_filters(inputs.keys, 2, 2)
    engine = MergeEngine()

    def evaluate(genome: Genome) -> float:
        config = genome_config(genome, inputs.names, inputs.base_name, StageParams(), filters)
        stage1 = config.stages[0].model_copy(update={"name": None})
        out: dict[str, torch.Tensor] = {}
        engine.run_config(ComboConfig(stages=[stage1]), inputs, out=out)
        return -sum(float((out[k] - target[k]).pow(2).sum()) for k in target)

    strategy = build_strategy(
        "cmaes",
        {"popsize": 6, "sigma0": 0.25, "genes": [f"stage1.weight.{i}" for i in range(3)]},
        SearchContext(num_inputs=3, layer_groups=2, seed=seed),
    )
    assert isinstance(strategy, Strategy)
    uniform = evaluate(strategy.search.space.to_genome(strategy.search.space.initial_vector()))
    run_search(strategy, evaluate, generations=8)
    return strategy, uniform


def test_cmaes_over_layer_group_weights_moves_toward_target(inputs: InputSet) -> None:
    strategy, uniform = _search(inputs, seed=0)
    assert strategy.champion is not None
    genome, score = strategy.champion
    assert score > 0.5 * uniform  # scores are negative squared distances: at least halved
    for group in range(2):
        w = [genome.genes[f"stage1.weight.{i}"][group] for i in range(3)]
        assert w[1] / sum(w) > 0.5 and w[1] == max(w), w  # model_2 dominates every group
    again, _ = _search(inputs, seed=0)
    assert again.champion is not None and again.champion[0].to_json() == genome.to_json()
    assert again.champion[1] == score
    resumed = CmaesStrategy.from_state_dict(
        json.loads(json.dumps(strategy.state_dict())), strategy.context
    )
    assert resumed.champion == strategy.champion
