"""The generation loop on real tiny TRM models: bound, champion, lineage, resume."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from evomerge.architectures import get_architecture
from evomerge.evolution.checkpoint import Checkpoint, CheckpointError
from evomerge.evolution.loop import EvolutionLoop, LoopSettings
from evomerge.evolution.operators import mutate_
from evomerge.evolution.pool import (
    ModelPool,
    PoolExhaustedError,
    copy_weights_,
    load_weights_,
    weights,
)
from evomerge.merge.combos import COMBO_LABELS as COMBOS


@dataclass
class LossScore:
    total: float
    terms: dict[str, float]


def _factory() -> PreTrainedModel:
    arch = get_architecture("trm_titans_mag")
    return arch.model_class(arch.config("tiny", vocab_size=256)).eval()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))


def _weighted_merge(
    label: str, parents: Sequence[PreTrainedModel], out: PreTrainedModel, seed: int
) -> dict:
    """A real (if simple) combo stand-in: label-dependent weighted mean of the three parents."""
    mix = torch.tensor([1.0 + int(b) for b in label])
    mix = mix / mix.sum()
    with torch.no_grad():
        states = [weights(p) for p in parents]
        for name, tensor in weights(out).items():
            tensor.copy_(sum(w * s[name] for w, s in zip(mix, states, strict=True)))
    return {"label": label, "fallbacks": []}


def _make_loop(
    tmp: Path, batch: torch.Tensor, generations: int = 3, operator: str = "gaussian"
) -> tuple[EvolutionLoop, ModelPool]:
    pool = ModelPool(_factory, capacity=12)
    torch.manual_seed(0)
    base = pool.acquire()
    inputs = [base]
    for k in range(2):  # two "specialists" of the same ancestor
        m = pool.acquire()
        copy_weights_(m, base)
        mutate_(weights(m), sigma=0.5, rate=0.5, mode="relative", seed=k)
        inputs.append(m)

    @torch.inference_mode()
    def score(model: PreTrainedModel) -> LossScore:
        loss = float(model(input_ids=batch, labels=batch).loss)
        return LossScore(total=-loss, terms={"neg_loss": -loss})

    settings = LoopSettings(
        generations=generations,
        sigma=0.05,
        sigma_mode="relative",
        rate=0.2,
        min_diversity=0.3,
        early_stop_min_improvement=None,
        early_stop_patience=5,
        seed=7,
        operator=operator,
    )
    loop = EvolutionLoop(
        inputs=inputs,
        pool=pool,
        merge=_weighted_merge,
        score=score,
        settings=settings,
        checkpoint=Checkpoint(tmp),
        recipe_hash="test",
    )
    return loop, pool


def test_loop_keeps_bound_best_ever_champion_and_all_combos(
    tmp_path: Path, batch: torch.Tensor
) -> None:
    loop, pool = _make_loop(tmp_path, batch)
    seen: list[float] = []
    loop.on_generation = lambda rec: seen.append(rec["generation_best"])
    loop.start()
    state = loop.run()
    assert state.generation == 3
    assert pool.peak_live <= 12 and pool.allocated <= 12  # measured by the pool, inputs included
    assert pool.live == 11  # 3 inputs + 8 population between generations
    assert set(state.combo_usage) == set(COMBOS) and all(state.combo_usage[c] >= 1 for c in COMBOS)
    assert state.champion_fitness == pytest.approx(max(seen))
    assert state.best_fitness_per_gen == sorted(
        state.best_fitness_per_gen
    )  # best-ever never regresses
    assert len(state.diversity_per_gen) == 4
    # the best generation-0 combo is remembered (the report rebuilds it as a baseline)
    assert state.best_gen0 is not None and state.best_gen0["id"].startswith("g0000-")
    assert state.best_gen0["fitness"] == state.best_fitness_per_gen[0]
    assert state.best_gen0["merge_record"]["label"] == state.best_gen0["combo"]
    # finish(): the population's slots go back to the pool; the champion comes from disk
    champion = loop.finish()
    assert pool.live == 3 and loop.population == []
    # the champion on disk really is the model that scored champion_fitness
    model = pool.acquire()
    load_weights_(model, champion)
    with torch.inference_mode():
        assert -float(model(input_ids=batch, labels=batch).loss) == pytest.approx(
            state.champion_fitness, abs=1e-6
        )


def test_resume_after_kill_gives_same_champion(tmp_path: Path, batch: torch.Tensor) -> None:
    full, _ = _make_loop(tmp_path / "full", batch)
    full.start()
    expected = full.run()

    killed, _ = _make_loop(tmp_path / "killed", batch)
    killed.start()
    killed.step()  # generation 1 done and checkpointed; the process "dies" here
    resumed, _ = _make_loop(tmp_path / "killed", batch)
    resumed.resume()
    assert resumed.state.generation == 1
    got = resumed.run()
    assert got.champion_id == expected.champion_id
    assert got.champion_fitness == expected.champion_fitness
    assert got.best_gen0 == expected.best_gen0
    a, b = full.champion_weights(), resumed.champion_weights()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_from_other_recipe_is_a_clear_error(tmp_path: Path, batch: torch.Tensor) -> None:
    loop, _ = _make_loop(tmp_path, batch, generations=0)
    loop.start()
    with pytest.raises(CheckpointError, match="different recipe"):
        Checkpoint(tmp_path).load_state("another-hash")
    (tmp_path / ".checkpoint" / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        Checkpoint(tmp_path).load_state("test")


def test_a_refused_resume_names_what_changed() -> None:
    """Each changed field once, at the deepest level both recipes share: a list that grew is
    one change (not "None" entries), a dropped field is "absent", 1 vs 1.0 (a new hash) is
    named; moved repo pins come first, all of them, then up to SHOWN_CHANGES others."""
    from evomerge.evolution.checkpoint import recipe_changes

    old = {"fitness": {"task_dirs": [], "max_items": 8, "x": 1}, "evolution": {"sigma0": 1}}
    new = {"fitness": {"task_dirs": ["/r/tasks"], "max_items": 8}, "evolution": {"sigma0": 1.0}}
    assert recipe_changes(old, new) == [
        "evolution.sigma0: 1 in the checkpoint, 1.0 now",
        'fitness.task_dirs: [] in the checkpoint, ["/r/tasks"] now',
        "fitness.x: 1 in the checkpoint, absent now",
    ]
    a, b = "a" * 40, "b" * 40
    old = {"m": [f"o/m{i}@{a}" for i in range(4)], "o": {str(i): i for i in range(4)}}
    new = {"m": [f"o/m{i}@{b}" for i in range(4)], "o": {str(i): i + 10 for i in range(4)}}
    changes = recipe_changes(old, new)
    assert [c.split(":")[0] for c in changes] == [
        "m[0]", "m[1]", "m[2]", "m[3]", "o.0", "o.1", "o.2", "and 1 more"
    ]  # fmt: skip
    assert changes[0] == (
        f"m[0]: o/m0 now resolves to cached revision {b[:12]}, the checkpoint's was "
        f"{a[:12]} (write o/m0@{a} to resume it)"
    )
    assert recipe_changes(None, new) == [] and recipe_changes(old, None) == []


def test_pool_refuses_a_thirteenth_model() -> None:
    pool = ModelPool(_factory, capacity=2)
    pool.acquire()
    pool.acquire()
    with pytest.raises(PoolExhaustedError):
        pool.acquire()


def test_input_direction_step_moves_along_one_input_and_replays_from_its_seed() -> None:
    from evomerge.evolution.operators import apply_mutation_, step_toward_input_

    torch.manual_seed(0)
    inputs = [{"w": torch.randn(6, 5), "b": torch.randn(5)} for _ in range(3)]
    parent = {"w": torch.randn(6, 5), "b": torch.randn(5)}
    child = {k: v.clone() for k, v in parent.items()}
    drawn = step_toward_input_(child, inputs, sigma=0.3, rate=1.0, seed=11)
    k, eps = int(drawn["input"]), float(drawn["eps"])
    assert eps != 0.0
    for name in parent:  # exactly eps of the way from the parent toward input k
        expected = parent[name] + eps * (inputs[k][name] - parent[name])
        torch.testing.assert_close(child[name], expected)
    replay = {n: v.clone() for n, v in parent.items()}
    record = {"operator": "input_direction", "sigma": 0.3, "rate": 1.0, "mode": "relative"}
    assert apply_mutation_(replay, record, seed=11, inputs=inputs) == drawn
    assert all(torch.equal(replay[n], child[n]) for n in parent)
    partial = {n: v.clone() for n, v in parent.items()}
    step_toward_input_(partial, inputs, sigma=0.3, rate=0.5, seed=11)
    moved = (partial["w"] != parent["w"]).float().mean()
    assert 0.2 < float(moved) < 0.8  # about half the elements moved
    with pytest.raises(ValueError, match="operator"):
        apply_mutation_(replay, {**record, "operator": "nope"}, seed=1, inputs=inputs)


def test_loop_records_input_direction_steps_that_replay_exactly(
    tmp_path: Path, batch: torch.Tensor
) -> None:
    from evomerge.evolution.operators import apply_mutation_

    loop, pool = _make_loop(tmp_path, batch, generations=1, operator="input_direction")
    loop.start()
    loop.step()
    mutants = [c for c in loop.population if c.node.kind == "mutation"]
    assert len(mutants) == 6
    inputs = [weights(m) for m in loop.inputs]
    for cand in mutants:
        record = cand.node.mutation
        assert record is not None and record["operator"] == "input_direction"
        assert record["input"] in (0, 1, 2) and record["eps"] != 0.0
        parent = loop.book.nodes[cand.node.parents[0]]  # a generation-0 combo of the inputs
        assert parent.kind == "combo" and parent.combo is not None
        replay = pool.acquire()
        _weighted_merge(parent.combo, loop.inputs, replay, 0)
        apply_mutation_(weights(replay), record, seed=cand.node.seed, inputs=inputs)
        assert all(torch.equal(weights(replay)[k], v) for k, v in weights(cand.model).items())
        pool.release(replay)
