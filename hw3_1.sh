#!/usr/bin/env bash
# Problem 1: predict every image in folder $1 into the CSV file $2 (header filename,label).
# Checkpoint: $HW3_P1_CKPT, else checkpoints/p1_vit.pt (see hw3_download.sh).
set -euo pipefail
if [ "$#" -ne 2 ]; then
    echo "usage: bash hw3_1.sh IMAGE_DIR OUTPUT.csv" >&2
    exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/venv.sh"  # the interpreter: $PYTHON, else .venv beside this script, else python3
exec "$(hw3_python)" "$here/p1/inference.py" --images "$1" --out "$2"
