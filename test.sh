#!/usr/bin/env bash
# The tests, offline on CPU: makes .venv from requirements.txt on first use (see venv.sh).
#   bash test.sh [PYTEST_OPTIONS...]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/venv.sh"
python="$(hw3_venv)"
cd "$here"
# The tests' checkpoints take about 2 GB of the temporary folder at their peak (each passing
# test's folder goes at its teardown); a full disk would otherwise fail them one by one.
tmp="${TMPDIR:-/tmp}"
free_kb="$(df -Pk "$tmp" 2>/dev/null | awk 'NR == 2 {print $4}')"
if [ -n "$free_kb" ] && [ "$free_kb" -lt $((3 * 1024 * 1024)) ]; then
    echo "warning: $tmp has $((free_kb / 1024)) MB free; the tests need about 2 GB there" >&2
fi
exec "$python" -m pytest "$@"
