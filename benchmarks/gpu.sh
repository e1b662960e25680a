#!/usr/bin/env bash
# The GPU run of issue 22, on the device machine, from the repository root (benchmarks/README.md
# gives the device tool's exact call): installs the carried wheels, runs benchmarks/gpu.py within its
# budget (450 s unless --budget says otherwise), then writes the docs/RESULTS.md section.
#
#   bash benchmarks/gpu.sh OUT_DIR [gpu.py options, e.g. --only pipeline --budget 270]
#
# Needs .gpu/ from `bash benchmarks/gpu_prepare.sh`, carried along. Writes OUT_DIR/gpu.json (rewritten
# after every item), OUT_DIR/gpu.md (the section) and OUT_DIR/gpu.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash benchmarks/gpu.sh OUT_DIR [gpu.py options]}
shift
if [ ! -d .gpu/ProgressiveDD ] || [ ! -d .gpu/cifar10 ] || [ ! -d .gpu/wheels ]; then
    echo "error: .gpu/ is incomplete: run bash benchmarks/gpu_prepare.sh before the device call, and carry .gpu" >&2
    exit 2
fi
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpu/wheels/*.whl || exit 1
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 HF_HOME=/tmp/hf
nvidia-smi 2>&1 | tee "$OUT/gpu.log"
# every item needs datasets (and the reference kornia): stop here, not after minutes, if they fail
if ! python3 -c "import datasets, kornia, pdd_hub" >>"$OUT/gpu.log" 2>&1; then
    python3 -m pip list 2>/dev/null | grep -i -E "^(torch|pyarrow|fsspec|huggingface.hub|pandas|numpy) " >>"$OUT/gpu.log"
    tail -20 "$OUT/gpu.log"
    exit 3
fi
python3 benchmarks/gpu.py --data .gpu/cifar10 --reference .gpu/ProgressiveDD --output "$OUT/gpu.json" \
    --work /tmp/gpu_work "$@" 2>&1 | tee -a "$OUT/gpu.log"
python3 benchmarks/gpu_report.py "$OUT/gpu.json" --output "$OUT/gpu.md"
