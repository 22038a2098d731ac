#!/usr/bin/env bash
# Set up (pip + Debian packages), then run the test suite: `scripts/test.sh [pytest args]`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
exec "${PYTHON:-python3}" -m pytest "$@"
