#!/usr/bin/env bash
# Issue 7's CPU benchmark on real CIFAR-10: for each base method (DM, IDC, DSA by default),
#   1. PDD + method with recipes/configs/cifar10_<method>_cpu.yaml (5 stages x 2 IPC, 100 iterations each),
#   2. the method alone at the same total IPC and the same number of image updates (1 stage x 10 IPC,
#      500 iterations),
# then 3 seeds of ConvNet-D3 on each, trained with the method's recipe and tested on the full 10k test
# set; the PDD evaluation also trains on random real images at the same storage per stage
# (--baseline random). Wall time and peak memory of every step come from /usr/bin/time -v.
# Usage: bash benchmarks/cifar10_methods_cpu.sh [CIFAR10_DIR] [OUT_DIR] [METHOD ...]
# Re-running resumes: distillation runs continue from their checkpoints, finished evaluations (an
# existing JSON) are skipped, logs are appended to.
# FAST=1 trains every network (validation, transitions, evaluation seeds) in bf16 through
# torch.compile (precision=bf16 compile=true; about 3x on a CPU with AVX-512 BF16, accuracy within
# noise: docs/RESULTS.md, issue 9); a run keeps the setting it started with.
set -euo pipefail
data=${1:-../shared/datasets/cifar10}
out=${2:-runs/bench/methods_cpu}
shift $(( $# > 2 ? 2 : $# ))
methods=${*:-dm idc dsa}
mkdir -p "$out"
export HF_HUB_OFFLINE=1
launch="accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no -m pdd_hub.cli"
eval="python -m pdd_hub.cli eval"
fast_distill="" fast_eval=""
if [ "${FAST:-0}" = 1 ]; then fast_distill="precision=bf16 compile=true" fast_eval="--precision bf16 --compile"; fi
git rev-parse HEAD >> "$out/commits.txt" 2>/dev/null || true

for m in $methods; do
    /usr/bin/time -v $launch distill --config "recipes/configs/cifar10_${m}_cpu.yaml" dataset="$data" \
        output_dir="$out/pdd_$m" progress=false $fast_distill 2>&1 | tee -a "$out/pdd_$m.log"
    /usr/bin/time -v $launch distill --config "recipes/configs/cifar10_${m}_cpu.yaml" dataset="$data" \
        output_dir="$out/single_$m" num_stages=1 ipc_per_stage=10 iterations=500 progress=false \
        $fast_distill 2>&1 | tee -a "$out/single_$m.log"
    [ -f "$out/eval_pdd_$m.json" ] || /usr/bin/time -v $eval "$out/pdd_$m/dataset" --real "$data" \
        --model convnet_d3 --seeds 3 --baseline random $fast_eval --output "$out/eval_pdd_$m.json" 2>&1 | tee -a "$out/eval_pdd_$m.log"
    [ -f "$out/eval_single_$m.json" ] || /usr/bin/time -v $eval "$out/single_$m/dataset" --real "$data" \
        --model convnet_d3 --seeds 3 $fast_eval --output "$out/eval_single_$m.json" 2>&1 | tee -a "$out/eval_single_$m.log"
done
