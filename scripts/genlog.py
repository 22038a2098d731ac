#!/usr/bin/env python3
"""Generate a test log: python scripts/genlog.py out.log --lines 2000000 [--seed 42] [--awkward 0.01]."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mpobs.loggen import generate_file  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("path")
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--awkward", type=float, default=0.0, help="share of awkward lines (0..1)")
    args = ap.parse_args()
    n = generate_file(args.path, args.lines, seed=args.seed, awkward=args.awkward)
    print(f"{args.path}: {args.lines:,} lines, {n:,} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
