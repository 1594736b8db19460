#!/usr/bin/env bash
# The offline demo: synthetic data, a short CPU training run, predictions through hw3_1.sh.
set -euo pipefail
exec python3 "$(dirname "$0")/p1/demo.py" "$@"
