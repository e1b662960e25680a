#!/usr/bin/env bash
# Gather, here (with network), everything benchmarks/gpu.sh needs on a GPU machine without one, into
# .gpu/ at the repository root (ignored by git; the device tool's `carry` takes it along):
#   .gpu/ProgressiveDD/   the reference code at commit 844fa9a, patched (benchmarks/reference_patch.py)
#   .gpu/wheels/          the packages the GPU image lacks: datasets and its dill/multiprocess, and
#                         kornia 0.7.0 for the reference (later kornia needs the 5 MB kornia_rs)
#   .gpu/cifar10/         CIFAR-10 in Hub layout: hard links to ../shared's files (a copy where links fail)
#
#   bash benchmarks/gpu_prepare.sh REFERENCE [CIFAR10_DIR]
#
# REFERENCE: a checkout of VITA-Group/ProgressiveDD or its bare git directory (the device session's
# `fetch github:VITA-Group/ProgressiveDD` gives /work/.mirror/VITA-Group+ProgressiveDD/repo).
# Ends by printing the size of what a device call sends (the limit is 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
REFERENCE=${1:?usage: bash benchmarks/gpu_prepare.sh REFERENCE [CIFAR10_DIR]}
CIFAR10=${2:-../shared/datasets/cifar10}
COMMIT=844fa9adcdcac78020b51d7b0c340403aaaceee9
PYTHON=${PYTHON:-python3}

rm -rf .gpu/ProgressiveDD && mkdir -p .gpu/ProgressiveDD .gpu/wheels .gpu/cifar10/plain_text
if git --git-dir="$REFERENCE" rev-parse --verify -q "$COMMIT^{commit}" >/dev/null 2>&1; then
    git --git-dir="$REFERENCE" archive "$COMMIT" | tar -x -C .gpu/ProgressiveDD
    echo "$COMMIT" > .gpu/ProgressiveDD/REFERENCE_COMMIT
elif git -C "$REFERENCE" rev-parse --verify -q "$COMMIT^{commit}" >/dev/null 2>&1; then
    git -C "$REFERENCE" archive "$COMMIT" | tar -x -C .gpu/ProgressiveDD
    echo "$COMMIT" > .gpu/ProgressiveDD/REFERENCE_COMMIT
else
    echo "warning: $REFERENCE has no commit $COMMIT; copying its files as they are" >&2
    cp -r "$REFERENCE"/. .gpu/ProgressiveDD/ && rm -rf .gpu/ProgressiveDD/.git
fi
rm -rf .gpu/ProgressiveDD/Figs  # images for its README, 0.5 MB of the 64 MiB a call may send
"$PYTHON" benchmarks/reference_patch.py .gpu/ProgressiveDD

"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/wheels datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 kornia==0.7.0

for f in README.md plain_text/train-00000-of-00001.parquet plain_text/test-00000-of-00001.parquet; do
    [ -e "$CIFAR10/$f" ] || { echo "error: $CIFAR10/$f not found" >&2; exit 2; }
    [ -e ".gpu/cifar10/$f" ] || ln "$CIFAR10/$f" ".gpu/cifar10/$f" 2>/dev/null || cp "$CIFAR10/$f" ".gpu/cifar10/$f"
done

sent=$( (git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) )
carried=$(du -sb .gpu | cut -f1)
echo "ready: .gpu holds $((carried / 1048576)) MiB; with the working tree a device call sends $(((sent + carried) / 1048576)) MiB (limit 64)"
