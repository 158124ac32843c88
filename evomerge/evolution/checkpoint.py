"""Atomic per-generation checkpoints: kill -9 at any moment, then --resume.

Layout under ``OUT/.checkpoint/``: ``state.json`` (written last; names the
weight files it belongs to), ``population-gNNNN.safetensors`` (the evaluated
population) and ``champion-gNNNN.safetensors``. Every file is written to a temp
name, fsynced and renamed, so a reader sees either the old checkpoint or the
new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

STATE = "state.json"
FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or from another recipe."""


#: Changed recipe fields a refused resume names besides the inputs' pins (all of those
#: are named); the rest are counted.
SHOWN_CHANGES = 3
#: Longest value a change shows.
SHOWN_CHARS = 80

_ABSENT = object()


def _shown(value: Any) -> str:
    if value is _ABSENT:
        return "absent"
    text = json.dumps(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _differences(old: Any, new: Any, where: str, out: list[tuple[str, Any, Any]]) -> None:
    """(field, old, new) for each difference, at the deepest field both sides share: a list
    that grew or shrank, or a field added or dropped, is one difference."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(old.keys() | new.keys(), key=str):
            field = f"{where}.{key}" if where else str(key)
            _differences(old.get(key, _ABSENT), new.get(key, _ABSENT), field, out)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _differences(a, b, f"{where}[{i}]", out)
    elif old is _ABSENT or new is _ABSENT or json.dumps(old) != json.dumps(new):  # 1 vs 1.0
        out.append((where, old, new))


def recipe_changes(saved: Any, now: Mapping[str, Any] | None) -> list[str]:
    """What differs between the recipe a checkpoint was written by and this one, one phrase
    per field; an input whose repo id now resolves to another cached revision first, with
    the pin that resumes it (``org/name@commit``). Empty when either side is unknown (a
    checkpoint from before the recipe was saved in it)."""
    from evomerge.hub_cache import split_revision

    if not isinstance(saved, Mapping) or now is None:
        return []
    found: list[tuple[str, Any, Any]] = []
    _differences(saved, now, "", found)
    pins, others = [], []
    for field, was, is_ in found:
        (repo, old_rev), (repo_now, new_rev) = split_revision(str(was)), split_revision(str(is_))
        if old_rev and new_rev and repo == repo_now:
            pins.append(
                f"{field}: {repo} now resolves to cached revision {new_rev[:12]}, the "
                f"checkpoint's was {old_rev[:12]} (write {repo}@{old_rev} to resume it)"
            )
        else:
            others.append(f"{field}: {_shown(was)} in the checkpoint, {_shown(is_)} now")
    more = len(others) - SHOWN_CHANGES
    return pins + others[:SHOWN_CHANGES] + ([f"and {more} more"] if more > 0 else [])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    tmp = dest.with_name(f".tmp-{dest.name}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


def atomic_save_tensors(dest: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    tmp = dest.with_name(f".tmp-{dest.name}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Checkpoint:
    """Reads and writes the checkpoint directory of one run."""

    def __init__(self, out_dir: Path) -> None:
        self.dir = Path(out_dir) / ".checkpoint"
        #: the most bytes one save wrote (state.json plus the weight files it names): what a
        #: generation costs on disk (result.json ``resources``)
        self.max_save_bytes = 0

    def _count(self, names: list[str]) -> None:
        size = sum((self.dir / n).stat().st_size for n in names if (self.dir / n).is_file())
        self.max_save_bytes = max(self.max_save_bytes, size)

    def exists(self) -> bool:
        return (self.dir / STATE).is_file()

    def save(
        self,
        state: dict[str, Any],
        population: list[Mapping[str, torch.Tensor]],
        champion: Mapping[str, torch.Tensor] | None,
    ) -> None:
        """Write weights first, then state.json naming them; then drop older weight files."""
        self.dir.mkdir(parents=True, exist_ok=True)
        gen = int(state["generation"])
        pop_file = self.dir / f"population-g{gen:04d}.safetensors"
        atomic_save_tensors(
            pop_file, {f"{i}/{k}": v for i, sd in enumerate(population) for k, v in sd.items()}
        )
        files = {"population": pop_file.name}
        if champion is not None:
            champ_file = self.dir / str(state["champion_file"])
            atomic_save_tensors(champ_file, champion)
        if state.get("champion_file"):
            files["champion"] = state["champion_file"]
        state = {**state, "format": FORMAT, "files": files}
        state["sha256"] = {name: file_sha256(self.dir / fname) for name, fname in files.items()}
        atomic_write_bytes(self.dir / STATE, json.dumps(state, indent=1).encode())
        self._count(
            [STATE, pop_file.name, *([str(state["champion_file"])] if champion is not None else [])]
        )
        keep = set(files.values())
        for stale in self.dir.glob("*.safetensors"):
            if stale.name not in keep:
                stale.unlink(missing_ok=True)

    def save_state(self, state: dict[str, Any]) -> None:
        """A weightless checkpoint (genome strategies: models are rebuilt from the inputs)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {**state, "format": FORMAT, "files": {}, "sha256": {}}
        atomic_write_bytes(self.dir / STATE, json.dumps(state, indent=1).encode())
        self._count([STATE])
        for stale in self.dir.glob("*.safetensors"):
            stale.unlink(missing_ok=True)

    def load_state(
        self, recipe_hash: str, identity: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The saved state, if the recipe's hash matches; ``identity`` (what was hashed, also
        saved as the state's ``recipe``) lets a refusal name the fields that changed."""
        path = self.dir / STATE
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no checkpoint to resume from") from None
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: corrupt checkpoint ({exc.msg})") from None
        if state.get("format") != FORMAT:
            raise CheckpointError(
                f"{path}: checkpoint format {state.get('format')!r}, expected {FORMAT}"
            )
        if state.get("recipe_hash") != recipe_hash:
            changes = recipe_changes(state.get("recipe"), identity)
            what = (
                f": {'; '.join(changes)}"
                if changes
                else (
                    f" (hash {str(state.get('recipe_hash'))[:12]}), or an input named by repo id "
                    "now resolves to another cached revision"
                )
            )
            raise CheckpointError(
                f"{path}: checkpoint was written by a different recipe{what}; "
                "run without --resume or restore the original recipe"
            )
        for name, fname in state["files"].items():
            fpath = self.dir / fname
            if not fpath.is_file() or file_sha256(fpath) != state["sha256"][name]:
                raise CheckpointError(f"{fpath}: missing or corrupt checkpoint weights ({name})")
        return state

    def load_population(self, state: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        flat = load_file(str(self.dir / state["files"]["population"]))
        count = len({k.split("/", 1)[0] for k in flat})
        population: list[dict[str, torch.Tensor]] = [{} for _ in range(count)]
        for key, tensor in flat.items():
            index, name = key.split("/", 1)
            population[int(index)][name] = tensor
        return population
