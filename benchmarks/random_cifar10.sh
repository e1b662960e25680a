#!/usr/bin/env bash
# Issue 2's benchmark: ConvNet-D3 and ResNet-18 (CIFAR stem) trained progressively on random real
# CIFAR-10 images, 5 stages x 2 images per class (ZCA, as the MTT family preprocesses).
# Usage: bash benchmarks/random_cifar10.sh [CIFAR10_DIR] [OUT_DIR]
set -euo pipefail
data=${1:-../shared/datasets/cifar10}
out=${2:-runs/bench}
mkdir -p "$out"
export HF_HUB_OFFLINE=1
pdd-hub select --real "$data" --method random --num-stages 5 --ipc 2 --zca --no-normalize --seed 0 \
    --output "$out/cifar10-random-5x2"
/usr/bin/time -v pdd-hub eval "$out/cifar10-random-5x2" --real "$data" --model convnet_d3 --seeds 3 \
    --output "$out/random5x2_convnet.json" 2>&1 | tee "$out/random5x2_convnet.log"
/usr/bin/time -v pdd-hub eval "$out/cifar10-random-5x2" --real "$data" --model resnet18_cifar --seeds 3 \
    --epochs-per-stage 200 --output "$out/random5x2_resnet18.json" 2>&1 | tee "$out/random5x2_resnet18.log"
