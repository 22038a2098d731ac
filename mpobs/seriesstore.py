"""Samples of the run's series over time, as a Prometheus TSDB holds them for the alert evaluator.

Labels are tuples of sorted (name, value) pairs; ``__name__`` is the metric name.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Iterable

NAME = "__name__"

Labels = tuple[tuple[str, str], ...]


def labels_of(name: str, labels: dict[str, str]) -> Labels:
    return tuple(sorted({**labels, NAME: name}.items()))


def drop_name(key: Labels) -> Labels:
    return tuple(kv for kv in key if kv[0] != NAME)


class SeriesStore:
    """Samples per series, as a Prometheus TSDB holds them for the last ``retention_ms``.

    ``scrape(t_ms, samples)`` adds one scrape; a series that was in the last scrape and is
    not in this one gets a stale marker (None), as Prometheus's scrape loop writes one.
    """

    def __init__(self, retention_ms: int) -> None:
        self.retention_ms = retention_ms
        self.series: dict[Labels, deque[tuple[int, float | None]]] = {}
        self._last: set[Labels] = set()

    def scrape(self, t_ms: int, samples: Iterable[tuple[str, dict[str, str], float]]) -> None:
        seen: set[Labels] = set()
        for name, labels, value in samples:
            key = labels_of(name, labels)
            seen.add(key)
            self.series.setdefault(key, deque()).append((t_ms, float(value)))
        for key in self._last - seen:
            self.series[key].append((t_ms, None))
        self._last = seen
        self.trim(t_ms)

    def add(self, key: Labels, t_ms: int, value: float | None) -> None:
        """One raw sample (tests load a Prometheus server's samples this way); in time order per series."""
        self.series.setdefault(key, deque()).append((t_ms, value))

    def trim(self, t_ms: int) -> None:
        """Forget what no query can reach any more."""
        oldest = t_ms - self.retention_ms
        for key in list(self.series):
            points = self.series[key]
            while points and points[0][0] < oldest:
                points.popleft()
            if not points:
                del self.series[key]

    def select(self, matchers: list[tuple[str, str, str]]) -> Iterable[tuple[Labels, deque[tuple[int, float | None]]]]:
        for key, points in self.series.items():
            got = dict(key)
            if all(_matches(op, got.get(name, ""), value) for name, op, value in matchers):
                yield key, points


def _matches(op: str, have: str, want: str) -> bool:
    if op == "=":
        return have == want
    if op == "!=":
        return have != want
    full = re.fullmatch(want, have) is not None
    return full if op == "=~" else not full
