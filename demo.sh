#!/usr/bin/env bash
# The offline demo, both problems, on synthetic data; makes .venv from requirements.txt on first
# use (see venv.sh):
#   Problem 1: fine-tune the tiny ViT, predict held-out images with hw3_1.sh, print the accuracy;
#   Problem 2: train the small captioner, caption held-out scenes with hw3_2.sh, print captions.
#   bash demo.sh [OUT_DIR] [--seed N]   (default demo_out; p1/demo.py and p2/demo.py take more)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out=demo_out
seed=()
usage="usage: bash demo.sh [OUT_DIR] [--seed N]"
while [ "$#" -gt 0 ]; do
    case "$1" in
        --seed) [ "$#" -ge 2 ] || { echo "$usage" >&2; exit 2; }
                seed=(--seed "$2"); shift 2 ;;
        -h|--help) echo "$usage"; exit 0 ;;
        -*) echo "demo.sh: unknown option $1 ($usage)" >&2; exit 2 ;;
        *) out="$1"; shift ;;
    esac
done
. "$here/venv.sh"
python="$(hw3_venv)"  # after the arguments: a wrong one answers before a first install
start=$SECONDS
"$python" "$here/p1/demo.py" --out "$out" "${seed[@]}"
"$python" "$here/p2/demo.py" --out "$out" "${seed[@]}"
echo "demo done in $((SECONDS - start)) s"
