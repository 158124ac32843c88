"""Which device a run uses: the one definition of "auto" (accelerate's device for this process)."""

from __future__ import annotations

from typing import Any

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``device``, or accelerate's device for this process when it is ``"auto"`` or None.

    A bare ``cuda`` becomes ``cuda:N`` (the current device), so it compares
    equal to the device of the parameters placed on it.
    """
    if device is None or device == "auto":
        from accelerate import PartialState

        device = PartialState().device
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def device_report(device: torch.device) -> dict[str, Any]:
    """Which device ran the run and its allocator peak (the < 6 GB budget is per GPU)."""
    report: dict[str, Any] = {"type": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        from evomerge.fitness.cost import process_peak_memory

        report["name"] = torch.cuda.get_device_name(device)
        report["peak_memory_allocated_bytes"] = process_peak_memory(device)
    return report
