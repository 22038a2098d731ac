"""Per-line instrumented loop: the plain loop plus the naive metrics design, to show what batching buys.

Every processor call on every line is timed with perf_counter and its counters
(lines in, lines out, seconds) are added to a shared array under a
multiprocessing.Lock, as a design that updates shared metrics per line would.
Output is the same bytes as plain.py.  Usage: python instrumented.py INPUT OUTPUT
"""

from __future__ import annotations

import multiprocessing
import re
import sys
from time import perf_counter

LEVEL_RX = re.compile(r"\b(ERROR|WARN|WARNING|INFO|DEBUG)\b")
LEVEL_TAG = {"ERROR": "error", "WARN": "warn", "WARNING": "warn", "INFO": "info", "DEBUG": "debug"}
PROCESSORS = ("line_counter", "tag_extractor", "error_filter", "warn_filter", "info_filter")
FILTER_TAGS = ("error", "warn", "info")


def main(src: str, dst: str) -> None:
    lock = multiprocessing.Lock()
    # Per processor: lines_in, lines_out, seconds; shared so other processes could read it.
    stats = multiprocessing.Array("d", 3 * len(PROCESSORS), lock=False)

    def record(i: int, out: int, dt: float) -> None:
        with lock:
            stats[3 * i] += 1
            stats[3 * i + 1] += out
            stats[3 * i + 2] += dt

    search = LEVEL_RX.search
    with (
        open(src, encoding="utf-8", errors="surrogateescape", newline="\n") as f,
        open(dst, "w", encoding="utf-8", errors="surrogateescape", newline="\n") as out,
    ):
        write = out.write
        for n, line in enumerate(f, 1):
            if line.endswith("\n"):
                line = line[:-1]
            t0 = perf_counter()
            t = f"Line {n}: {line}"
            record(0, 1, perf_counter() - t0)
            t0 = perf_counter()
            m = search(t)
            tag = LEVEL_TAG[m[1]] if m is not None else None
            record(1, 1, perf_counter() - t0)
            for i, want in enumerate(FILTER_TAGS, 2):
                t0 = perf_counter()
                keep = tag == want
                record(i, keep, perf_counter() - t0)
                if keep:
                    write(t + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
