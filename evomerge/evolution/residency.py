"""Where a run keeps its input weights: on the device, in host memory, or in their files.

The engine reads one key of each input at a time (evomerge/merge/streaming.py),
so the inputs need not sit on the merge device. Held there, four bf16 copies of
an 8B model (three fine-tunes and their base) are 64 GB before the first
candidate, and with two candidates an 80 GB GPU is full; held in host memory
(``host``) or left in their safetensors files (``disk``), the device holds only
the candidates being merged and scored, and each input tensor travels to the
device when a merge reads it (docs/recipes.md "Where the inputs live").

``auto`` keeps the inputs on the device wherever inputs plus candidates fit its
free memory; on a GPU it falls back to host memory, then to the files; on the
CPU (where host memory is the device's) straight to the files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import PreTrainedModel

from evomerge.evolution.model_dir import ShardReader, fail, read_model
from evomerge.merge.inputs import FetchedTensors, InputSet, TensorSpec, tied_aliases

Residency = Literal["device", "host", "disk"]
#: An input as a run holds it: a model in a pool slot on the device (``device``), or
#: weights fetched to the device when read (``host``, ``disk``).
InputWeights = PreTrainedModel | FetchedTensors
RESIDENCIES: tuple[str, ...] = ("auto", "device", "host", "disk")
#: Room kept above the weights for one eval batch, merge temporaries and the allocator.
HEADROOM = 1.25
#: File bytes a ``disk`` input reads before it unmaps them: one streamed merge of the 99M
#: llama family peaked at 2.28 GB host RSS with 256 MB per input, 1.56-1.61 GB with 32 MB,
#: 1.51 GB closing after every read (docs/benchmarks.md "Scale").
READ_BUDGET = 32 * 2**20


def choose_residency(
    requested: str,
    *,
    device: torch.device,
    input_bytes: int,
    candidate_bytes: int,
    device_free: int | None,
    host_available: int | None,
    processes: int = 1,
) -> Residency:
    """``requested``, or for ``auto`` the first of device / host / disk that holds the inputs.

    ``input_bytes``: every input and the base in the storage dtype;
    ``candidate_bytes``: the candidates one process holds at once. Each of
    ``processes`` holds its own inputs and candidates: on one GPU each (the free
    figure is per GPU), all in the one host memory. A free figure of None is
    unknown and taken to fit.
    """
    if requested != "auto":
        if requested not in RESIDENCIES:
            raise ValueError(f"unknown residency {requested!r} (one of {', '.join(RESIDENCIES)})")
        return requested  # type: ignore[return-value]
    if device.type == "cpu":  # host memory is the device's: resident, or left in the files
        device_free, host_available = host_available, 0
        input_bytes, candidate_bytes = input_bytes * processes, candidate_bytes * processes
    if device_free is None or (input_bytes + candidate_bytes) * HEADROOM <= device_free:
        return "device"
    if host_available is None or input_bytes * processes * HEADROOM <= host_available:
        return "host"
    return "disk"


def shortfall(
    residency: Residency,
    *,
    device: torch.device,
    input_bytes: int,
    candidate_bytes: int,
    device_free: int | None,
    host_available: int | None,
    processes: int = 1,
) -> tuple[Literal["device", "host"], int, int] | None:
    """(where, bytes the run holds there, bytes free there) when they cannot fit, else None.

    The device holds each process's candidates, and its inputs where they are resident
    (``device``, and on the CPU ``host`` too; on the CPU every process's, in one memory);
    on a GPU, ``host`` inputs take each process's copy of host memory. No headroom is
    added: this refuses only runs whose weights alone exceed the memory, which would
    otherwise fail hours in, at an allocation.
    """
    if device.type == "cpu":
        held = (candidate_bytes + (input_bytes if residency != "disk" else 0)) * processes
        return (
            ("device", held, host_available)
            if host_available is not None and held > host_available
            else None
        )
    if device.type != "cuda":  # an accelerator whose free memory is not read
        return None
    held = candidate_bytes + (input_bytes if residency == "device" else 0)
    if device_free is not None and held > device_free:
        return ("device", held, device_free)
    on_host = input_bytes * processes
    if residency == "host" and host_available is not None and on_host > host_available:
        return ("host", on_host, host_available)
    return None


@dataclass(frozen=True)
class MemoryPlan:
    """What a run holds where, in weights: the arithmetic `recipe validate` prints and
    `recipe run` refuses by, from the inputs' safetensors headers alone.

    Counted: the input models (and the base where it is loaded) in the storage dtype,
    and the candidates resident at once, in each process. Not counted: one eval batch
    (on a GPU, ``fitness.batch_tokens: auto`` sizes it to a quarter of the device's
    memory) and merge temporaries (one tensor in fp32 at a time).
    """

    model_bytes: int
    dtype: torch.dtype
    inputs: int
    candidates: int
    residency: Residency
    device: torch.device
    device_free: int | None
    host_available: int | None
    processes: int = 1

    @property
    def input_bytes(self) -> int:
        return self.model_bytes * self.inputs

    @property
    def candidate_bytes(self) -> int:
        return self.model_bytes * self.candidates

    @property
    def inputs_on_device(self) -> bool:
        """Whether the inputs sit in the device's memory (on the CPU, ``host`` is that too)."""
        return self.residency == "device" or (
            self.device.type == "cpu" and self.residency == "host"
        )

    @property
    def device_bytes(self) -> int:
        """The weights one process holds on its device: its candidates, and its inputs
        where they are resident."""
        return self.candidate_bytes + (self.input_bytes if self.inputs_on_device else 0)

    def shortfall(self) -> tuple[Literal["device", "host"], int, int] | None:
        """(where, bytes held there, bytes free there) when they cannot fit, else None."""
        return shortfall(
            self.residency,
            device=self.device,
            input_bytes=self.input_bytes,
            candidate_bytes=self.candidate_bytes,
            device_free=self.device_free,
            host_available=self.host_available,
            processes=self.processes,
        )

    def describe(self) -> str:
        """One line: the model size, where the inputs live, what each memory holds of its room."""
        dtype = str(self.dtype).removeprefix("torch.")
        on_cpu = self.device.type == "cpu"
        many = self.processes > 1
        models = f"{self.inputs} inputs and {self.candidates} candidates of " + (
            f"{size_text(self.model_bytes)} ({dtype})"
        )
        if many:
            models += f" in each of {self.processes} processes"
        # on the CPU every process's share is in one memory; on GPUs each has its own
        device_total = self.device_bytes * (self.processes if on_cpu else 1)
        device = "each process's GPU" if many and not on_cpu else str(self.device)
        device_room = _room(self.host_available if on_cpu else self.device_free, on_cpu)
        host_room = _room(self.host_available, True)
        if self.inputs_on_device:
            return f"{models}, all on {device}: {size_text(device_total)}{device_room}"
        if self.residency == "host":
            host = self.input_bytes * self.processes
            where = f"the inputs in host memory: {size_text(host)}{host_room}"
        else:
            where = "the inputs read from their files" + (
                f" (host memory{host_room})"
                if self.host_available is not None and not on_cpu
                else ""
            )
        return (
            f"{models}: {where}; the candidates on {device}: {size_text(device_total)}{device_room}"
        )


def _room(available: int | None, host: bool) -> str:
    """`` of 80.0 GB free`` (a device), `` of 128.0 GB available`` (host memory), or unknown."""
    if available is None:
        return " (room unknown)"
    return f" of {size_text(available)} {'available' if host else 'free'}"


def size_text(n: int) -> str:
    """Bytes as a person reads them in one line: 16.1 GB, 397.2 MB, 1.0 MB."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def free_memory(device: torch.device) -> tuple[int | None, int | None]:
    """(free bytes on ``device`` when it is a GPU, available host bytes), None when unknown."""
    device_free = None
    if device.type == "cuda":
        device_free = int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        host = int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        host = None
    return device_free, host


class HostTensors(FetchedTensors):
    """Weights kept in host memory, copied to ``device`` when read (on the CPU: the tensor itself).

    Pageable, not pinned: torch's pinned allocator rounds every block up to a
    power of two (a 1.05 GB Llama-3 embedding pins 2 GB), which for the 7-8B
    inputs this exists for can cost more host memory than the inputs
    themselves. Pinning in place (``cudaHostRegister``) is the measured next
    step (benchmarks/gpu_scale.sh host), not taken blind.
    """

    def __init__(self, state: Mapping[str, torch.Tensor], device: torch.device) -> None:
        self._host = dict(state)
        self.device = device
        super().__init__({key: (v.shape, v.dtype) for key, v in self._host.items()})

    def _fetch(self, key: str) -> torch.Tensor:
        return self._host[key].to(self.device)


class FileTensors(FetchedTensors):
    """Weights read from the model's safetensors files when read, never held.

    Each read is cast to the storage dtype (what ``from_pretrained(dtype=...)``
    does) and moved to the device; the files' pages are unmapped as the
    :class:`ShardReader` goes, so host memory holds the tensors in use only.
    The names are the model's own state-dict names: a tied tensor saved once
    under its partner's name is read from that name. (mergekit's
    ``LazyTensorLoader`` reads the same way but keeps its current shard mapped
    until it opens another, so a single-file input ends up wholly in RSS: the
    cost this class exists to avoid. Both sit on ``safetensors.safe_open``.)
    """

    def __init__(
        self,
        path: Path,
        specs: Mapping[str, TensorSpec],
        sources: Mapping[str, tuple[Path, str]],
        device: torch.device,
    ) -> None:
        super().__init__(specs)
        self.path, self.device = path, device
        self._sources = dict(sources)
        self._reader = ShardReader(READ_BUDGET)

    @classmethod
    def open(cls, path: Path, architecture: str, template: PreTrainedModel) -> FileTensors:
        """``path``'s weights laid out as ``template`` (a model of the run's: names, shapes,
        dtype, device). Its full state dict has the tied names too, so a tied tensor saved
        under either name is found."""
        files = read_model(path, architecture)
        state = template.state_dict()
        aliases = tied_aliases(state)
        partners: dict[str, list[str]] = {}
        for alias, first in aliases.items():
            partners.setdefault(first, []).append(alias)
        specs: dict[str, TensorSpec] = {}
        sources: dict[str, tuple[Path, str]] = {}
        for key, value in state.items():
            if key in aliases:
                continue
            stored = next((n for n in [key, *partners.get(key, [])] if n in files.files), None)
            if stored is None:
                raise fail(path, "weights", f"tensor {key!r} is not in the safetensors files")
            if files.shapes[stored] != tuple(value.shape):
                raise fail(
                    path,
                    "weights",
                    f"tensor {stored!r} has shape {list(files.shapes[stored])}, "
                    f"the model has {list(value.shape)}",
                )
            specs[key] = (value.shape, value.dtype)
            sources[key] = (files.files[stored], stored)
        return cls(path, specs, sources, template.device)

    def _fetch(self, key: str) -> torch.Tensor:
        shard, name = self._sources[key]
        dtype = self.spec(key)[1]
        value = self._reader.get(shard, name)
        return value.to(device=self.device, dtype=dtype if value.is_floating_point() else None)

    def release(self) -> None:
        super().release()
        self._reader.close()


def file_input_set(paths: Sequence[str], base: str | None, template: PreTrainedModel) -> InputSet:
    """The inputs (and base) of a one-off merge (``evomerge combos export|run``), read from
    their files tensor by tensor as the merge goes.

    Loaded whole they would be three or four more copies of the model beside the one
    merged into (``template``, which names the architecture, shapes and dtype): 4.4 GB
    peak for a 99M fp32 llama merge where the files need one (docs/benchmarks.md "Scale").
    A model that differs from ``template`` is a one-line InputValidationError naming it.
    """
    architecture = str(template.config.model_type)
    models = [FileTensors.open(Path(p), architecture, template) for p in paths]
    ancestor = FileTensors.open(Path(base), architecture, template) if base else None
    return InputSet(
        models, base=ancestor, names=list(paths), base_name=base or "base_model", cache=False
    )
