#!/usr/bin/env bash
# Every GPU measurement of the project in one go, under 10 minutes (a lent GPU's session allows
# one command of at most 10 minutes; this one ends within 580 s):
#   bash bench/gpu.sh [OUT_DIR]
# 1. bench/jobs.py: whole jobs as a user runs them (a 10-epoch ViT-B/16 fine-tune on a generated
#    pets-shaped set, hw3_1.sh on 2,200 JPEGs, hw3_2.sh on 100 photos with figures; the training
#    loader alone, as the fine-tune built it and with every core but one augmenting, from RAM
#    or decoding every epoch); these also run the bf16 training, inference and figure paths that
#    CI (CPU only) never does, which the offline demo's CUDA run used to check (dropped to fit
#    the time);
# 2. bench/p2_speed.py: the CUDA graphs' captions and maps against the eager path (fp32, bf16),
#    and the eager path's default attention kernels against torch's math kernel; then caption
#    decoding against CATR's loop, one decoder step and the cost of its end test (which sets
#    p2.decode.ENDED_CHECK_EVERY), the encoder at batch 1;
# 3. bench/p1_speed.py --variants: ViT-B/16 inference and training step, with torch.compile, the
#    fused optimizer step and a doubled batch.
# Each step is bounded by a timeout; a step that fails or runs out leaves the others' results,
# and within bench/jobs.py and bench/p1_speed.py a job or variant that fails is tabled as such,
# the rest measured. p2_speed, if it fails, runs again without cuDNN's attention (below).
# Results go to OUT_DIR (default bench/out): the printed tables (*.md), each step's stderr
# without progress bars (*.err: the reason of a failure) and the JSON files to copy
# into bench/results/; RESULTS.md then marks a table for each (kinds jobs, jobs_loaders,
# p2_speed, p2_decoding_parts, p1_speed: bench/tables.py) and python -m bench.tables fills them.
# The GPU machine's Python already has torch, torchvision, timm, tokenizers, tqdm, matplotlib
# and scikit-image. For p1_speed's pytorch-pretrained-vit row, put its wheel in .whl/ first (from
# the repository root):
#   python3 -m pip wheel --no-deps -w .whl pytorch-pretrained-vit==0.0.7   (PyPI has only its sdist)
set -uo pipefail
if [ "$#" -gt 1 ] || [[ "${1:-}" == -* ]]; then
    echo "usage: bash bench/gpu.sh [OUT_DIR]   (default bench/out; needs a CUDA GPU)" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
. ./venv.sh  # the interpreter, as hw3_1.sh finds it: $PYTHON, else .venv, else python3
PYTHON="$(hw3_python)"
export PYTHONUNBUFFERED=1 PYTHON
if ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    echo "error: $PYTHON has no torch that sees a CUDA GPU; run this on a GPU machine" \
         "(PYTHON=... names another interpreter)" >&2
    exit 2
fi
out="${1:-bench/out}"
mkdir -p "$out" || exit 2
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --target /tmp/hw3_site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/hw3_site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
# DataLoader workers pass batches through /dev/shm (about 2 GB at 15 workers): a container's
# 64 MB default would kill them, and this line would say why
# (the loaders fit their workers to /dev/shm; torch.compile's Triton builds its launchers as
# Python extensions, with a C compiler and Python.h)
{ nproc; df -h /dev/shm | tail -n 1; "$PYTHON" -c "import torch; print(torch.__version__)"
  command -v gcc cc clang || echo "no C compiler"
  "$PYTHON" -c "import os, sysconfig; h = os.path.join(sysconfig.get_paths()['include'], 'Python.h')
print(h if os.path.exists(h) else 'no Python.h: torch.compile cannot build Triton launchers')"
} | tee -a "$out/gpu.txt"
status=0
run() {  # run NAME SECONDS COMMAND...: one measurement, bounded, its table kept; its status
    local name=$1 limit=$2 rc
    shift 2
    echo "== $name"
    # progress bars end their updates in \r, not \n: split them, so that dropping the bars
    # keeps a failure's line printed after one; stderr is kept in NAME.err too (a traceback
    # beyond the last screenful would be lost), line by line (a killed step loses none)
    # -k: a step that a TERM does not end (a fine-tune saves its checkpoint first) is killed
    timeout -k 10 "$limit" "$@" \
        2> >(sed -u 's/\r/\n/g' | grep --line-buffered -v "it/s" | tee "$out/$name.err" >&2) \
        | tee "$out/$name.md"
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || status=1
    return "$rc"
}
# jobs ends by the script's 285th second: the time the lines above took (torch imported twice,
# on a fresh machine) comes off its 270 s, not off the steps after it
run jobs $((285 - SECONDS)) "$PYTHON" -m bench.jobs --device cuda --out "$out/jobs_cuda.json"
started=$SECONDS
if ! run p2_speed 120 "$PYTHON" -m bench.p2_speed --device cuda --out "$out/p2_speed_cuda.json"; then
    # CATR's masked attention has never run on cuDNN's attention, which torch may pick first on
    # Hopper: the likeliest CUDA-only failure, so once more without it, in the time left (the
    # script's status stays 1: the default path failed)
    left=$((120 - (SECONDS - started)))
    [ "$left" -lt 30 ] || TORCH_CUDNN_SDPA_DEPRIORITIZED=1 run p2_speed_without_cudnn_attention \
        "$left" "$PYTHON" -m bench.p2_speed --device cuda --out "$out/p2_speed_without_cudnn_cuda.json"
fi
# the time the steps before left, at least 160 s: its torch.compile row compiles twice (inference,
# then the training step), 40 to 90 s each on a fresh machine; the whole script stays under 580 s
left=$((575 - SECONDS))
[ "$left" -ge 160 ] || left=160
run p1_speed "$left" "$PYTHON" -m bench.p1_speed --device cuda --variants \
    --out "$out/p1_speed_cuda.json"
exit "$status"
