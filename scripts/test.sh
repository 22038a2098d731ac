#!/usr/bin/env bash
# Set up (.venv, pip + Debian packages), then run the test suite: `scripts/test.sh [pytest args]`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
exec "${MPOBS_VENV:-.venv}/bin/python" -m pytest "$@"
