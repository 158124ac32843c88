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


def device_problem(name: str) -> str | None:
    """Why ``name`` cannot be used on this machine (one line), or None when it can."""
    if name == "auto":
        return None
    try:
        dev = torch.device(name)
    except RuntimeError:
        return f"{name!r} is not a torch device (auto, cpu, cuda, cuda:N)"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            built = (
                "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            )
            return f"{name!r} but torch ({torch.__version__}, {built}) sees no CUDA device"
        count = torch.cuda.device_count()
        if (dev.index or 0) >= count:
            return f"{name!r} but this machine has {count} CUDA device(s): cuda:0..cuda:{count - 1}"
    elif dev.type in ("mps", "xpu"):
        backend = torch.backends.mps if dev.type == "mps" else getattr(torch, "xpu", None)
        if backend is None or not backend.is_available():
            return f"{name!r} but torch ({torch.__version__}) sees no {dev.type} device"
    return None


#: ``device.storage`` names -> torch dtypes.
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def storage_dtype(storage: str, model_config: Any) -> torch.dtype:
    """The dtype models are held in: ``storage``, or for ``auto`` the inputs' own.

    The inputs' own is their config's ``dtype`` (``torch_dtype`` before
    transformers 5), which ``save_pretrained`` records; fp32 when unset, as
    ``from_pretrained`` would load them without a ``dtype`` argument.
    """
    if storage != "auto":
        return STORAGE_DTYPES[storage]
    own = getattr(model_config, "dtype", None) or getattr(model_config, "torch_dtype", None)
    if isinstance(own, str):
        own = getattr(torch, own.removeprefix("torch."), None)
    if isinstance(own, torch.dtype) and own.is_floating_point:
        return own
    return torch.float32


def device_report(device: torch.device, storage: torch.dtype | None = None) -> dict[str, Any]:
    """Which device ran the run, the dtype models were held in, and its allocator peak."""
    report: dict[str, Any] = {"type": device.type, "torch": torch.__version__}
    if storage is not None:
        report["storage"] = str(storage).removeprefix("torch.")
    if device.type == "cuda":
        from evomerge.fitness.cost import process_peak_memory

        report["name"] = torch.cuda.get_device_name(device)
        report["peak_memory_allocated_bytes"] = process_peak_memory(device)
    return report
