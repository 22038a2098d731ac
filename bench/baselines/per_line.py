"""One built-in processor's work, line by line in plain Python: the reference output of its bench row.

Usage: python per_line.py TYPE INPUT OUTPUT, TYPE one of bench.rows.PROCESSOR_CONFIGS's keys.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator

LEVEL_RX = re.compile(r"\b(ERROR|WARN|WARNING|INFO|DEBUG)\b")


def _lines(src: str) -> Iterator[tuple[int, str]]:
    # newline="\n": split on "\n" only and keep "\r" etc. as text; surrogateescape keeps invalid bytes.
    with open(src, encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        for n, line in enumerate(f, 1):
            yield n, line[:-1] if line.endswith("\n") else line


SERVICE_RX = re.compile(r"\[(\w+)\]")
ERROR_RX = re.compile(r"ERROR")
KEEP_RX = re.compile(r"ERROR|WARN")


def _tagged(n: int, t: str) -> str:
    LEVEL_RX.search(t)  # the tag is not in the output: the line goes on
    return t


def _counted(n: int, t: str) -> str:
    SERVICE_RX.search(t)  # the key is counted, not written
    return t


def _routed(n: int, t: str) -> str:
    ERROR_RX.search(t)  # to "errors" or to "rest": both routes are sinks, so every line is output
    return t


#: Per type: what the processor alone (its config in bench.rows.PROCESSOR_CONFIGS) emits for line ``n``
#: with text ``t``; None: dropped.
WORK: dict[str, Callable[[int, str], str | None]] = {
    "line_counter": lambda n, t: f"Line {n}: {t}",
    "uppercase": lambda n, t: t.upper(),
    "lowercase": lambda n, t: t.lower(),
    "filter": lambda n, t: t if KEEP_RX.search(t) else None,
    "tag_extractor": _tagged,
    "counter": _counted,
    "router": _routed,
}


def main(kind: str, src: str, dst: str) -> None:
    work = WORK[kind]
    with open(dst, "w", encoding="utf-8", errors="surrogateescape", newline="\n") as out:
        write = out.write
        for n, t in _lines(src):
            got = work(n, t)
            if got is not None:
                write(got + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
