#!/usr/bin/env bash
# Creates .venv (once) and installs evomerge with its test tools into it.
# torch is pinned first: an unpinned torch would pull a multi-GB CUDA build on Linux.
# Override with EVOMERGE_TORCH_SPEC (e.g. "torch" on a GPU machine with its own index).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.evomerge-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q "${EVOMERGE_TORCH_SPEC:-torch==2.13.0}"
  .venv/bin/python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
