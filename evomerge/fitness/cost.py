"""Speed and memory of one model on a fixed batch: robust latency, peak inference memory.

Latency: ``warmup`` untimed forwards, then ``repeats`` timed forwards of the
same (B, T) batch; the median, scaled to seconds per 1,000 tokens. On CUDA each
forward is timed with CUDA events (device time, no host jitter); elsewhere with
``time.perf_counter`` around a forward.

Peak memory: on CUDA, the model's parameter bytes plus how far
``torch.cuda.max_memory_allocated`` rose above the allocation before one
forward (other models resident on the device do not count). On other
devices there is no allocator peak counter, so it is measured as parameter and
buffer bytes plus the peak of live activation bytes: a ``TorchDispatchMode``
sees every ATen op of the forward, adds each new output storage's size when it
appears and subtracts it when its last tensor is freed, and records the
maximum. Workspace that a kernel allocates and frees internally is not seen,
so this is a slight lower bound. It is deterministic (repeat noise 0) and a
function of the model's structure only, so it is computed once per structure.
"""

from __future__ import annotations

import statistics
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from evomerge.fitness.measurements import Measurements
from evomerge.fitness.scoring import forward_kwargs


class LiveTensorPeak(TorchDispatchMode):
    """Track the peak bytes of live tensor storages created by the ops run under this mode."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}  # data_ptr -> [nbytes, live tensor count]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        nbytes = storage.nbytes()
        if nbytes == 0:
            return
        key = storage.data_ptr()
        entry = self._storages.get(key)
        if entry is None:
            entry = self._storages[key] = [nbytes, 0]
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        entry[1] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._storages.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self._storages[key]
            self.live -= entry[0]


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers, shared (tied) storages counted once."""
    seen: dict[int, int] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _structure_key(model: torch.nn.Module, autocast_dtype: torch.dtype | None) -> tuple:
    tensors = [*model.named_parameters(), *model.named_buffers()]
    shapes = tuple((n, tuple(t.shape), str(t.dtype)) for n, t in tensors)
    return (type(model).__qualname__, str(autocast_dtype), shapes)


@dataclass(frozen=True)
class CostProbe:
    """The fixed batch that speed and memory are measured on (same for every candidate)."""

    input_ids: torch.Tensor  # (B, T) on the measuring device
    #: CPU peaks by model structure: without an allocator the count is a pure function of
    #: the model's class, tensor shapes and dtypes, so candidates of one architecture share it.
    _cpu_peaks: dict[tuple, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.numel())

    def _forward(self, model: torch.nn.Module, autocast_dtype: torch.dtype | None) -> torch.Tensor:
        with torch.autocast(
            device_type=self.input_ids.device.type,
            dtype=autocast_dtype or torch.bfloat16,
            enabled=autocast_dtype is not None,
        ):
            return model(input_ids=self.input_ids, **forward_kwargs(model)).logits

    @torch.inference_mode()
    def latency_samples(
        self,
        model: torch.nn.Module,
        *,
        repeats: int = 5,
        warmup: int = 2,
        autocast_dtype: torch.dtype | None = None,
    ) -> list[float]:
        """``repeats`` forward latencies in seconds per 1,000 tokens, after ``warmup`` forwards."""
        for _ in range(warmup):
            self._forward(model, autocast_dtype)
        scale = 1000.0 / self.n_tokens
        if self.input_ids.device.type == "cuda":
            pairs = []
            for _ in range(repeats):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                self._forward(model, autocast_dtype)
                end.record()
                pairs.append((start, end))
            torch.cuda.synchronize()
            return [s.elapsed_time(e) / 1000.0 * scale for s, e in pairs]
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            self._forward(model, autocast_dtype)
            samples.append((time.perf_counter() - t0) * scale)
        return samples

    def latency(self, model: torch.nn.Module, **kwargs) -> float:
        """Median of :meth:`latency_samples`: seconds per 1,000 tokens."""
        return statistics.median(self.latency_samples(model, **kwargs))

    @torch.inference_mode()
    def peak_memory(
        self,
        model: torch.nn.Module,
        *,
        autocast_dtype: torch.dtype | None = None,
        cache: bool = True,
    ) -> int:
        """Peak bytes during one forward of the batch, weights included (see module docstring).

        On CPU the count is reused for a model of the same structure when ``cache``.
        """
        device = self.input_ids.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            remember_process_peak(device)  # the reset below would lose the run's peak
            torch.cuda.reset_peak_memory_stats(device)
            logits = self._forward(model, autocast_dtype)
            torch.cuda.synchronize(device)
            del logits
            # Other resident models (inputs, population) are in `base`: count only this
            # model's weights plus what its forward added on top.
            return parameter_bytes(model) + int(torch.cuda.max_memory_allocated(device)) - base
        key = _structure_key(model, autocast_dtype)
        if not cache or key not in self._cpu_peaks:
            tracker = LiveTensorPeak()
            with tracker:
                logits = self._forward(model, autocast_dtype)
            del logits
            self._cpu_peaks[key] = parameter_bytes(model) + tracker.peak
        return self._cpu_peaks[key]


_PROCESS_PEAKS: dict[str, int] = {}


def remember_process_peak(device: torch.device) -> None:
    key = str(device)
    _PROCESS_PEAKS[key] = max(
        _PROCESS_PEAKS.get(key, 0), int(torch.cuda.max_memory_allocated(device))
    )


def process_peak_memory(device: torch.device) -> int:
    """This process's allocator peak on a CUDA device, across :meth:`CostProbe.peak_memory` resets."""
    remember_process_peak(device)
    return _PROCESS_PEAKS[str(device)]


def noise_stats(samples: list[float]) -> dict[str, float]:
    """Repeat noise of a measurement: median, relative std and relative IQR (both / median)."""
    med = statistics.median(samples)
    if len(samples) < 2 or med == 0:
        return {"median": med, "rel_std": 0.0, "rel_iqr": 0.0, "n": float(len(samples))}
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return {
        "median": med,
        "rel_std": statistics.stdev(samples) / med,
        "rel_iqr": (q3 - q1) / med,
        "n": float(len(samples)),
    }


def shared_cost(measurements: Sequence[Measurements]) -> dict[str, Any]:
    """The cost every candidate of one architecture shares, from its inputs' measurements.

    Every merge of the inputs has their architecture (same tensors, shapes and
    dtypes), so its latency and peak memory equal the inputs' up to timing
    noise. Measuring them per candidate would let noise pick winners and make
    runs irreproducible; instead the inputs are measured once and every
    candidate gets the harmonic means of their time and memory
    (``1/shared = mean(1/x_i)``), so with ``normalize: inputs`` the shared
    speed and memory terms are 1.0 (memory: to a byte). The repeat noise and
    the per-input peaks come along for the report.
    """
    n = len(measurements)
    samples = [t for m in measurements for t in m.time_samples]
    return {
        "time_per_1k_tokens": n / sum(1 / m.time_per_1k_tokens for m in measurements),
        "peak_memory_bytes": round(n / sum(1 / m.peak_memory_bytes for m in measurements)),
        "time_noise": noise_stats(samples),
        "peak_memory_per_input": [m.peak_memory_bytes for m in measurements],
    }


def apply_shared_cost(measurement: Measurements, shared: Mapping[str, Any]) -> Measurements:
    """Give ``measurement`` the shared time and memory of :func:`shared_cost` (in place; returned)."""
    measurement.time_per_1k_tokens = shared["time_per_1k_tokens"]
    measurement.peak_memory_bytes = shared["peak_memory_bytes"]
    return measurement
