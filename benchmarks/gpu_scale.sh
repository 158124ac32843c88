#!/usr/bin/env bash
# Issue 13 item 5 on a lent GPU, as one device call that fits the 10-minute limit:
# a ~1B random llama family (hidden 2048, 16 layers, GQA; bf16 storage) through
# `recipe run` (cmaes, 2 generations of 4), peak host and GPU memory, seconds per
# candidate, checkpoint bytes, and the same candidate through mergekit + lm-eval.
# Nothing here was run yet (no GPU lent while it was written); run from the repo root:
#
#   (here) put wheels of what the GPU image lacks (mergekit, lm-eval, wandb, pydantic,
#   datasets and their dependencies) in .whl: pip download --only-binary=:all: -d .whl ...
#   EVOMERGE_CACHE=$PWD/.evcache evomerge data prepare   # here: the demo data, carried along
#   device run, carry [".whl", ".evcache"], timeout 590:  bash benchmarks/gpu_scale.sh
#   a second call, the inputs in host memory (device.inputs: host; the row to read
#   against the first is peak_device_bytes):          bash benchmarks/gpu_scale.sh host
#
# The GPU machine has no network: .whl holds the wheels its image lacks, .evcache the
# prepared data (the tokenizer is trained from it). One JSON line per size lands in
# $OUT/scale.jsonl; stderr in $OUT/scale-*.err. 7-8B is left out on purpose: four random
# 8B models are ~64 GB of safetensors in bf16, the machine's whole disk. What an 8B run
# needs on an 80 GB GPU follows from the two 1B rows: with the inputs on the device the
# peak is ~ inputs + 2 candidates + one eval batch, with `host` ~ 2 candidates + one
# eval batch (docs/recipes.md "Where the inputs live").
set -u
INPUTS=${1:-auto}
OUT=${OUT:-/tmp/evomerge-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export EVOMERGE_CACHE=$PWD/.evcache WANDB_MODE=disabled
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt"
# 1B: ~1.1 B parameters; building the family (CPU) and mergekit's disk-to-disk merge are
# most of the wall time, the run itself a few minutes at most.
timeout 540 python3 benchmarks/scale_bench.py --layers 16 --hidden 2048 --vocab 8192 \
  --device cuda --storage bf16 --generations 2 --popsize 4 --items 16 --inputs "$INPUTS" \
  >> "$OUT/scale.jsonl" 2> "$OUT/scale-1b-$INPUTS.err"
echo "exit $?" >> "$OUT/scale-1b-$INPUTS.err"
tail -n 3 "$OUT/scale-1b-$INPUTS.err"
cat "$OUT/scale.jsonl"
