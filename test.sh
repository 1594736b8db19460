#!/usr/bin/env bash
# The tests, offline on CPU: makes .venv from requirements.txt on first use (see venv.sh).
#   bash test.sh [PYTEST_OPTIONS...]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/venv.sh"
python="$(hw3_venv)"
cd "$here"
exec "$python" -m pytest "$@"
