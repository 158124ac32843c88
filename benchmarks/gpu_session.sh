#!/usr/bin/env bash
# One lent-GPU session, in two steps that share a warm machine (the device tool's
# `run`, repo root as the working dir, $OUT collected afterwards):
#
#   bash benchmarks/gpu_session.sh family   # install, make the phase1-25m family on the GPU;
#                                           # meanwhile, on the CPU cores, the sigma_mode
#                                           # comparison and the 2-process accelerate check
#   bash benchmarks/gpu_session.sh evolve   # recipes/phase2-evomerge.yaml on the GPU (resumes)
#
# Measured on an H200: the family step is ~8 min of training (0.86 s per 64 x 256 step,
# launch-bound), more than one 10-minute call with the rest; `phase1 make` keeps each
# finished model, so a second `family` call continues where the first stopped. For a
# short lease, benchmarks/gpu_probe.py runs the same path on a few-step family instead.
# Needs, carried with the tree: .whl (wheels of the dependencies the GPU image lacks, fetched
# beforehand with `pip download --only-binary=:all: -d .whl ...`) and
# .evcache (data/v1 of a prepared data cache, and phase1-tiny/: the tiny family), because
# the GPU machine has no network. Everything it measures lands in $OUT (logs, results-*.tgz).
set -u
step=${1:?usage: gpu_session.sh family|evolve}
OUT=${OUT:-/tmp/evomerge-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export EVOMERGE_CACHE=$PWD/.evcache WANDB_SILENT=true
if [ ! -d /tmp/site/mergekit ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site
# (a plain `import evomerge` succeeds from the repo root: ask for the installed distribution)
python3 -c "import importlib.metadata as m; m.distribution('evomerge')" 2>/dev/null ||
  python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null || exit 1
EV="python3 -m evomerge"

# Wait (up to $1 s) for the CPU experiments started by the family step.
wait_experiments() {
  local deadline=$(($(date +%s) + $1))
  while [ "$(date +%s)" -lt $deadline ]; do
    [ "$(grep -l '^exit' /tmp/exp/*.log 2>/dev/null | wc -l)" -ge 8 ] && return 0
    sleep 5
  done
  echo "CPU experiments still running after $1 s" | tee -a "$OUT/experiments.txt"
}

collect() {
  (cd /tmp && tar czf "$OUT/results-$step.tgz" --exclude='*.safetensors' --exclude='*.bin' \
    --exclude='wandb' exp runs-evolve 2>/dev/null)
}

case $step in
family)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
  nproc >>"$OUT/gpu.txt"
  # on the CPU cores, in their own session so they outlive this step (the evolve step
  # collects them): one thread each, leaving cores free for the GPU job's kernel launches
  setsid nohup bash benchmarks/gpu_cpu_experiments.sh >/tmp/exp-driver.log 2>&1 < /dev/null &
  start=$(date +%s)
  timeout "${PHASE1_TIMEOUT:-300}" $EV phase1 make --preset phase1-25m --out runs/phase1-25m 2>&1 |
    tee "$OUT/phase1.log"
  echo "phase1 wall $(($(date +%s) - start)) s" | tee -a "$OUT/phase1.log"
  cp runs/phase1-25m/phase1.json "$OUT/" 2>/dev/null
  ;;
evolve)
  resume=""
  [ -f runs/phase2-evomerge/.checkpoint/state.json ] && resume="--resume"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 >"$OUT/gpumem.csv" &
  poll=$!
  start=$(date +%s)
  timeout "${EVOLVE_TIMEOUT:-480}" $EV recipe run recipes/phase2-evomerge.yaml $resume \
    --quiet 2>&1 | tee "$OUT/evolve.log"
  echo "recipe exit ${PIPESTATUS[0]} wall $(($(date +%s) - start)) s" | tee -a "$OUT/evolve.log"
  kill $poll
  wait_experiments "${EXPERIMENT_WAIT:-60}"
  echo "peak GPU memory used (nvidia-smi, MiB): $(sort -n "$OUT/gpumem.csv" | tail -1)" |
    tee -a "$OUT/evolve.log"
  mkdir -p /tmp/runs-evolve && cp -r runs/phase2-evomerge/*.json runs/phase2-evomerge/*.jsonl \
    runs/phase2-evomerge/*.png /tmp/runs-evolve/ 2>/dev/null
  collect
  ;;
*)
  echo "unknown step $step" >&2
  exit 2
  ;;
esac
