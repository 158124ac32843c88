"""The champion's model card (``champion/README.md``), written from result.json's figures.

The Hugging Face convention (mergekit writes one for every merge): whoever loads
or uploads the champion finds how it was made beside the weights. Its held-out
table puts the champion next to the two models a user gets without the search
(the uniform average of the inputs and the best generation-0 combo) and the
inputs themselves, so the card never claims more than the run found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evomerge.evolution.checkpoint import atomic_write_bytes
from evomerge.evolution.tracking import HELD_OUT_LABELS

CARD_FILE = "README.md"


def model_card(result: dict[str, Any], model_type: str | None = None) -> str:
    """The card's text: metadata, how to load it (``model_type``: the champion's config's),
    the held-out table, inputs, search, merge config, rebuild."""
    from huggingface_hub import ModelCard, ModelCardData

    recipe = result["recipe"]
    name = recipe.get("name") or "evomerge"
    lineage = result.get("champion_lineage") or [{}]
    champion_id = lineage[-1].get("id", "champion")
    metadata = ModelCardData(library_name="transformers", tags=["merge", "evomerge", "mergekit"])
    sections = [
        f"---\n{metadata.to_yaml()}\n---",
        f"# {name}: evolved merge",
        f"A merge of three models found by evolutionary search with evomerge "
        f"(candidate `{champion_id}`). The run's `result.json`, in this directory's parent, "
        "holds every figure below and the champion's whole lineage; `evomerge lineage "
        "rebuild result.json --out DIR` rebuilds its weights from the inputs (bit for bit on "
        "the device and dtype it was made with).",
        _loading(model_type),
        _held_out(result, champion_id),
        _inputs(result),
        _search(result),
    ]
    config = result.get("champion_merge_config")
    if config:
        sections.append(
            "## Merge configuration\n\nThe champion's generated merge config (mergekit YAML; "
            f"per-layer-group values where the search set them):\n\n```yaml\n{config.rstrip()}\n```"
        )
    return str(ModelCard("\n\n".join(sections) + "\n"))


def write_model_card(champion_dir: Path, result: dict[str, Any]) -> Path:
    """``champion_dir/README.md``, written whole or not at all."""
    import json

    config = json.loads((champion_dir / "config.json").read_text())
    path = champion_dir / CARD_FILE
    atomic_write_bytes(path, model_card(result, config.get("model_type")).encode())
    return path


def _loading(model_type: str | None) -> str:
    """How to load it: transformers alone, or after the plugin that registers its family."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    load = "`AutoModelForCausalLM.from_pretrained(DIR)`"
    if model_type is None or model_type in CONFIG_MAPPING_NAMES:
        return f"Loads with {load}, with the inputs' tokenizer and generation config."
    return (
        f"Loads with {load} once the evomerge plugin that registers the `{model_type}` "
        "architecture is imported (`import evomerge` loads the installed plugins), with the "
        "inputs' tokenizer and generation config."
    )


def _held_out(result: dict[str, Any], champion_id: str) -> str:
    fitness = result["recipe"]["fitness"]
    weights = ", ".join(f"{term} {w:g}" for term, w in fitness["weights"].items())
    total_weight = sum(fitness["weights"].values())
    most = fitness.get("report_max_items")
    items = "every item of each task" if most is None else f"up to {most} items per task"
    rows = [
        ("**this model**", result["test_fitness"], result["test_improvement"]),
        *(
            (HELD_OUT_LABELS.get(key, key), total, result["baselines_test_improvement"][key])
            for key, total in result["baselines_test_fitness"].items()
        ),
    ]
    inputs = result["inputs"]
    scores: list[float] = inputs.get("test_fitness") or []
    mean = sum(scores) / max(len(scores), 1)
    for i, (path, total) in enumerate(zip(inputs.get("models") or [], scores, strict=False)):
        rows.append((f"input {i + 1} (`{Path(path).name}`)", total, (total - mean) / abs(mean)))
    table = "\n".join(f"| {label} | {total:.4f} | {gain:+.1%} |" for label, total, gain in rows)
    target = result.get("min_improvement")
    verdict = "met" if result.get("passed") else "not met"
    return (
        "## Held-out results\n\n"
        f"Composite fitness on the held-out test split (never used for selection; {items}), "
        f"weights {weights}"
        + (
            f", each term divided by the inputs' mean, so the inputs average {total_weight:g}"
            if fitness.get("normalize") == "inputs"
            else f", normalisation `{fitness.get('normalize')}`"
        )
        + ":\n\n"
        "| model | test fitness | vs the inputs' mean |\n|---|---|---|\n"
        f"{table}\n\n"
        f"What the search added over the better baseline: "
        f"{result['loop_gain_test'] * 100:+.1f} percentage points. "
        f"The recipe's target, {target:+.1%} over the inputs' mean and above every input on "
        f"this split: {verdict}." + _raw_terms(result)
    )


def _raw_terms(result: dict[str, Any]) -> str:
    raw = result.get("champion_test_raw") or {}
    if not raw:
        return ""
    shown = ", ".join(f"{term} {value:.4g}" for term, value in raw.items())
    return f" This model's raw held-out measurements: {shown}."


def _inputs(result: dict[str, Any]) -> str:
    inputs = result["inputs"]
    lines = [f"- `{path}`" for path in inputs.get("models") or []]
    base = inputs.get("base_model")
    if base:
        lines.append(f"- their base (task vectors are taken against it): `{base}`")
    return "## Inputs\n\n" + "\n".join(lines)


def _search(result: dict[str, Any]) -> str:
    search = result.get("search") or {}
    log = result.get("evolution_log") or {}
    evolution = result["recipe"]["evolution"]
    facts = [
        f"strategy `{search.get('strategy', evolution.get('strategy'))}`",
        f"{log.get('generations', '?')} generation{'' if log.get('generations') == 1 else 's'}",
        f"seed {evolution.get('seed')}",
    ]
    if "evaluations" in search:
        facts.append(f"{search['evaluations']} candidates scored")
    device = result.get("device") or {}
    if device.get("storage"):
        facts.append(f"models held in {device['storage']}")
    return "## Search\n\n" + ", ".join(facts) + "."
