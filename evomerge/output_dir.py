"""Replacing an output dir without destroying what the command reads, or half of either.

``--overwrite`` deletes a dir the user named; a typo (``--out .``, ``--out runs`` where the
inputs live in ``runs/``) must not take the inputs, the recipe or the home dir with it,
and a failure while writing must not leave neither the old result nor the new one.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def replace_refusal(out: Path, keep: Iterable[Path | str | None]) -> str | None:
    """Why deleting ``out`` is refused (one line), or None: it is the working, home or root
    dir, or it is or holds one of ``keep`` (inputs, config files the command reads)."""
    target = Path(out).resolve()
    if target in (Path.cwd().resolve(), Path.home().resolve(), Path(target.anchor)):
        return f"{out} is the working, home or root directory"
    for path in keep:
        if path is None:
            continue
        kept = Path(path).resolve()
        if kept == target or target in kept.parents:
            return f"{out} holds {path}, which this command reads"
    return None


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A fresh sibling dir to write into; on success it becomes ``out``, whose old contents
    are removed only then. On failure ``out`` is untouched and the sibling removed."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.replace(old / "dir")
        staging.replace(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.replace(out)
