"""Model names as Hugging Face users write them: a local dir, or a repo id already in the cache.

mergekit and transformers take ``org/name`` for a model; evomerge takes it too, but
only from the local Hugging Face cache (``huggingface_hub.snapshot_download`` with
``local_files_only=True``: it reads ``refs/`` and ``snapshots/`` and never opens a
connection). A repo that is not cached is not fetched: nothing is downloaded at
run time (docs/recipes.md "Inputs from the Hugging Face cache"). ``org/name@REV``
pins a cached revision (a commit hash or a branch), as mergekit spells it.
"""

from __future__ import annotations

import re
from pathlib import Path

#: ``org/name`` as the Hub spells a repo id (no third part, no leading dot or slash),
#: optionally ``@REVISION`` (a commit hash, or a branch or tag name), as mergekit reads it.
_REPO_ID = re.compile(
    r"([A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@([A-Za-z0-9_][\w.+/-]{0,254}))?"
)

#: A cached snapshot dir: ``.../models--ORG--NAME/snapshots/COMMIT``.
_SNAPSHOT = re.compile(r"models--([^/]+?)--([^/]+)/snapshots/([0-9a-f]{40})/?$")


def split_revision(name: str | Path) -> tuple[str, str | None]:
    """``org/name@rev`` as (``org/name``, ``rev``); any other name as (name, None)."""
    match = _REPO_ID.fullmatch(str(name))
    return (match.group(1), match.group(2)) if match else (str(name), None)


def looks_like_repo_id(name: str | Path) -> bool:
    repo_id, revision = split_revision(name)
    return (
        bool(_REPO_ID.fullmatch(str(name)))
        and not repo_id.endswith((".", "-"))
        and not (revision or "x").endswith(("/", "."))
    )


def cached_snapshot(name: str) -> Path | None:
    """The cached snapshot dir of repo id ``name``: of its default revision (``refs/main``),
    or of ``@REV`` where the name pins one; None when the cache has no complete one.
    ``local_files_only``: huggingface_hub reads the cache and makes no request (tested
    with the network calls made to fail)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, revision = split_revision(name)
    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError):  # incomplete ones too
        return None


def snapshot_revision(path: str | Path) -> tuple[str, str] | None:
    """(``org/name``, commit) of a cached snapshot dir's path, else None: what a pinned
    name for that exact snapshot is (``org/name@commit``)."""
    match = _SNAPSHOT.search(str(path))
    return (f"{match.group(1)}/{match.group(2)}", match.group(3)) if match else None


def model_location(name: str | Path, base_dir: Path | None = None) -> Path:
    """Where the model ``name`` is: a dir (relative ones against ``base_dir``, else the
    working dir), else, for a repo id, its cached snapshot. A name that is neither comes
    back as the path, for the caller's "not a directory" check to name."""
    path = Path(name)
    if path.is_absolute():
        return path
    local = (base_dir / path).resolve() if base_dir is not None else path
    if local.exists() or not looks_like_repo_id(name):
        return local
    return cached_snapshot(str(name)) or local


def not_cached_hint(name: str | Path) -> str:
    """For a missing model named ``name`` (as the user wrote it) that reads as a repo id:
    that the cache has no snapshot of it either. Empty for any other name."""
    if not looks_like_repo_id(name):
        return ""
    repo_id, revision = split_revision(name)
    which = f"revision {revision}" if revision else "its main revision"
    fetch = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
    return (
        f" (if {name} is a Hugging Face repo id: the local cache has no complete snapshot of "
        f"{which}, and evomerge downloads nothing; fetch it first, e.g. `{fetch}`)"
    )


def model_dir(name: str) -> Path:
    """``name`` (a path from the working dir, or a cached repo id) as a model dir; a
    ValueError saying why not, for the caller to prefix with its option."""
    where = model_location(name)
    if not where.is_dir():
        hint = "" if where.exists() else not_cached_hint(name)
        raise ValueError(f"{name}: not a directory (expected a save_pretrained model dir){hint}")
    return where
