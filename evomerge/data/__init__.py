"""Offline demo data: three text domains from pinned packages, hash splits, tokenizer, eval files.

``prepare_data()`` builds ``<cache>/data/v1/`` once (fast no-op afterwards);
``get_tokenizer(vocab_size)`` trains/caches the byte-level BPE of the demo
family. See ``layout.py`` for the files and ``cloze.py`` for the item rules.
"""

from __future__ import annotations

from evomerge.data.layout import DOMAINS, SPLITS, DataLayout, default_cache_dir
from evomerge.data.paragraphs import split_of
from evomerge.data.prepare import prepare_data
from evomerge.data.sources import DataSourceError
from evomerge.data.tokenizer import get_tokenizer

__all__ = [
    "DOMAINS",
    "SPLITS",
    "DataLayout",
    "DataSourceError",
    "default_cache_dir",
    "get_tokenizer",
    "prepare_data",
    "split_of",
]
