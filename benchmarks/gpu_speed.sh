#!/usr/bin/env bash
# Issue 14 on a lent GPU, as one device call that fits the 10-minute limit (prepared in
# session 7, not run yet: no GPU was lent). From the repo root, with .whl (wheels of what
# the GPU image lacks: mergekit, lm-eval, wandb, pydantic, datasets and their dependencies)
# and .evcache (the demo data: `EVOMERGE_CACHE=$PWD/.evcache evomerge data prepare` here;
# the GPU machine has no network) carried:
#
#   device run, carry [".whl", ".evcache"], timeout 590:  bash benchmarks/gpu_speed.sh
#
# 1. Per-candidate fitness of a phase1-25m-shaped TRM x Titans-MAG (random weights: the
#    work does not depend on them) on 200 docs x 6 tasks: fitness.batch_tokens 8192 /
#    auto / 131072 / 32768 x shared_contexts off / on (the eval batch sized to the device, and
#    TRM's context cache), scores checked equal; one JSON line each in $OUT/sweep.jsonl.
# 2. benchmarks/gpu_probe.py: a few-step phase1-25m family, then the phase2 recipe for 3
#    generations at 200 docs/task; $OUT/probe/probe.json has the per-generation merge /
#    scoring split and result.json's timing, from which 50 generations extrapolate.
#
# A second call, if the lease has ~5 minutes left (issue 14 item 1, fewer launches):
#
#   device run, same carry, timeout 400:  bash benchmarks/gpu_speed.sh compile
#
# times each block compiled with torch.compile (inductor, and inductor's CUDA graphs)
# against eager at the auto batch, 200 docs x 6 tasks; the warm-up, which compiles, is
# timed apart. On the CPU (tiny, 4 docs) the compile took 110 s (aot_eager) and 267 s
# (inductor) for a 1.32x faster measure: on a GPU it pays only if the measure gains more.
set -u
step=${1:-speed}
case $step in speed | compile) ;; *) echo "usage: gpu_speed.sh [speed|compile]" >&2; exit 2 ;; esac
OUT=${OUT:-/tmp/evomerge-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export WANDB_MODE=offline WANDB_SILENT=true EVOMERGE_CACHE=$PWD/.evcache
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt"
if [ "$step" = compile ]; then
  timeout 360 python3 benchmarks/gpu_fitness_sweep.py --device cuda --items 200 \
    --preset phase1-25m --batch-tokens auto --shared off --repeats 3 \
    --compile off inductor inductor:reduce-overhead > "$OUT/compile.jsonl" 2> "$OUT/compile.err"
  echo "compile exit $?" >> "$OUT/gpu.txt"
  exit 0
fi
timeout 240 python3 benchmarks/gpu_fitness_sweep.py --device cuda --items 200 \
  --preset phase1-25m --batch-tokens 8192 auto 131072 32768 --shared off on --repeats 3 \
  > "$OUT/sweep.jsonl" 2> "$OUT/sweep.err"
echo "sweep exit $?" >> "$OUT/gpu.txt"
timeout 320 python3 benchmarks/gpu_probe.py --out "$OUT/probe" --generations 3 \
  --max-items 200 > "$OUT/probe.log" 2>&1
echo "probe exit $?" >> "$OUT/gpu.txt"
rm -rf "$OUT"/probe/run/champion "$OUT"/probe/family 2>/dev/null
