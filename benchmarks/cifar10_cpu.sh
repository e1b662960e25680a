#!/usr/bin/env bash
# Issue 3's CPU benchmark on real CIFAR-10 (about 2-3 hours on 2 cores, all steps):
#   1. PDD + MTT with recipes/configs/cifar10_cpu.yaml (5 stages x 2 IPC),
#   2. single-stage MTT at the same total IPC (1 stage x 10 IPC) and the same number of student
#      image-steps (100 iterations of 100-image batches = 5 x 100 iterations of 20-image batches),
#   3. random real images at the same IPC (5 x 2, disjoint),
# then 3 seeds of ConvNet-D3 on each, tested on the full 10k test set, 300 epochs per stage.
# Usage: bash benchmarks/cifar10_cpu.sh [CIFAR10_DIR] [OUT_DIR]
# Re-running resumes: the distillation runs continue from their checkpoints, finished evaluations
# (an existing JSON) are skipped, and logs are appended to.
set -euo pipefail
data=${1:-../shared/datasets/cifar10}
out=${2:-runs/bench/cifar10_cpu}
mkdir -p "$out"
export HF_HUB_OFFLINE=1
launch="accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no"

/usr/bin/time -v $launch recipes/pdd_mtt.py --config recipes/configs/cifar10_cpu.yaml \
    dataset="$data" output_dir="$out/pdd" progress=false 2>&1 | tee -a "$out/pdd.log"

# single-stage MTT: the same experts (same data, seed and expert settings), copied rather than retrained
mkdir -p "$out/mtt/experts" "$out/mtt/start_states"
cp -rn "$out/pdd/experts/stage_1" "$out/mtt/experts/"
cp -n "$out/pdd/start_states/stage_1.safetensors" "$out/mtt/start_states/"
/usr/bin/time -v $launch recipes/pdd_mtt.py --config recipes/configs/cifar10_cpu.yaml \
    dataset="$data" output_dir="$out/mtt" num_stages=1 ipc_per_stage=10 iterations=100 progress=false \
    2>&1 | tee -a "$out/mtt.log"

[ -f "$out/random/pdd_schedule.json" ] || pdd-hub select --real "$data" --method random --num-stages 5 --ipc 2 --zca --no-normalize --seed 0 \
    --epochs 300 --output "$out/random"

for name in pdd mtt; do
    [ -f "$out/eval_$name.json" ] || /usr/bin/time -v pdd-hub eval "$out/$name/dataset" --real "$data" --model convnet_d3 --seeds 3 \
        --output "$out/eval_$name.json" 2>&1 | tee -a "$out/eval_$name.log"
done
[ -f "$out/eval_random.json" ] || /usr/bin/time -v pdd-hub eval "$out/random" --real "$data" --model convnet_d3 --seeds 3 \
    --output "$out/eval_random.json" 2>&1 | tee -a "$out/eval_random.log"
[ -f "$out/eval_random_union.json" ] || /usr/bin/time -v pdd-hub eval "$out/random" --real "$data" --model convnet_d3 --seeds 3 --mode union \
    --output "$out/eval_random_union.json" 2>&1 | tee -a "$out/eval_random_union.log"
