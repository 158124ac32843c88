"""Keep lm-eval, datasets and the Hub client off the network.

Fitness evaluation reads local JSONL files only. The environment variables are
what ``datasets`` and ``huggingface_hub`` read at import time; because
``evomerge`` itself imports transformers (and so ``huggingface_hub``) first,
the already-imported modules' flags are also set, so offline mode holds
whatever was imported before.
"""

from __future__ import annotations

import os
import sys

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_UPDATE_DOWNLOAD_COUNTS": "0",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def ensure_offline() -> None:
    """Set the offline variables and flags; call before importing datasets or lm_eval."""
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        hub.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
        hub.HF_HUB_DISABLE_TELEMETRY = True  # type: ignore[attr-defined]
    ds = sys.modules.get("datasets.config")
    if ds is not None:
        ds.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
        ds.HF_DATASETS_OFFLINE = True  # type: ignore[attr-defined]
        ds.HF_UPDATE_DOWNLOAD_COUNTS = False  # type: ignore[attr-defined]
