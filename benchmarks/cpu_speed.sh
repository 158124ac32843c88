#!/usr/bin/env bash
# Issue 14 item 5, CPU side, one command: per-candidate fitness vs lm_eval.simple_evaluate
# (TRM x Titans-MAG tiny and a tiny Llama, each with and without shared contexts)
# and one combo merge vs mergekit run_merge, side by side, one thread each. ~6 minutes on
# 2 cores; run it alone (a second job on the cores slows both several-fold).
#
#   bash benchmarks/cpu_speed.sh            # from the repo root, in the project's venv
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
py=${PYTHON:-python}
summary() { grep -E "^(machine|harness build|fast harness, metrics|lm_eval|speed-up|same scores)" || true; }
echo "## fitness per candidate (12 docs per task, 6 tasks)"
for args in "--model trm-tiny" "--model trm-tiny --shared-contexts on" \
  "--model llama --shared-contexts off" "--model llama"; do
  echo "### $args"
  $py benchmarks/eval_bench.py $args --items 12 --candidates 10 --lm-eval-candidates 3 \
    --threads 1 --noise-repeats 2 2>/dev/null | summary
done
echo "## one combo merge (phase1-25m-sized inputs)"
$py benchmarks/merge_bench.py --combos 011 001 --repeats 3 --threads 1 2>/dev/null | tail -6
