#!/usr/bin/env bash
# Every GPU measurement of the project, in one go (under 6 minutes on one H100):
#   bash bench/gpu.sh [OUT_DIR]
# The GPU machine's Python already has torch, torchvision, timm and tokenizers. For the
# pytorch-pretrained-vit column, put its wheel in .whl/ first (from the repository root):
#   python3 -m pip download --no-deps -d .whl pytorch-pretrained-vit==0.0.7
# Each table is printed and also saved under OUT_DIR (default bench/out) for bench/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/hw3_site .whl/*.whl \
        && export PYTHONPATH="/tmp/hw3_site${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
status=0
run() {  # run NAME SECONDS COMMAND...: one measurement, bounded, its table kept
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" "$@" 2> >(grep -v "it/s" >&2) | tee "$out/$name.md" || status=1
}
run p1_speed 150 python3 bench/p1_speed.py --device cuda
run p2_speed 150 python3 bench/p2_speed.py --device cuda
exit "$status"
