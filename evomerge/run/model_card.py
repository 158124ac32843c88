"""Model cards (``README.md``) for what evomerge saves: the champion, from result.json's
figures, and a single merge (`combos export|run`), from its config.

The Hugging Face convention (mergekit writes one for every merge): whoever loads
or uploads the model finds how it was made beside the weights. Its held-out
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


#: Where the run's result.json is, as the champion's own card says it.
BESIDE = "The run's `result.json`, in this directory's parent,"


def model_card(
    result: dict[str, Any], model_type: str | None = None, result_ref: str = BESIDE
) -> str:
    """The champion card's text: metadata, how to load it (``model_type``: the champion's config's),
    the held-out table, inputs, search, merge config, rebuild. ``result_ref`` names the
    result.json (a rebuilt champion's card points at the file it was rebuilt from)."""
    from huggingface_hub import ModelCard

    recipe = result["recipe"]
    name = recipe.get("name") or "evomerge"
    lineage = result.get("champion_lineage") or [{}]
    champion_id = lineage[-1].get("id", "champion")
    sections = [
        _metadata(),
        f"# {name}: evolved merge",
        f"A merge of three models found by evolutionary search with evomerge "
        f"(candidate `{champion_id}`). {result_ref} "
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


def write_model_card(champion_dir: Path, result: dict[str, Any], result_ref: str = BESIDE) -> Path:
    """``champion_dir/README.md``, written whole or not at all."""
    path = champion_dir / CARD_FILE
    text = model_card(result, _model_type(champion_dir), result_ref)
    atomic_write_bytes(path, text.encode())
    return path


def merge_card(
    model_dir: Path,
    name: str,
    given: list[str],
    located: list[str],
    config_yaml: str,
    label: str | None,
    engine: str = "evomerge",
) -> str:
    """The card of one merge (`combos export|run`) saved in ``model_dir``, as mergekit writes
    one for each of its merges: what went in (``given``: as the user named the models;
    ``located``: the dirs read, a repo id's cached snapshot), the config, how to load it."""
    from huggingface_hub import ModelCard

    from evomerge.hub_cache import looks_like_repo_id, split_revision

    how = f"combo `{label}`" if label else "a merge config"
    lines, repo_ids = [], []
    for shown, where in zip(given, located, strict=True):
        if shown != where and looks_like_repo_id(shown):  # a snapshot dir: name its revision
            repo_ids.append(split_revision(shown)[0])
            lines.append(f"- `{shown}` (revision {Path(where).name[:12]})")
        else:
            lines.append(f"- `{shown}`")
    ran = (
        "run in memory. `evomerge combos run merge_config.yaml --out DIR --engine mergekit` "
        "runs the same config through mergekit itself."
        if engine == "evomerge"
        else "run by mergekit (`evomerge combos run --engine mergekit`)."
    )
    sections = [
        _metadata(repo_ids),
        f"# {name}",
        f"A merge made with evomerge from {how}: the mergekit YAML below, {ran}",
        _loading(_model_type(model_dir)),
        "## Models merged\n\n" + "\n".join(lines),
        f"## Merge configuration\n\n```yaml\n{config_yaml.rstrip()}\n```",
    ]
    return str(ModelCard("\n\n".join(sections) + "\n"))


def _metadata(base_models: list[str] | None = None) -> str:
    """The card's YAML front matter, written by huggingface_hub as the Hub reads it;
    ``base_models``: the Hub repos merged (as mergekit's cards list them)."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        library_name="transformers",
        tags=["merge", "evomerge", "mergekit"],
        base_model=base_models or None,
    )
    return f"---\n{data.to_yaml()}\n---"


def _model_type(model_dir: Path) -> str | None:
    import json

    return json.loads((model_dir / "config.json").read_text()).get("model_type")


def _loading(model_type: str | None) -> str:
    """How to load it: transformers alone, or after the plugin that registers its family."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    load = "`AutoModelForCausalLM.from_pretrained(DIR)`"
    if model_type is None or model_type in CONFIG_MAPPING_NAMES:
        return f"Loads with {load}, with the inputs' tokenizer and generation config."
    return (
        f"Loads with {load} once the evomerge plugin that registers the `{model_type}` "
        "architecture is loaded (`import evomerge; evomerge.load_plugins()`), with the "
        "inputs' tokenizer and generation config."
    )


def _documents(most: int | None, counts: dict[str, Any] | None) -> str:
    """How many test documents the table stands on (result.json ``held_out_documents``;
    older results have only the recipe's count, of which they scored the first)."""
    if not counts:
        return "every document of each task" if most is None else f"the first {most} per task"
    scored = sum(c["scored"] for c in counts.values())
    if all(c["scored"] == c["of"] for c in counts.values()):
        return f"all {scored:,} test documents of its {len(counts)} tasks"
    cut = [c for c in counts.values() if c["scored"] < c["of"]]
    rest = "; all of any task with fewer" if len(cut) < len(counts) else ""
    return (
        f"{scored:,} of {sum(c['of'] for c in counts.values()):,} test documents of "
        f"{len(counts)} tasks: {max(c['scored'] for c in cut)} per task drawn at random with a "
        f"fixed seed, the same for every run{rest}"
    )


def _held_out(result: dict[str, Any], champion_id: str) -> str:
    fitness = result["recipe"]["fitness"]
    weights = ", ".join(f"{term} {w:g}" for term, w in fitness["weights"].items())
    total_weight = sum(fitness["weights"].values())
    most = fitness.get("report_max_items") or fitness.get("max_items")  # null: the search's
    items = _documents(most, result.get("held_out_documents"))
    rows = [
        ("**this model**", result["test_fitness"], result["test_improvement"], "champion"),
        *(
            (HELD_OUT_LABELS.get(key, key), total, result["baselines_test_improvement"][key], key)
            for key, total in result["baselines_test_fitness"].items()
        ),
    ]
    inputs = result["inputs"]
    scores: list[float] = inputs.get("test_fitness") or []
    mean = sum(scores) / max(len(scores), 1)
    for i, (path, total) in enumerate(zip(inputs.get("models") or [], scores, strict=False)):
        gain = (total - mean) / abs(mean)
        rows.append((f"input {i + 1} (`{Path(path).name}`)", total, gain, f"input_{i + 1}"))
    ranges = (result.get("held_out_intervals") or {}).get("test_improvement") or {}
    span = " 95 % interval |" if ranges else ""
    table = "\n".join(
        f"| {label} | {total:.4f} | {gain:+.1%} |"
        + (f" {_range(ranges.get(key))} |" if ranges else "")
        for label, total, gain, key in rows
    )
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
        f"| model | test fitness | vs the inputs' mean |{span}\n|---|---|---|{'---|' if ranges else ''}\n"
        f"{table}\n\n"
        f"What the search added over the better baseline: "
        f"{result['loop_gain_test'] * 100:+.1f} percentage points"
        f"{_uncertainty(result)}. "
        f"The recipe's target, {target:+.1%} over the inputs' mean and above every input on "
        f"this split: {verdict}." + _raw_terms(result)
    )


def _range(bounds: list[float] | None) -> str:
    return f"{bounds[0]:+.1%} to {bounds[1]:+.1%}" if bounds else ""


def _uncertainty(result: dict[str, Any]) -> str:
    """How far the test documents' sample could move the figures (result.json
    ``held_out_intervals``: a paired bootstrap, evomerge/fitness/bootstrap.py)."""
    intervals = result.get("held_out_intervals")
    if not intervals:
        return ""
    lo, hi = intervals["loop_gain_test"]
    leads = ", ".join(
        f"the {HELD_OUT_LABELS.get(name, name)} in {lead['share_ahead']:.0%}"
        + (f" (level in {lead['share_tied']:.0%})" if lead.get("share_tied") else "")
        for name, lead in intervals["champion_lead"].items()
    )
    skipped = intervals.get("skipped", 0)
    dropped = (
        f"; {skipped:,} more drew documents every input scored 0 on and were skipped"
        if skipped
        else ""
    )
    return (
        f" ({intervals['level']:.0%} interval {lo * 100:+.1f} to {hi * 100:+.1f} over "
        f"{intervals['resamples']:,} paired bootstrap resamples of the test documents{dropped}; "
        f"this model scores above {leads} of them)"
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
        # only a genome anchored at the ancestor merges it (stage 1 names it `base_model`)
        used = "model: base_model" in (result.get("champion_merge_config") or "")
        role = (
            "the champion's stage-1 weights are task vectors against it"
            if used
            else "the champion's merge does not use it"
        )
        lines.append(f"- their common base ({role}): `{base}`")
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
