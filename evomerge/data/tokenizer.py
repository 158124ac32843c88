"""The demo family's tokenizer: byte-level BPE trained on the train split, cached per vocab size.

Byte-level BPE (GPT-2 style, no prefix space, no normaliser) is lossless by
construction: ``decode(encode(x)) == x`` for any string, which perplexity and
cloze scoring need (a tokenizer that rewrites spaces or unknown characters
would score a different text). Training is deterministic: the corpus is the
train split of every domain in :data:`DOMAINS` order, each capped at
:data:`CHARS_PER_DOMAIN` so the dialogue domain (4x larger) does not dominate
the merges and training stays a few seconds.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from evomerge.data.layout import DOMAINS
from evomerge.data.prepare import prepare_data

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

#: The only special token; serves as bos, eos (document separator) and pad.
EOS = "<|endoftext|>"
#: Characters of train text per domain fed to the BPE trainer.
CHARS_PER_DOMAIN = 1_000_000
#: Smallest usable vocab: 256 byte symbols + the special token.
MIN_VOCAB = 257
_META = "evomerge_tokenizer.json"
#: Files that define how a saved tokenizer tokenizes, in the order input validation
#: hashes them (the same-tokenizer check compares these, nothing else).
TOKENIZER_VOCAB_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
)
#: Every file ``save_pretrained`` may write for a tokenizer: what a merged model
#: dir copies from its inputs so that ``AutoTokenizer`` loads it.
TOKENIZER_FILES: tuple[str, ...] = TOKENIZER_VOCAB_FILES + (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
)


def get_tokenizer(vocab_size: int = 8192, cache_dir: Path | None = None) -> PreTrainedTokenizerFast:
    """The cached tokenizer for ``vocab_size`` (trained and saved on first use).

    Prepares the data first if needed. The result is saved with
    ``save_pretrained`` in ``<cache>/data/v1/tokenizer-<vocab_size>/`` and loads
    with ``AutoTokenizer.from_pretrained`` from there.
    """
    from transformers import PreTrainedTokenizerFast

    if vocab_size < MIN_VOCAB:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: byte-level BPE needs at least {MIN_VOCAB}"
        )
    layout = prepare_data(cache_dir, progress=False)
    target = tokenizer_dir(layout.root, vocab_size)
    if not (target / _META).is_file():
        corpus = list(training_corpus(layout.paragraphs(d, "train") for d in DOMAINS))
        tokenizer = train_tokenizer(corpus, vocab_size)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-tmp-", dir=layout.root))
        try:
            tokenizer.save_pretrained(tmp)
            meta = {
                "vocab_size": vocab_size,
                "corpus_chars": sum(len(t) for t in corpus),
                "corpus_sha256": hashlib.sha256("\0".join(corpus).encode("utf-8")).hexdigest(),
                "domains": list(DOMAINS),
                "chars_per_domain": CHARS_PER_DOMAIN,
            }
            (tmp / _META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            _publish(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return PreTrainedTokenizerFast.from_pretrained(str(target))


def tokenizer_dir(data_root: Path, vocab_size: int) -> Path:
    """Where the tokenizer of a vocab size is cached inside a prepared data folder."""
    return data_root / f"tokenizer-{vocab_size}"


def training_corpus(domains: Iterable[list[str]]) -> Iterator[str]:
    """Paragraphs of each domain in order, up to :data:`CHARS_PER_DOMAIN` characters per domain."""
    for paragraphs in domains:
        total = 0
        for paragraph in paragraphs:
            if total >= CHARS_PER_DOMAIN:
                break
            total += len(paragraph)
            yield paragraph


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a lossless byte-level BPE on ``texts`` and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer, length=len(texts))
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        clean_up_tokenization_spaces=False,  # keeps decode(encode(x)) == x
    )


def _publish(tmp: Path, target: Path) -> None:
    if target.exists() and not (target / _META).is_file():
        shutil.rmtree(target)  # left by hand or by an older layout: never trusted
    try:
        tmp.rename(target)
    except OSError:
        if not (target / _META).is_file():  # not a concurrent trainer that won the race
            raise
