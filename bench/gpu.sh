#!/usr/bin/env bash
# Every GPU measurement of the project, and the offline demo on CUDA as the check of the bf16
# training, inference and figure paths that CI (CPU only) never runs; in one go, about 6 minutes:
#   bash bench/gpu.sh [OUT_DIR]
# The GPU machine's Python already has torch, torchvision, timm and tokenizers. For the
# pytorch-pretrained-vit column, put its wheel in .whl/ first (from the repository root):
#   python3 -m pip wheel --no-deps -w .whl pytorch-pretrained-vit==0.0.7   (PyPI has only its sdist)
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
run p1_speed 120 python3 bench/p1_speed.py --device cuda
run p2_speed 120 python3 bench/p2_speed.py --device cuda
# the demo's data and checkpoints stay out of OUT_DIR; its curves and one word-map figure go in
demo=$(mktemp -d) || exit 1
trap 'rm -rf "$demo"' EXIT
run demo_cuda 420 bash demo.sh "$demo"
shopt -s nullglob
word_maps=("$demo"/p2_figures/*.png)
for figure in "$demo/p1_run/curves.png" "$demo/p2_run/curves.png" "${word_maps[@]:0:1}"; do
    cp "$figure" "$out/demo_$(basename "$(dirname "$figure")")_$(basename "$figure")" || status=1
done
exit "$status"
