"""Raw text -> comparable paragraphs -> a train/fitness/test split that never moves.

Blank-line blocks differ wildly in size between domains (a play's speech is a
dozen words, a docstring section or a novel's paragraph can be 500), so blocks
are normalised to one comparable unit: short consecutive blocks of the same
document are merged (joined by a newline) and long ones are cut at sentence
ends, giving paragraphs of roughly 100-200 words.

The split of a paragraph is a pure function of its text (sha256), so it is the
same on every machine and under every ordering; identical paragraphs are kept
once, hence the splits are disjoint as sets of text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Literal

Split = Literal["train", "fitness", "test"]

#: Buckets of ``sha256(text) mod 100``: [0, 80) train, [80, 90) fitness, [90, 100) test.
#: 10 % held out per evaluation split (not 5 %) so the smallest domain (Moby Dick,
#: ~210 k words) still yields a few hundred cloze items per split.
SPLIT_BUCKETS: dict[str, tuple[int, int]] = {
    "train": (0, 80),
    "fitness": (80, 90),
    "test": (90, 100),
}

#: Merge consecutive blocks until a paragraph holds at least this many words.
TARGET_WORDS = 100
#: Never let a paragraph grow past this many words (long blocks are cut).
MAX_WORDS = 200
#: Shorter paragraphs are dropped (a document's stray tail or heading, "[Exeunt.]").
MIN_WORDS = 20

_BLOCK_SEP = re.compile(r"\n[ \t\r\f\v]*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


def split_of(paragraph: str) -> Split:
    """The split a paragraph belongs to: ``sha256(utf-8 text)``, first 8 bytes, mod 100."""
    bucket = int.from_bytes(hashlib.sha256(paragraph.encode("utf-8")).digest()[:8], "big") % 100
    if bucket < SPLIT_BUCKETS["train"][1]:
        return "train"
    return "fitness" if bucket < SPLIT_BUCKETS["fitness"][1] else "test"


def normalise_block(block: str) -> str:
    """Collapse every run of whitespace (line wraps, indentation) to one space."""
    return " ".join(block.split())


def paragraphs_of(document: str) -> list[str]:
    """Cut one document into paragraphs of ~TARGET_WORDS..MAX_WORDS words, in order."""
    pieces: list[str] = []
    for raw in _BLOCK_SEP.split(document):
        block = normalise_block(raw)
        if block:
            pieces += _cut_long(block)
    out: list[str] = []
    current: list[str] = []
    count = 0
    for piece in pieces:
        words = piece.count(" ") + 1  # pieces are normalised: one space between words
        if current and count + words > MAX_WORDS:
            if count >= MIN_WORDS:  # else: a stray heading before a long block, dropped
                out.append("\n".join(current))
            current, count = [], 0
        current.append(piece)
        count += words
        if count >= TARGET_WORDS:
            out.append("\n".join(current))
            current, count = [], 0
    if count >= MIN_WORDS:
        out.append("\n".join(current))
    return out


def _cut_long(block: str) -> list[str]:
    """Split a block longer than MAX_WORDS at sentence ends into ~TARGET_WORDS pieces."""
    if len(block.split(" ")) <= MAX_WORDS:
        return [block]
    pieces: list[str] = []
    current: list[str] = []
    for sentence in _SENTENCE_END.split(block):
        words = sentence.split(" ")
        while len(words) > MAX_WORDS:  # a run-on "sentence": hard cut at TARGET_WORDS
            if current:
                pieces.append(" ".join(current))
                current = []
            pieces.append(" ".join(words[:TARGET_WORDS]))
            words = words[TARGET_WORDS:]
        if current and len(current) + len(words) > MAX_WORDS:
            pieces.append(" ".join(current))
            current = []
        current += words
        if len(current) >= TARGET_WORDS:
            pieces.append(" ".join(current))
            current = []
    if current:
        pieces.append(" ".join(current))
    return pieces


def split_documents(documents: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Paragraphs of all documents (in order, duplicates dropped) grouped by split."""
    seen: set[str] = set()
    splits: dict[str, list[str]] = {name: [] for name in SPLIT_BUCKETS}
    for _name, text in documents:
        for paragraph in paragraphs_of(text):
            if paragraph not in seen:
                seen.add(paragraph)
                splits[split_of(paragraph)].append(paragraph)
    return splits
