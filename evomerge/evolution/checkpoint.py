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

    def load_state(self, recipe_hash: str) -> dict[str, Any]:
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
            raise CheckpointError(
                f"{path}: checkpoint was written by a different recipe (hash {str(state.get('recipe_hash'))[:12]}), "
                "or an input named by repo id now resolves to another cached revision; "
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
