"""Samples of the run's series over time, as a Prometheus TSDB holds them for the alert evaluator.

Labels are tuples of sorted (name, value) pairs; ``__name__`` is the metric name. A series'
samples are a list in time order, so a range is two bisections and a slice (a long run
evaluated every 0.1 s holds thousands of samples a series; a scan of them all cost 16 ms
an evaluation of the default rules, measured by bench/alerts_cost.py).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable

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
        self.series: dict[Labels, list[tuple[int, float | None]]] = {}
        self._last: set[Labels] = set()
        self._last_t = -1  # ms of the last scrape

    def scrape(self, t_ms: int, samples: Iterable[tuple[str, dict[str, str], float]]) -> None:
        """One scrape at ``t_ms``; one not after the last (the same millisecond, a clock set back) is
        dropped, as Prometheus drops out-of-order samples: ranges are found by bisection."""
        if t_ms <= self._last_t:
            return
        self._last_t = t_ms
        seen: set[Labels] = set()
        for name, labels, value in samples:
            key = labels_of(name, labels)
            seen.add(key)
            self.series.setdefault(key, []).append((t_ms, float(value)))
        for key in self._last - seen:
            self.series[key].append((t_ms, None))
        self._last = seen
        self.trim(t_ms)

    def add(self, key: Labels, t_ms: int, value: float | None) -> None:
        """One raw sample (tests load a Prometheus server's samples this way); in time order per series."""
        self.series.setdefault(key, []).append((t_ms, value))

    def trim(self, t_ms: int) -> None:
        """Forget what no query can reach any more."""
        oldest = t_ms - self.retention_ms
        for key in list(self.series):
            points = self.series[key]
            if points and points[0][0] < oldest:
                del points[: bisect.bisect_left(points, oldest, key=sample_time)]
            if not points:
                del self.series[key]

    def between(self, points: list[tuple[int, float | None]], lo: int, hi: int) -> list[tuple[int, float | None]]:
        """The samples of one series with ``lo <= t <= hi``."""
        return points[
            bisect.bisect_left(points, lo, key=sample_time) : bisect.bisect_right(points, hi, key=sample_time)
        ]

    def select(self, matchers: list[tuple[str, str, str]]) -> Iterable[tuple[Labels, list[tuple[int, float | None]]]]:
        for key, points in self.series.items():
            got = dict(key)
            if all(_matches(op, got.get(name, ""), value) for name, op, value in matchers):
                yield key, points


def sample_time(point: tuple[int, float | None]) -> int:
    return point[0]


def _matches(op: str, have: str, want: str) -> bool:
    if op == "=":
        return have == want
    if op == "!=":
        return have != want
    full = re.fullmatch(want, have) is not None
    return full if op == "=~" else not full
