#!/usr/bin/env bash
# Set up, then run the main job: `scripts/run.sh [FILE] [mpobs process options]`.
# Without FILE, mpobs runs on a generated sample log.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
exec mpobs process "$@"
