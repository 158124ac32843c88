"""Where prepared data lives and how other modules read it (no preparing here).

Layout of ``<cache>/data/v1/`` (``v1`` is bumped whenever the rules that
produce the files change, so an old cache is never read as a new one)::

    manifest.json                    sources, versions, sha256s, counts (written last)
    ppl/<domain>/<split>.jsonl       {"text": paragraph} per line, all three splits
    cloze/<domain>/<split>.jsonl     {"id", "context", "choices", "label"}, fitness + test
    tokenizer-<vocab>/               see evomerge.data.tokenizer
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DOMAINS: tuple[str, ...] = ("narrative", "technical", "dialogue")
SPLITS: tuple[str, ...] = ("train", "fitness", "test")
#: Splits that have cloze files (train has none: nothing is evaluated on it).
EVAL_SPLITS: tuple[str, ...] = ("fitness", "test")

DATA_VERSION = "v1"
MANIFEST = "manifest.json"


def default_cache_dir() -> Path:
    """``$EVOMERGE_CACHE`` if set, else ``~/.cache/evomerge``."""
    env = os.environ.get("EVOMERGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "evomerge"


def data_root(cache_dir: Path | None = None) -> Path:
    """The versioned data folder inside a cache (whether prepared or not)."""
    return Path(cache_dir or default_cache_dir()).expanduser() / "data" / DATA_VERSION


def _check(domain: str, split: str, allowed: tuple[str, ...] = SPLITS) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r} (known: {', '.join(DOMAINS)})")
    if split not in allowed:
        raise ValueError(f"unknown split {split!r} here (known: {', '.join(allowed)})")


@dataclass(frozen=True)
class DataLayout:
    """A prepared data folder: paths of the evaluation files and the paragraphs of each split."""

    root: Path
    manifest: dict[str, Any] = field(compare=False, repr=False)

    @classmethod
    def load(cls, root: Path) -> DataLayout:
        """Open a prepared folder; raises FileNotFoundError when it has no manifest."""
        manifest_path = root / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{manifest_path}: not valid JSON ({exc}); re-run `evomerge data prepare --force`"
            ) from exc
        return cls(root=root, manifest=manifest)

    def ppl_path(self, domain: str, split: str) -> Path:
        """JSONL of ``{"text": paragraph}`` lines (an lm-eval perplexity task's data file)."""
        _check(domain, split)
        return self.root / "ppl" / domain / f"{split}.jsonl"

    def cloze_path(self, domain: str, split: str) -> Path:
        """JSONL of multiple-choice cloze items (fitness and test splits only)."""
        _check(domain, split, EVAL_SPLITS)
        return self.root / "cloze" / domain / f"{split}.jsonl"

    def paragraphs(self, domain: str, split: str) -> list[str]:
        """The paragraphs of one domain and split, in source order."""
        with self.ppl_path(domain, split).open(encoding="utf-8") as fh:
            return [json.loads(line)["text"] for line in fh if line.strip()]

    def cloze_items(self, domain: str, split: str) -> list[dict[str, Any]]:
        """The cloze items of one domain and split, in source order."""
        with self.cloze_path(domain, split).open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
