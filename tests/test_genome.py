"""Genomes: plain JSON data that rebuild their merge bit-exactly, through the engine and mergekit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evomerge.merge import ComboConfig, InputSet, MergeEngine, StageParams
from evomerge.search.genome import (
    Genome,
    GenomeError,
    Mutation,
    genome_config,
    layer_group_filters,
    uniform_genome,
)

DEFAULTS = {
    "stage1.weight.0": 1 / 3,
    "stage1.weight.1": 1 / 3,
    "stage1.weight.2": 1 / 3,
    "stage2.density": 0.2,
    "stage2.lambda": 1.0,
}
GENOME = Genome(
    combo="011",  # linear -> ties -> dfs: no calibration needed
    layer_groups=2,
    genes={
        "stage1.weight.0": (0.6, 0.1),
        "stage1.weight.1": (0.3, 0.2),
        "stage1.weight.2": (0.1, 0.7),
        "stage2.density": (0.5, 0.3),
        "stage2.lambda": (0.8, 1.3),
        "stage2.weight.1": (1.0, 0.4),
        "stage2.weight.0": (0.2, 0.9),
        "stage2.weight.2": (0.5, 0.5),
    },
    mutation=Mutation(seed=11, sigma=0.01),
)


@pytest.fixture(scope="module")
def inputs(tiny_llama_family, tiny_llama_dirs) -> InputSet:  # type: ignore[no-untyped-def]
    return InputSet(
        tiny_llama_family.models,
        base=tiny_llama_family.base,
        names=tiny_llama_dirs["models"],
        base_name=tiny_llama_dirs["base"],
        cache=False,
    )


@pytest.fixture(scope="module")
def filters(inputs: InputSet) -> list[list[str]]:
    return layer_group_filters(inputs.keys, 2, 2)


def _config(genome: Genome, inputs: InputSet, filters: list[list[str]]) -> ComboConfig:
    return genome_config(genome, inputs.names, inputs.base_name, StageParams(), filters, seed=5)


def _run(config: ComboConfig, inputs: InputSet) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    MergeEngine().run_config(config, inputs, out=out)
    return out


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_genome_json_round_trip_is_canonical() -> None:
    text = GENOME.to_json()
    again = Genome.from_json(text)
    assert again == GENOME and again.to_json() == text
    assert list(again.genes) == sorted(GENOME.genes)
    assert Genome.from_json({"combo": "000", "layer_groups": 1, "genes": {"stage2.lambda": [1]}})
    with pytest.raises(ValueError, match="2 values for 3 layer groups"):
        Genome(combo="000", layer_groups=3, genes={"stage2.lambda": (1.0, 2.0)})
    with pytest.raises(ValueError, match="three bits"):
        Genome(combo="0100", layer_groups=1)
    with pytest.raises(ValueError, match="stage<1-3>"):
        Genome(combo="000", layer_groups=1, genes={"stage4.lambda": (1.0,)})
    with pytest.raises(ValueError, match="sigma"):
        Mutation(seed=1, sigma=-0.1)


def test_layer_group_filters() -> None:
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(12)] + ["lm_head.weight"]
    groups = layer_group_filters(names, 3, 12)
    assert groups[0] == ["model.layers.0.", "model.layers.1.", "model.layers.2.", "model.layers.3."]
    assert [len(g) for g in layer_group_filters(names, 5, 12)] == [3, 2, 3, 2, 2]
    assert layer_group_filters(names, 1, 12) == [[f"model.layers.{i}." for i in range(12)]]
    with pytest.raises(GenomeError, match="^layer_groups 13 is larger than the model's 12 layers$"):
        layer_group_filters(names, 13, 12)
    with pytest.raises(GenomeError, match="positive"):
        layer_group_filters(names, 0, 12)
    with pytest.raises(GenomeError, match="not 0..12"):
        layer_group_filters(names, 2, 13)


def test_genome_config_writes_conditionals(inputs: InputSet, filters: list[list[str]]) -> None:
    config = _config(GENOME, inputs, filters)
    stage1, stage2, _ = config.stages
    assert stage1.merge_method == "linear" and stage2.merge_method == "ties"
    assert stage1.models is not None and stage1.models[2].parameters == {
        "weight": [{"filter": "model.layers.1.", "value": 0.7}, {"value": 0.1}]
    }
    assert stage2.parameters["lambda"] == [
        {"filter": "model.layers.1.", "value": 1.3},
        {"value": 0.8},
    ]
    with pytest.raises(GenomeError, match="no stage-2 method takes 'densty'"):
        _config(
            Genome(combo="011", layer_groups=2, genes={"stage2.densty": (1, 1)}), inputs, filters
        )
    with pytest.raises(GenomeError, match="stage 1 has 3 inputs"):
        _config(
            Genome(combo="011", layer_groups=2, genes={"stage1.weight.3": (1, 1)}), inputs, filters
        )
    with pytest.raises(GenomeError, match="parameter 'seed': expected int, got 0.5"):
        _config(
            Genome(combo="001", layer_groups=2, genes={"stage2.seed": (0.5, 1)}), inputs, filters
        )


def test_embedding_group_mixes_the_outside_tensors_on_their_own(inputs: InputSet) -> None:
    """With an embedding group, layer tensors follow their layer group and the rest the last group."""
    filters = layer_group_filters(inputs.keys, 2, 2, embedding_group=True)
    assert filters[-1] == [] and len(filters) == 3 and all(filters[:2])
    # stage 1 picks input 0 in the layers and input 2 everywhere else; stages 2-3 pass through
    genome = Genome(
        combo="000",
        layer_groups=3,
        genes={
            "stage1.weight.0": (1.0, 1.0, 0.0),
            "stage1.weight.1": (0.0, 0.0, 0.0),
            "stage1.weight.2": (0.0, 0.0, 1.0),
            "stage2.lambda": (0.0, 0.0, 0.0),
            "stage3.source": (0.0, 0.0, 0.0),
        },
    )
    config = _config(genome, inputs, filters)
    assert config.stages[0].models is not None
    assert config.stages[0].models[2].parameters == {
        "weight": [
            {"filter": "model.layers.0.", "value": 0.0},
            {"filter": "model.layers.1.", "value": 0.0},
            {"value": 1.0},
        ]
    }
    merged = _run(config, inputs)
    first, last = inputs.models[0], inputs.models[2]
    in_layers = [k for k in merged if ".layers." in k]
    outside = [k for k in merged if ".layers." not in k]
    assert in_layers and outside
    assert all(torch.allclose(merged[k], first[k]) for k in in_layers)
    assert all(torch.allclose(merged[k], last[k]) for k in outside)
    assert not all(torch.allclose(merged[k], first[k]) for k in outside)


def test_genome_yaml_round_trip_rebuilds_bit_identical(
    inputs: InputSet, filters: list[list[str]]
) -> None:
    config = _config(GENOME, inputs, filters)
    direct = _run(config, inputs)
    parsed = ComboConfig.from_yaml(config.to_yaml())
    assert parsed.stages == config.stages
    assert _equal(_run(parsed, inputs), direct)
    assert _equal(
        _run(_config(Genome.from_json(GENOME.to_json()), inputs, filters), inputs), direct
    )
    # per-group genes really act: not the merge of the same genome with group 0 everywhere
    flat = GENOME.model_copy(update={"genes": {k: (v[0], v[0]) for k, v in GENOME.genes.items()}})
    assert not _equal(_run(_config(flat, inputs, filters), inputs), direct)


def test_one_group_and_uniform_groups_equal_todays_combo(
    inputs: InputSet, filters: list[list[str]]
) -> None:
    today: dict[str, torch.Tensor] = {}
    MergeEngine().merge_combo("011", inputs, out=today, seed=5)
    one = _run(_config(uniform_genome("011", 1, DEFAULTS), inputs, filters[:1]), inputs)
    two = _run(_config(uniform_genome("011", 2, DEFAULTS), inputs, filters), inputs)
    assert _equal(one, today) and _equal(two, today)


@pytest.mark.parametrize(
    ("combo", "reference"), [("011", "stage1"), ("001", "ancestor"), ("111", "stage1")]
)
def test_genome_config_runs_in_mergekit(
    combo: str, reference: str, inputs: InputSet, filters: list[list[str]], tmp_path: Path
) -> None:
    """The exported genome YAML (ties / dare / slerp with per-group genes) runs in mergekit itself."""
    from transformers import AutoModelForCausalLM

    from evomerge.merge.mergekit_bridge import run_with_mergekit

    genome = GENOME.model_copy(update={"combo": combo})
    params = StageParams(reference=reference)  # type: ignore[arg-type]
    config = genome_config(genome, inputs.names, inputs.base_name, params, filters, seed=5)
    ours = _run(config, inputs)
    run_with_mergekit(config.to_yaml(), tmp_path / "out", intermediate_dir=tmp_path / "stages")
    theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32)
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours[key], value, atol=1e-5, rtol=0, msg=key)


def test_mutation_gene_is_the_seed_operator_and_lineage_replays_it(
    tiny_llama_family, inputs: InputSet, filters: list[list[str]]
) -> None:  # type: ignore[no-untyped-def]
    """A genome's ``mutation`` is the seed loop's keyed noise on the merge; replaying its lineage
    node (as ``lineage rebuild`` does) re-draws exactly that noise."""
    from evomerge.evolution.lineage import BASE_ID, INPUT_IDS, LineageNode
    from evomerge.evolution.operators import apply_genome_mutation_, mutate_
    from evomerge.evolution.pool import weights
    from evomerge.evolution.rebuild import replay_node

    fam = tiny_llama_family
    run_inputs = InputSet(fam.models, base=fam.base, cache=False)  # the run's own names
    config = genome_config(
        GENOME, run_inputs.names, run_inputs.base_name, StageParams(), filters, seed=5
    )
    merged = _run(config, run_inputs)
    mutated = {k: v.clone() for k, v in merged.items()}
    genome_json = json.loads(GENOME.to_json())
    apply_genome_mutation_(mutated, genome_json)
    expected = {k: v.clone() for k, v in merged.items()}
    mutate_(expected, sigma=0.01, rate=0.01, mode="relative", seed=11)  # the seed's defaults
    assert _equal(mutated, expected) and not _equal(mutated, merged)

    node = LineageNode(
        id="g0001-0",
        generation=1,
        kind="genome",
        parents=[*INPUT_IDS, BASE_ID],
        seed=5,
        combo=GENOME.combo,
        merge_record={"genome": genome_json, "config_yaml": config.to_yaml()},
    )
    parents = [fam.build(m) for m in fam.models] + [fam.build(fam.base)]
    out = replay_node(MergeEngine(), node, parents, parents[:3], fam.build())
    assert _equal({k: v for k, v in weights(out).items() if k in mutated}, mutated)


def test_pass_through_stages_are_dropped_with_the_same_tensors(
    inputs: InputSet, filters: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """cmaes's default genome (stage 2 λ = 0, stage 3 all from stage 2) merges as stage 1
    alone: bit-identical to running the three stages, one YAML document."""
    from evomerge.search import genome as genome_module

    genes = {f"stage1.weight.{i}": (0.7 - 0.2 * i, 0.1 + 0.3 * i) for i in range(3)}
    genes |= {"stage2.lambda": (0.0, 0.0), "stage3.source": (0.0, 0.0)}
    genome = Genome(combo="000", layer_groups=2, genes=genes, anchor="ancestor")
    short = _config(genome, inputs, filters)
    assert len(short.stages) == 1 and short.stages[0].name is None
    with monkeypatch.context() as m:
        m.setattr(genome_module, "_without_pass_through_stages", lambda config, registry: config)
        full = _config(genome, inputs, filters)
    assert len(full.stages) == 3
    assert _equal(_run(short, inputs), _run(full, inputs))
    # λ ≠ 0 in one group, or one group's layers from an input: all three stages stay
    for gene, values in (("stage2.lambda", (0.0, 0.5)), ("stage3.source", (0.0, 2.0))):
        kept = genome.model_copy(update={"genes": {**genes, gene: values}})
        assert len(_config(kept, inputs, filters).stages) == 3
