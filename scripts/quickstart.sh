#!/usr/bin/env bash
# The main job on the CPU default: build the tiny Phase-1 demo family end to end
# (data, tokenizer, shared base, three specialists) into runs/phase1-tiny.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_UPDATE_DOWNLOAD_COUNTS=0 WANDB_MODE=offline
.venv/bin/evomerge phase1 make --preset tiny --out runs/phase1-tiny "$@"
