#!/usr/bin/env bash
# Problem 2: caption every image in $1 and save one attention figure per image as $2/<stem>.png.
#   bash hw3_2.sh IMAGE_DIR OUTPUT_DIR
# The CATR checkpoint is checkpoints/catr_v3.pth beside this script, or $HW3_P2_CKPT.
set -euo pipefail
if [ "$#" -ne 2 ]; then
    echo "usage: bash hw3_2.sh IMAGE_DIR OUTPUT_DIR" >&2
    exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/venv.sh"  # the interpreter: $PYTHON, else .venv beside this script, else python3
exec "$(hw3_python)" "$here/p2/visualize.py" --images "$1" --out "$2"
