"""What one plain Python process computes for the default pipeline: the answer every run must give."""

from __future__ import annotations

import re

_LEVEL = re.compile(r"\b(ERROR|WARN|WARNING|INFO|DEBUG)\b")
_TAG = {"ERROR": "error", "WARN": "warn", "WARNING": "warn", "INFO": "info", "DEBUG": "debug"}


def split_lines(data: bytes) -> list[str]:
    """Lines split on "\\n" only; a last line without "\\n" is a line."""
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def default_pipeline(data: bytes) -> tuple[bytes, dict[str, int]]:
    """(output bytes, tag counts) of the default pipeline, line by line."""
    out = []
    tags = {"error": 0, "warn": 0, "info": 0, "debug": 0}
    for n, line in enumerate(split_lines(data), 1):
        text = f"Line {n}: {line}"
        m = _LEVEL.search(text)
        if m:
            tag = _TAG[m.group(1)]
            tags[tag] += 1
            if tag != "debug":
                out.append(text + "\n")
    return "".join(out).encode("utf-8", "surrogateescape"), tags
