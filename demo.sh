#!/usr/bin/env bash
# The offline demo, both problems, on synthetic data (about 7 minutes on 2 CPU cores):
#   Problem 1: fine-tune the tiny ViT, predict held-out images with hw3_1.sh, print the accuracy;
#   Problem 2: train the small captioner, caption held-out scenes with hw3_2.sh, print captions.
#   bash demo.sh [OUT_DIR]      (default demo_out; p1/demo.py and p2/demo.py take more options)
set -euo pipefail
here="$(dirname "$0")"
out="${1:-demo_out}"
python3 "$here/p1/demo.py" --out "$out"
python3 "$here/p2/demo.py" --out "$out"
