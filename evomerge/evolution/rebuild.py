"""Rebuild a champion from its lineage alone (result.json + the three inputs).

Each combo node replays its recorded merge config — frankenmerge as the
concrete passthrough slices it chose, so no calibration is re-scored — and
each mutation node re-draws its keyed noise. On the device that ran the
evolution the result is bit-identical to the saved champion.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from evomerge.evolution.lineage import INPUT_IDS, LineageNode
from evomerge.evolution.operators import apply_mutation_
from evomerge.evolution.pool import copy_weights_, weights


def rebuild_champion(
    result_path: Path, device: str = "cpu"
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """The champion rebuilt from ``result.json``; also returns a comparison with the saved one."""
    from transformers import AutoModelForCausalLM

    import evomerge

    evomerge.load_plugins()  # the inputs may be a plugin's family

    from evomerge.merge.config import ComboConfig
    from evomerge.merge.engine import InputSet, MergeEngine

    result = json.loads(Path(result_path).read_text())
    nodes = [LineageNode.from_json(n) for n in result["champion_lineage"]]
    if not nodes:
        raise ValueError(f"{result_path}: champion_lineage is empty")
    dev = torch.device(device)
    inputs = [
        AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).to(dev).eval()  # type: ignore[arg-type]
        for p in result["inputs"]["models"]
    ]
    built: dict[str, PreTrainedModel] = dict(zip(INPUT_IDS, inputs, strict=True))
    pending = Counter(p for n in nodes for p in n.parents)  # children still to build, per parent
    engine = MergeEngine()
    template = inputs[0]
    for node in nodes:
        out = type(template)(template.config).to(dev).eval()
        if node.kind == "combo":
            config = ComboConfig.from_yaml(
                node.merge_record["config_yaml"], source=f"lineage node {node.id}"
            )
            parents = InputSet([weights(built[p]) for p in node.parents], cache=False)
            engine.run_config(
                config, parents, out=weights(out), scratch_model=out, label=node.combo
            )
        else:
            assert node.mutation is not None
            copy_weights_(out, built[node.parents[0]])
            apply_mutation_(
                weights(out),
                node.mutation,
                seed=node.seed,
                inputs=[weights(m) for m in inputs],
            )
        built[node.id] = out
        for parent in node.parents:
            pending[parent] -= 1
            if pending[parent] == 0 and parent not in INPUT_IDS:
                del built[parent]  # free intermediates as soon as no child needs them
    champion = built[nodes[-1].id]
    comparison: dict[str, Any] = {"nodes": len(nodes)}
    saved_dir = Path(result["model"])
    if (saved_dir / "config.json").exists():
        saved = AutoModelForCausalLM.from_pretrained(saved_dir, dtype=torch.float32).to(dev)  # type: ignore[arg-type]
        diffs = [float((a - weights(saved)[k]).abs().max()) for k, a in weights(champion).items()]
        comparison.update(
            {
                "saved": str(saved_dir),
                "max_abs_diff": max(diffs),
                "bit_identical": max(diffs) == 0.0,
            }
        )
    return champion, comparison


def save_rebuilt(model: PreTrainedModel, out_dir: Path, tokenizer_dir: Path | None) -> None:
    model.save_pretrained(out_dir)
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out_dir)


__all__ = ["rebuild_champion", "save_rebuilt"]
