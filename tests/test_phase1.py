"""The demo Phase-1 family: real training on real text, checked for what merging needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.architectures import get_architecture
from evomerge.data import DOMAINS
from evomerge.phase1 import FamilySpec, make_family
from evomerge.phase1.make import _save_atomic, family_scorer


def _mean_matrix_cosine(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Mean cosine similarity of matching weight matrices (norm vectors excluded: they start at 1)."""
    sims = [
        float(F.cosine_similarity(p.detach().flatten(), q.detach().flatten(), dim=0))
        for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True)
        if p.ndim >= 2
    ]
    return sum(sims) / len(sims)


def test_specialists_win_their_domain_and_beat_an_untrained_model(
    phase1_tiny: dict,
    data_layout,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:  # type: ignore[no-untyped-def]
    metrics = phase1_tiny["metrics"]
    for index, domain in enumerate(DOMAINS, start=1):
        own = metrics[f"model{index}"]["per_domain"][domain]["perplexity"]
        others = [
            metrics[f"model{j}"]["per_domain"][domain]["perplexity"]
            for j in (1, 2, 3)
            if j != index
        ]
        assert own < min(others), f"model{index} is not the best on {domain}: {own} vs {others}"
    tokenizer = AutoTokenizer.from_pretrained(phase1_tiny["models"][0])
    arch = get_architecture("trm_titans_mag")
    torch.manual_seed(123)
    untrained = arch.model_class(arch.config("tiny", vocab_size=len(tokenizer))).eval()
    baseline = family_scorer(data_layout, tokenizer, tmp_path / "tasks")(untrained)
    for domain in DOMAINS:
        for index in (1, 2, 3):
            ppl = metrics[f"model{index}"]["per_domain"][domain]["perplexity"]
            assert ppl < 0.5 * baseline["per_domain"][domain]["perplexity"]


def test_family_shares_ancestry(phase1_tiny: dict) -> None:
    base = AutoModelForCausalLM.from_pretrained(phase1_tiny["base_model"])
    models = [AutoModelForCausalLM.from_pretrained(p) for p in phase1_tiny["models"]]
    arch = get_architecture("trm_titans_mag")
    torch.manual_seed(1)
    init_a = arch.model_class(base.config)
    torch.manual_seed(2)
    init_b = arch.model_class(base.config)
    unrelated = _mean_matrix_cosine(init_a, init_b)
    for model in models:
        assert _mean_matrix_cosine(model, base) > unrelated + 0.5


def test_handoff_has_the_seed_shape_and_rerun_reuses(
    phase1_tiny: dict, data_cache_dir: Path
) -> None:
    assert len(phase1_tiny["models"]) == 3 and len(phase1_tiny["configs"]) == 3
    assert set(phase1_tiny["metrics"]) == {"model1", "model2", "model3"}
    for m in phase1_tiny["metrics"].values():
        assert m["perplexity"] > 1 and 0 <= m["accuracy"] <= 1
    out = Path(phase1_tiny["models"][0]).parent
    stamp = (out / "model_1" / "model.safetensors").stat().st_mtime_ns
    again = make_family(
        out, FamilySpec.for_preset("tiny"), cache_dir=data_cache_dir, progress=False
    )
    assert again == json.loads((out / "phase1.json").read_text())
    assert (
        out / "model_1" / "model.safetensors"
    ).stat().st_mtime_ns == stamp  # reused, not retrained


def test_an_interrupted_save_leaves_no_complete_looking_model(
    tmp_path: Path, phase1_tiny: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = AutoModelForCausalLM.from_pretrained(phase1_tiny["models"][0])
    tokenizer = AutoTokenizer.from_pretrained(phase1_tiny["models"][0])

    def crash(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(type(tokenizer), "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        _save_atomic(model, tokenizer, tmp_path / "model_1")
    assert not (tmp_path / "model_1").exists()
