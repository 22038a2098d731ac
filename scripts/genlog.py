#!/usr/bin/env python3
"""Generate a test log.

python scripts/genlog.py out.log --lines 2000000 [--seed 42] [--mix INFO=70,ERROR=5] [--awkward 0.01]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mpobs.inputs.loggen import generate_file, parse_mix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("path")
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--awkward", type=float, default=0.0, help="share of awkward lines (0..1)")
    ap.add_argument(
        "--mix",
        default="INFO=70,WARN=12,ERROR=5,DEBUG=10,WARNING=3",
        help="level weights, e.g. INFO=70,WARN=12,ERROR=5,DEBUG=10,WARNING=3",
    )
    args = ap.parse_args()
    try:
        mix = parse_mix(args.mix)
    except ValueError as err:
        ap.error(str(err))
    n = generate_file(args.path, args.lines, seed=args.seed, awkward=args.awkward, mix=mix)
    print(f"{args.path}: {args.lines:,} lines, {n:,} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
