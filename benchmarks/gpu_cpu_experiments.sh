#!/usr/bin/env bash
# CPU side of benchmarks/gpu_session.sh (started by its family step, with setsid): on the
# tiny family carried in .evcache/phase1-tiny, the quickstart recipe with sigma_mode
# relative vs absolute x seeds 0-2 (docs/design.md "Mutation": the default is the mode with
# the better held-out improvement), and the accelerate 2-process (gloo) run vs 1 process.
# One thread per process, no GPU; logs and outputs in /tmp/exp (each log ends "exit N").
set -u
export OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=
EV="python3 -m evomerge"
exp=/tmp/exp
fam=$PWD/.evcache/phase1-tiny
mkdir -p $exp
recipe_for() { # the quickstart recipe on the carried family, CPU, no W&B, plus extra sed rules
  sed -e "s#^  phase1:.*#  models: [$fam/model_1, $fam/model_2, $fam/model_3]\n  base_model: $fam/base#" \
    -e "s#^device:.*#device: {device: cpu, precision: fp32}#" \
    -e "s#^tracking:.*#tracking: {wandb_mode: disabled, project: evomerge}#" \
    "$@" recipes/quickstart.yaml
}
run() { # NAME ARGS...: one run, its log ending with its exit code
  local name=$1
  shift
  (timeout 900 "$@" --out $exp/$name --quiet >$exp/$name.log 2>&1
    echo "exit $?" >>$exp/$name.log) &
}
for mode in relative absolute; do
  for seed in 0 1 2; do
    recipe_for -e "s#sigma_mode: relative#sigma_mode: $mode#" -e "s#^  seed: 0#  seed: $seed#" \
      >$exp/$mode-$seed.yaml
    run $mode-$seed $EV recipe run $exp/$mode-$seed.yaml
  done
done
# accelerate: 2 CPU processes (gloo) vs 1, same 2-generation recipe, same champion expected
recipe_for -e "s#^  generations:.*#  generations: 2#" -e "s#^  max_items:.*#  max_items: 8#" \
  -e "s#^  report_max_items:.*#  report_max_items: 16#" >$exp/acc.yaml
run acc1 $EV recipe run $exp/acc.yaml
run acc2 python3 -m accelerate.commands.launch --num_processes 2 --num_machines 1 --cpu \
  --mixed_precision no --dynamo_backend no -m evomerge recipe run $exp/acc.yaml
wait
