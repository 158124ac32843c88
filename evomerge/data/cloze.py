"""LAMBADA-style multiple-choice cloze items over held-out real paragraphs.

Tiny models trained for minutes score at chance on BIG-bench-style tasks, so
the accuracy term of the fitness is a cloze over the same domains the models
were trained on: given 29-59 words of a held-out paragraph, which of four words
comes next? The answer is the word that really follows in the source text.

Rules (stable, documented because other code and reports rely on them):

- the answer is a word of >= 3 ASCII letters that appears *in lower case* in
  the source (optionally followed by punctuation, which is dropped); proper
  nouns and sentence-initial words are never answers, so all four choices are
  lower case and capitalisation gives nothing away;
- the three distractors are other lower-case words of the same frequency band
  of the domain's *train* split (ranks within +-max(20, 10 %) of the answer's
  rank, widened until three qualify), absent from the context (case-folded),
  distinct, and different from the answer;
- everything random (window length, which eligible word, distractors, the
  answer's position) comes from an RNG seeded by sha256 of the paragraph and
  position / of the context, so items are identical on every machine;
- ``context`` ends without a space and choices start without one: lm-eval joins
  them with its default ``target_delimiter`` " ".
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Iterable

#: Context + answer span 30-60 words (so the context is 29-59 words).
MIN_WINDOW, MAX_WINDOW = 30, 60
#: A word needs this many lower-case occurrences in train to be an answer or a distractor.
MIN_COUNT = 3
#: At most this many items per domain and split (a deterministic subset beyond it).
MAX_ITEMS = 1000

_WORD = re.compile(r"\S+")
_ANSWER = re.compile(r"([a-z]{3,})[^\w\s]*")
_VOCAB_WORD = re.compile(r"(?<![A-Za-z'’])[a-z]{3,}(?![A-Za-z'’])")
_ANY_WORD = re.compile(r"[a-z]+")


def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode("utf-8")).digest()[:8], "big")


class FrequencyBands:
    """Lower-case word ranks of a domain's train split, for same-band distractors."""

    def __init__(self, train_paragraphs: Iterable[str]) -> None:
        counts: Counter[str] = Counter()
        for paragraph in train_paragraphs:
            counts.update(_VOCAB_WORD.findall(paragraph))
        ranked = sorted(
            (w for w, c in counts.items() if c >= MIN_COUNT), key=lambda w: (-counts[w], w)
        )
        self.words: list[str] = ranked
        self.rank: dict[str, int] = {w: i for i, w in enumerate(ranked)}

    def distractors(self, answer: str, context: str, rng: random.Random) -> list[str] | None:
        """Three distinct same-band words absent from ``context``; None if the answer is unranked."""
        rank = self.rank.get(answer)
        if rank is None:
            return None
        banned = set(_ANY_WORD.findall(context.lower())) | {answer}
        width = max(20, rank // 10)
        while True:
            lo, hi = max(0, rank - width), min(len(self.words), rank + width + 1)
            pool = [w for w in self.words[lo:hi] if w not in banned]
            if len(pool) >= 3:
                return rng.sample(pool, 3)
            if lo == 0 and hi == len(self.words):
                return None
            width *= 2


def cloze_items(
    paragraphs: Iterable[str], bands: FrequencyBands, id_prefix: str
) -> list[dict[str, object]]:
    """Items over consecutive, non-overlapping windows of each paragraph, in source order."""
    items: list[dict[str, object]] = []
    for paragraph in paragraphs:
        items += _paragraph_items(paragraph, bands, id_prefix)
    if len(items) > MAX_ITEMS:  # deterministic subset, kept in source order
        keep = set(sorted(range(len(items)), key=lambda i: _seed(str(items[i]["id"])))[:MAX_ITEMS])
        items = [item for i, item in enumerate(items) if i in keep]
    return items


def paragraph_id(paragraph: str) -> str:
    """Short stable id of a paragraph (first 12 hex digits of its sha256)."""
    return hashlib.sha256(paragraph.encode("utf-8")).hexdigest()[:12]


def _paragraph_items(
    paragraph: str, bands: FrequencyBands, id_prefix: str
) -> list[dict[str, object]]:
    words = list(_WORD.finditer(paragraph))
    pid = paragraph_id(paragraph)
    items: list[dict[str, object]] = []
    pos = 0
    while pos + MIN_WINDOW <= len(words):
        rng = random.Random(_seed(paragraph, str(pos)))
        last = min(pos + MAX_WINDOW, len(words))
        candidates = list(range(pos + MIN_WINDOW - 1, last))
        rng.shuffle(candidates)
        for j in candidates:
            match = _ANSWER.fullmatch(words[j].group())
            if match is None:
                continue
            answer = match.group(1)
            context = paragraph[words[pos].start() : words[j - 1].end()]
            choice_rng = random.Random(_seed(context))
            others = bands.distractors(answer, context, choice_rng)
            if others is None:
                continue
            label = choice_rng.randrange(4)
            choices = [*others[:label], answer, *others[label:]]
            items.append(
                {
                    "id": f"{id_prefix}-{pid}-{pos}",
                    "context": context,
                    "choices": choices,
                    "label": label,
                }
            )
            pos = j + 1
            break
        else:
            pos += MIN_WINDOW  # no usable answer in this window
    return items
