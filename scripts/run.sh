#!/usr/bin/env bash
# Set up (.venv), then run the main job: `scripts/run.sh [FILE] [mpobs process options]`.
# Without FILE, mpobs runs on a generated sample log.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh" >&2
venv=${MPOBS_VENV:-.venv}
case $venv in /*) ;; *) venv="$here/$venv" ;; esac  # setup.sh makes a relative one in the repository
exec "$venv/bin/mpobs" process "$@"
