"""Issue 13 item 2: inputs held off the merge device (`device.inputs: host | disk`).

The inputs' residency changes where their bytes live, never what is merged: every
combo, every genome and the whole run give bit-identical weights from resident,
host-held and file-read inputs, and a run holds fewer models for them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.evolution.pool import weights
from evomerge.evolution.residency import FileTensors, HostTensors, choose_residency, shortfall
from evomerge.merge import COMBO_LABELS, InputSet, MergeEngine, StageParams

GB = 2**30
CUDA, CPU = torch.device("cuda", 0), torch.device("cpu")


@pytest.mark.parametrize(
    ("requested", "device", "free", "host", "expected"),
    [
        ("auto", CPU, None, 100 * GB, "device"),  # host memory is the device's: it fits
        ("auto", CPU, None, 14 * GB, "disk"),  # 12 GB x 1.25 does not: the files, not `host`
        ("auto", CPU, None, None, "device"),
        ("auto", CUDA, 80 * GB, 500 * GB, "device"),  # 4 x 2 GB inputs + 2 candidates fit
        ("auto", CUDA, 11 * GB, 500 * GB, "host"),  # 12 GB x 1.25 does not fit 11 GB
        ("auto", CUDA, 11 * GB, 9 * GB, "disk"),  # nor do the 8 GB of inputs fit the host
        ("auto", CUDA, None, None, "device"),  # unknown free memory: keep today's behaviour
        ("disk", CPU, None, None, "disk"),  # asked for: given
        ("host", CUDA, 80 * GB, 500 * GB, "host"),
    ],
)
def test_auto_keeps_inputs_on_the_device_while_they_fit(
    requested: str, device: torch.device, free: int | None, host: int | None, expected: str
) -> None:
    chosen = choose_residency(
        requested,
        device=device,
        input_bytes=4 * 2 * GB,
        candidate_bytes=2 * 2 * GB,
        device_free=free,
        host_available=host,
    )
    assert chosen == expected


def test_unknown_residency_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown residency 'gpu'"):
        choose_residency(
            "gpu",
            device=CPU,
            input_bytes=1,
            candidate_bytes=1,
            device_free=None,
            host_available=None,
        )


@pytest.mark.parametrize(
    ("residency", "device", "free", "host", "expected"),
    [
        ("disk", CUDA, 80 * GB, 500 * GB, None),  # 2 candidates of 2 GB fit 80 GB
        ("disk", CUDA, 3 * GB, 500 * GB, ("device", 4 * GB, 3 * GB)),  # they do not fit 3 GB
        ("device", CUDA, 11 * GB, 500 * GB, ("device", 12 * GB, 11 * GB)),  # + 8 GB of inputs
        ("host", CUDA, 11 * GB, 9 * GB, None),  # a GPU's `host` inputs are not on it ...
        ("host", CUDA, 11 * GB, 7 * GB, ("host", 8 * GB, 7 * GB)),  # ... but in host memory
        ("host", CPU, None, 11 * GB, ("device", 12 * GB, 11 * GB)),  # a CPU's are on it
        ("disk", CPU, None, 5 * GB, None),
        ("device", CUDA, None, None, None),  # unknown: not refused
    ],
)
def test_a_run_whose_weights_exceed_the_device_is_refused(
    residency: str,
    device: torch.device,
    free: int | None,
    host: int | None,
    expected: tuple[str, int, int] | None,
) -> None:
    got = shortfall(
        residency,  # type: ignore[arg-type]
        device=device,
        input_bytes=4 * 2 * GB,
        candidate_bytes=2 * 2 * GB,
        device_free=free,
        host_available=host,
    )
    assert got == expected


def test_each_process_holds_its_own_inputs_and_candidates() -> None:
    """`accelerate launch`: on the CPU every process's models share one host memory; on GPUs
    each process has its own device, but its `host` inputs are another copy in host memory."""
    sizes = {"input_bytes": 8 * GB, "candidate_bytes": 4 * GB}
    cpu = {"device": CPU, "device_free": None, "host_available": 20 * GB, **sizes}
    assert shortfall("device", **cpu) is None  # type: ignore[arg-type]
    assert shortfall("device", **cpu, processes=2) == ("device", 24 * GB, 20 * GB)  # type: ignore[arg-type]
    assert choose_residency("auto", **cpu) == "device"  # 12 GB x 1.25 fits 20 GB
    assert choose_residency("auto", **cpu, processes=2) == "disk"  # 24 GB x 1.25 does not
    gpu = {"device": CUDA, "device_free": 5 * GB, "host_available": 12 * GB, **sizes}
    assert shortfall("host", **gpu) is None  # type: ignore[arg-type]
    assert shortfall("host", **gpu, processes=2) == ("host", 16 * GB, 12 * GB)  # type: ignore[arg-type]
    assert choose_residency("auto", **gpu) == "host"
    assert choose_residency("auto", **gpu, processes=2) == "disk"


def test_recipe_run_refuses_a_seed_loop_that_cannot_fit(
    real_family, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Before anything is written, naming the field and what would make the run fit."""
    from test_real_families import _recipe_file

    import evomerge.run.prepare as prepare

    monkeypatch.setattr(prepare, "free_memory", lambda device: (None, 2**20))  # a 1 MiB host
    path = _recipe_file(real_family("qwen2"), tmp_path, None)
    result = CliRunner().invoke(app, ["recipe", "run", str(path), "--quiet"])
    assert result.exit_code == 2, result.output
    message = result.output.strip().splitlines()[-1]
    assert "evolution.strategy: the run holds 9 candidates of" in message
    assert "but 1.0 MB is available" in message
    assert "a genome strategy (evolution.strategy: cmaes) holds 2" in message
    assert "device.storage: bf16" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_file_tensors_read_what_from_pretrained_loads(real_family, dtype: torch.dtype) -> None:  # type: ignore[no-untyped-def]
    """Tied qwen2: save_pretrained wrote the shared embedding once; every untied name of the
    model reads, in the storage dtype, exactly the tensor from_pretrained(dtype=...) holds."""
    family = real_family("qwen2")
    path = Path(family.models[1])
    loaded = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    template = AutoModelForCausalLM.from_config(family.config, dtype=dtype)
    stored = FileTensors.open(path, "qwen2", template)
    want = weights(loaded)
    assert list(stored) == list(want) and len(stored) == len(want)
    for key, value in want.items():
        assert stored.spec(key) == (value.shape, value.dtype)
        got = stored[key]
        assert got.dtype == dtype and torch.equal(got, value), key
    stored.release()


