#!/usr/bin/env bash
# Issue 8's CPU benchmark on real CIFAR-10:
#   1. selection baselines (random, herding, k-center, forgetting, sensitivity) at STAGES stages x IPC
#      images per class (default 1 x 10, the classic coreset setting; 5 x 2 gives staged exports),
#      chosen from 1000 training images per class, features and forgetting scores from SCORING_RUNS
#      ConvNet-D3 scoring networks trained SCORING_EPOCHS epochs on them (default 2 x 10);
#   2. PDD + DM (recipes/configs/cifar10_dm_cpu.yaml) with init=sensitivity, and with
#      real_sampling=importance, beside the plain run of benchmarks/cifar10_methods_cpu.sh;
#   3. PDD + DM with forgetting bands (band width 1 forgetting event) vs on all data;
# then 3 seeds of ConvNet-D3 on each (DSA, LR 0.01, 300 epochs per stage), full 10k test set.
# Usage: bash benchmarks/selection_cpu.sh [CIFAR10_DIR] [OUT_DIR] [PART ...]   (parts: select dm; default both)
# VARIANTS picks the DM variants (default: sensitivity importance bands), e.g. to run them on two cores.
# Re-running resumes (runs continue from checkpoints; finished exports and evaluations are skipped).
set -euo pipefail
data=${1:-../shared/datasets/cifar10}
out=${2:-runs/bench/selection_cpu}
shift $(( $# > 2 ? 2 : $# ))
parts=${*:-select dm}
stages=${STAGES:-1}
ipc=${IPC:-10}
mkdir -p "$out"
export HF_HUB_OFFLINE=1
launch="accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no -m pdd_hub.cli"
eval="python -m pdd_hub.cli eval"
git rev-parse HEAD >> "$out/commits.txt" 2>/dev/null || true

if [[ " $parts " == *" select "* ]]; then
for m in random herding kcenter forgetting sensitivity; do
    params=""
    [ "$m" = sensitivity ] && params="--param clusters=10"
    [ -f "$out/select_$m/pdd_schedule.json" ] || /usr/bin/time -v python -m pdd_hub.cli select --real "$data" \
        --method "$m" $params --num-stages "$stages" --ipc "$ipc" --train-per-class 1000 \
        --scoring runs="${SCORING_RUNS:-2}" --scoring epochs="${SCORING_EPOCHS:-10}" \
        --epochs 300 --seed 0 --output "$out/select_$m" 2>&1 | tee -a "$out/select_$m.log"
    [ -f "$out/eval_select_$m.json" ] || /usr/bin/time -v $eval "$out/select_$m" --real "$data" --model convnet_d3 \
        --seeds 3 --output "$out/eval_select_$m.json" 2>&1 | tee -a "$out/eval_select_$m.log"
done
fi
[[ " $parts " == *" dm "* ]] || exit 0

# scoring networks train on the whole training set here (about 5.5 min per epoch on one thread):
# 2 epochs give the features of the sensitivity sampling, 5 epochs the forgetting events of the bands
declare -A variants=(
    [sensitivity]="init=sensitivity sensitivity.clusters=10 scoring.runs=1 scoring.epochs=2"
    [importance]="real_sampling=importance importance.refresh_every=50"
    [bands]="forgetting.mode=band forgetting.band_width=1 scoring.runs=1 scoring.epochs=5"
)
for v in ${VARIANTS:-sensitivity importance bands}; do
    /usr/bin/time -v $launch distill --config recipes/configs/cifar10_dm_cpu.yaml dataset="$data" \
        output_dir="$out/dm_$v" progress=false ${variants[$v]} 2>&1 | tee -a "$out/dm_$v.log"
    [ -f "$out/eval_dm_$v.json" ] || /usr/bin/time -v $eval "$out/dm_$v/dataset" --real "$data" --model convnet_d3 \
        --seeds 3 --output "$out/eval_dm_$v.json" 2>&1 | tee -a "$out/eval_dm_$v.log"
done
