"""Rebuild a champion from its lineage alone (result.json + the three inputs).

Each combo node replays its recorded merge config — a layer-selecting stage
as the concrete slices it chose, so no calibration is re-scored — and
each mutation node re-draws its keyed noise. On the device that ran the
evolution the result is bit-identical to the saved champion.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import PreTrainedModel

from evomerge.evolution.lineage import BASE_ID, INPUT_IDS, LineageNode
from evomerge.evolution.operators import apply_genome_mutation_, apply_mutation_
from evomerge.evolution.pool import blank_model, copy_weights_, weights
from evomerge.evolution.residency import FileTensors, InputWeights
from evomerge.merge.engine import MergeEngine


def replay_node(
    engine: MergeEngine,
    node: LineageNode,
    parents: Sequence[InputWeights],
    inputs: Sequence[InputWeights],
    out: PreTrainedModel,
) -> PreTrainedModel:
    """Write ``node``'s model into ``out`` (every weight overwritten) from its parents' models.

    A combo replays its recorded, resolved merge config (a layer-selecting
    stage as its concrete slices: nothing is re-scored); a mutation copies its
    parent and re-draws its keyed noise (``inputs``: the run's three inputs,
    which input-direction mutation steps toward).
    """
    from evomerge.merge.config import ComboConfig
    from evomerge.merge.inputs import InputSet

    if node.kind in ("combo", "genome"):
        config = ComboConfig.from_yaml(
            node.merge_record["config_yaml"], source=f"lineage node {node.id}"
        )
        has_base = bool(node.parents) and node.parents[-1] == BASE_ID
        models = parents[:-1] if has_base else parents
        group = InputSet(
            [weights(p) for p in models],
            base=weights(parents[-1]) if has_base else None,
            cache=False,
        )
        engine.run_config(config, group, out=weights(out), scratch_model=out, label=node.combo)
        apply_genome_mutation_(weights(out), node.merge_record.get("genome") or {})
    else:
        assert node.mutation is not None
        copy_weights_(out, parents[0])
        apply_mutation_(
            weights(out), node.mutation, seed=node.seed, inputs=[weights(m) for m in inputs]
        )
    return out


def rebuild_champion(
    result_path: Path, device: str = "cpu", inputs: Literal["disk", "device"] = "disk"
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """The champion rebuilt from ``result.json``; also returns a comparison with the saved one.

    ``inputs``: ``disk`` reads the inputs (and base) from their safetensors files tensor by
    tensor, so only the models being rebuilt are held; ``device`` loads them whole first.
    The weights are the same either way (tests/test_residency.py).
    """
    from transformers import AutoModelForCausalLM

    import evomerge
    from evomerge.architectures import get_architecture

    evomerge.load_plugins()  # the inputs may be a plugin's family

    result, nodes = read_result(Path(result_path))
    dev = torch.device(device)
    # The dtype the run held every model in (runs before device.storage: fp32).
    dtype = getattr(torch, result.get("device", {}).get("storage", "float32"))
    paths = [Path(p) for p in result["inputs"]["models"]]
    model_type = json.loads((paths[0] / "config.json").read_text())["model_type"]
    arch = get_architecture(model_type)
    config = arch.config_class.from_pretrained(paths[0])

    def new_model() -> PreTrainedModel:
        return blank_model(arch.model_class, config, device=dev, dtype=dtype)  # as the run's

    template = new_model() if inputs == "disk" else None  # the layout files are read into

    def held(path: Path) -> InputWeights:
        if template is not None:
            return FileTensors.open(path, model_type, template)
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(dev).eval()  # type: ignore[arg-type]

    loaded = [held(p) for p in paths]
    built: dict[str, InputWeights] = dict(zip(INPUT_IDS, loaded, strict=True))
    base = result["inputs"].get("base_model")
    if any(BASE_ID in n.parents for n in nodes):
        built[BASE_ID] = held(Path(base))
    pending = Counter(p for n in nodes for p in n.parents)  # children still to build, per parent
    engine = MergeEngine()
    for node in nodes:
        out = new_model()
        built[node.id] = replay_node(engine, node, [built[p] for p in node.parents], loaded, out)
        for parent in node.parents:
            pending[parent] -= 1
            if pending[parent] == 0 and parent not in (*INPUT_IDS, BASE_ID):
                del built[parent]  # free intermediates as soon as no child needs them
    champion = built[nodes[-1].id]
    assert isinstance(champion, PreTrainedModel)
    saved = result.get("model")
    return champion, _compare_with_saved(champion, Path(saved) if saved else None, dev, len(nodes))


class LineageError(ValueError):
    """A result.json the champion cannot be rebuilt from; the message names the file and field."""


def read_result(path: Path) -> tuple[dict[str, Any], list[LineageNode]]:
    """``result.json`` and its champion's lineage, checked before any model is loaded.

    The inputs it names are checked as a run checks them (files, configs, tensor headers,
    tokenizers), so a moved or changed input is a one-line error, not a failure mid-replay.
    """
    from evomerge.evolution.validate import InputValidationError, validate_inputs

    if not path.is_file():
        raise LineageError(f"{path}: {'is a directory' if path.is_dir() else 'not found'}")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LineageError(f"{path}: not an evomerge result.json ({exc})") from None
    if not isinstance(result, dict):
        raise LineageError(f"{path}: not an evomerge result.json (expected a JSON object)")
    lineage = result.get("champion_lineage")
    if not isinstance(lineage, list) or not lineage:
        raise LineageError(f"{path}: champion_lineage: must be a non-empty list of lineage nodes")
    nodes = []
    for i, item in enumerate(lineage):
        try:
            nodes.append(LineageNode.from_json(item))
        except TypeError as exc:
            raise LineageError(
                f"{path}: champion_lineage.{i}: not a lineage node ({exc})"
            ) from None
    inputs = result.get("inputs")
    models = inputs.get("models") if isinstance(inputs, dict) else None
    if not isinstance(models, list) or len(models) != 3:
        raise LineageError(f"{path}: inputs.models: expected the run's 3 input model dirs")
    base = inputs.get("base_model") if isinstance(inputs, dict) else None
    known = {*INPUT_IDS, BASE_ID}
    for i, node in enumerate(nodes):
        missing = [p for p in node.parents if p not in known]
        if missing:
            raise LineageError(
                f"{path}: champion_lineage.{i}: parent {missing[0]!r} comes before its node"
            )
        known.add(node.id)
    if any(BASE_ID in n.parents for n in nodes) and not base:
        raise LineageError(f"{path}: inputs.base_model: the champion needs the inputs' base model")
    try:
        validate_inputs(
            [Path(p) for p in models],
            architecture=None,
            expected_params=None,
            base_model=Path(base) if base else None,
            scan=False,
        )
    except InputValidationError as exc:
        raise LineageError(f"{path}: inputs: {exc}") from None
    return result, nodes


def _compare_with_saved(
    champion: PreTrainedModel, saved_dir: Path | None, dev: torch.device, nodes: int
) -> dict[str, Any]:
    """How far the rebuilt champion is from the one the run saved (when it is still there)."""
    from transformers import AutoModelForCausalLM

    comparison: dict[str, Any] = {"nodes": nodes}
    if saved_dir is None or not (saved_dir / "config.json").exists():
        comparison["saved"] = None  # moved or deleted: nothing to compare with
    else:
        saved = AutoModelForCausalLM.from_pretrained(saved_dir, dtype=champion.dtype).to(dev)  # type: ignore[arg-type]
        diffs = [
            float((a.float() - weights(saved)[k].float()).abs().max())
            for k, a in weights(champion).items()
        ]
        comparison.update(
            {
                "saved": str(saved_dir),
                "max_abs_diff": max(diffs),
                "bit_identical": max(diffs) == 0.0,
            }
        )
    return comparison


def save_rebuilt(model: PreTrainedModel, out_dir: Path, tokenizer_dir: Path | None) -> None:
    model.save_pretrained(out_dir)
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out_dir)


__all__ = ["LineageError", "read_result", "rebuild_champion", "replay_node", "save_rebuilt"]
