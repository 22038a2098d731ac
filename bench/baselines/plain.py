"""Plain loop: the default mpobs pipeline's work in one process, no metrics (what a user writes instead).

Usage: python plain.py INPUT OUTPUT
"""

from __future__ import annotations

import re
import sys

LEVEL_RX = re.compile(r"\b(ERROR|WARN|WARNING|INFO|DEBUG)\b")
KEEP = frozenset({"ERROR", "WARN", "WARNING", "INFO"})  # tags error, warn, info; debug and untagged dropped


def main(src: str, dst: str) -> None:
    search = LEVEL_RX.search
    # newline="\n": split on "\n" only and keep "\r" etc. as text; surrogateescape keeps invalid bytes.
    with (
        open(src, encoding="utf-8", errors="surrogateescape", newline="\n") as f,
        open(dst, "w", encoding="utf-8", errors="surrogateescape", newline="\n") as out,
    ):
        write = out.write
        for n, line in enumerate(f, 1):
            if line.endswith("\n"):
                line = line[:-1]
            t = f"Line {n}: {line}"
            m = search(t)
            if m is not None and m[1] in KEEP:
                write(t + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
