"""mpobs benchmark harness: ``python -m bench`` times mpobs against the scripts a user would write."""

from __future__ import annotations

from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
BASELINES_DIR = BENCH_DIR / "baselines"
SEED = 42
