"""multiprocessing.Pool script: the parent reads lines and sends chunks to 2 processes that return strings.

What a user writes after the plain loop: same work and output bytes as plain.py,
chunks of CHUNK lines handed out with ``imap`` (results come back in order) and
written by the parent.  Usage: python pool.py INPUT OUTPUT [PROCESSES]
"""

from __future__ import annotations

import itertools
import multiprocessing
import re
import sys
from collections.abc import Iterable, Iterator

LEVEL_RX = re.compile(r"\b(ERROR|WARN|WARNING|INFO|DEBUG)\b")
KEEP = frozenset({"ERROR", "WARN", "WARNING", "INFO"})
CHUNK = 10_000


def work(job: tuple[int, list[str]]) -> str:
    """Process one chunk: its first line number and its lines (with their "\\n")."""
    first, lines = job
    search = LEVEL_RX.search
    out = []
    for n, line in enumerate(lines, first):
        if line.endswith("\n"):
            line = line[:-1]
        t = f"Line {n}: {line}"
        m = search(t)
        if m is not None and m[1] in KEEP:
            out.append(t + "\n")
    return "".join(out)


def chunks(f: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    first = 1
    it = iter(f)
    while True:
        lines = list(itertools.islice(it, CHUNK))
        if not lines:
            return
        yield first, lines
        first += len(lines)


def main(src: str, dst: str, processes: int = 2) -> None:
    with (
        open(src, encoding="utf-8", errors="surrogateescape", newline="\n") as f,
        open(dst, "w", encoding="utf-8", errors="surrogateescape", newline="\n") as out,
        multiprocessing.Pool(processes) as pool,
    ):
        for text in pool.imap(work, chunks(f)):
            out.write(text)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 2)