def test_file_tensors_read_a_sharded_model(tiny_llama_family, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A model saved in several shards (model.safetensors.index.json) reads each tensor from
    the shard that holds it."""
    family = tiny_llama_family
    model = family.build(family.models[0])
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 2
    stored = FileTensors.open(tmp_path / "sharded", "llama", family.build())
    assert all(torch.equal(stored[k], v) for k, v in weights(model).items())
    stored.release()


def _fetched(kind: str, states: list[dict[str, torch.Tensor]], dirs: list[str], family: Any):  # type: ignore[no-untyped-def]
    if kind == "host":
        return [HostTensors(s, torch.device("cpu")) for s in states]
    template = family.build()
    return [FileTensors.open(Path(d), "llama", template) for d in dirs]


@pytest.mark.parametrize("kind", ["host", "disk"])
def test_every_combo_merges_the_same_from_fetched_inputs(
    tiny_llama_family, tiny_llama_dirs, kind: str
) -> None:  # type: ignore[no-untyped-def]
    """All eight combos (frankenmerge's calibration forwards included) and the task-arithmetic
    reference to the ancestor: bit-identical outputs from resident and fetched inputs."""
    family = tiny_llama_family
    engine = MergeEngine(StageParams(reference="ancestor"), calibration=family.calibration())
    states = [weights(family.build(s)) for s in family.models]
    base_state = weights(family.build(family.base))
    fetched = _fetched(
        kind, [*states, base_state], [*tiny_llama_dirs["models"], tiny_llama_dirs["base"]], family
    )
    resident = InputSet(states, base=base_state, cache=False)
    held = InputSet(fetched[:3], base=fetched[3], cache=False)
    for label in COMBO_LABELS:
        want_model, got_model = family.build(), family.build()
        engine.merge_combo(
            label, resident, out=weights(want_model), seed=7, scratch_model=want_model
        )
        engine.merge_combo(label, held, out=weights(got_model), seed=7, scratch_model=got_model)
        want, got = weights(want_model), weights(got_model)
        assert all(torch.equal(got[k], want[k]) for k in want), label
        assert all(f._last is None for f in fetched)  # nothing kept once a merge is done


# ------------------------------------------------------------------ recipe run
def _run(family: Any, tmp: Path, inputs: str, strategy: str) -> dict[str, Any]:
    """The smallest real run of test_real_families, its inputs held as ``inputs`` says."""
    from test_real_families import _recipe_file

    where = tmp / inputs
    where.mkdir()
    path = _recipe_file(family, where, None)
    data = yaml.safe_load(path.read_text())
    if strategy == "cmaes":
        data["evolution"].update(
            strategy="cmaes",
            layer_groups=2,
            embedding_group=True,
            strategy_options={"popsize": 4},
            selection={"validation_items": 4, "top_k": 2},
        )
    data["device"]["inputs"] = inputs
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["recipe", "run", str(path), "--quiet"])
    assert result.exit_code in (0, 1), result.output
    return json.loads((where / "out" / "result.json").read_text())


def _champion(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "champion" / "model.safetensors")


@pytest.mark.slow  # three recipe runs per strategy (gen 0 + 1 generation, 4 items per task)
@pytest.mark.parametrize("strategy", ["cmaes", "seed"])
def test_recipe_run_gives_the_same_champion_wherever_the_inputs_live(
    real_family, data_cache_dir: Path, tmp_path: Path, strategy: str
) -> None:  # type: ignore[no-untyped-def]
    """Tied qwen2 fine-tunes with their base: the same champion, scores and weights with the
    inputs resident, in host memory and in their files, and the off-device runs build four
    fewer models (the three inputs and the base are not pool slots)."""
    import os

    os.environ["EVOMERGE_CACHE"] = str(data_cache_dir)
    family = real_family("qwen2")
    reports = {kind: _run(family, tmp_path, kind, strategy) for kind in ("device", "host", "disk")}
    champions = {kind: _champion(tmp_path / kind / "out") for kind in reports}
    want = reports["device"]
    assert want["device"]["inputs"] == "device"
    for kind in ("host", "disk"):
        got = reports[kind]
        assert got["device"]["inputs"] == kind
        assert got["champion_lineage"][-1]["id"] == want["champion_lineage"][-1]["id"]
        for field in ("fitness", "test_fitness", "loop_gain_test", "baselines_test_fitness"):
            assert got[field] == want[field], (kind, field)
        assert got["inputs"] == want["inputs"]
        assert champions[kind].keys() == champions["device"].keys()
        assert all(torch.equal(champions[kind][k], v) for k, v in champions["device"].items())
        resident = got["resident_models"]["allocated"]
        base = 1 if strategy == "cmaes" else 0  # the seed loop merges the inputs alone
        assert resident == want["resident_models"]["allocated"] - 3 - base, kind
