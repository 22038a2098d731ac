"""Per-second samples of the run's cumulative counts: the throughput history and rolling rates."""

from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

#: Samples kept (one a second): ten minutes of history.
KEEP_SAMPLES = 600


@dataclass(frozen=True)
class Sample:
    """Cumulative counts at time ``t`` (seconds, wall clock)."""

    t: float
    lines: int
    errors: int
    procs: tuple[int, ...]  # lines_in per processor, config order


class History:
    """A bounded window of samples; rates are differences between two samples.

    Thread-safe: the sampler thread appends while request threads read.
    """

    def __init__(self, processors: list[str], keep: int = KEEP_SAMPLES) -> None:
        self.processors = list(processors)
        self.samples: deque[Sample] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, sample: Sample) -> None:
        with self._lock:
            if self.samples and sample.t <= self.samples[-1].t:
                return  # a clock step backwards: keep the series monotonic
            self.samples.append(sample)

    def _copy(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    def rates(self, window: float) -> dict[str, Any]:
        """Lines/s (total and per processor) and errors/s over the last ``window`` seconds."""
        samples = self._copy()
        zero = {"lines_per_s": 0.0, "errors_per_s": 0.0, "processors": dict.fromkeys(self.processors, 0.0)}
        if len(samples) < 2:
            return zero
        last = samples[-1]
        first = samples[0]
        for s in reversed(samples):
            first = s
            if last.t - s.t >= window:
                break
        dt = last.t - first.t
        if dt <= 0:
            return zero
        return {
            "lines_per_s": round((last.lines - first.lines) / dt, 1),
            "errors_per_s": round((last.errors - first.errors) / dt, 2),
            "processors": {p: round((a - b) / dt, 1) for p, a, b in zip(self.processors, last.procs, first.procs)},
        }

    def series(self, limit: int | None = None) -> dict[str, Any]:
        """Per-second points (one per pair of adjacent samples), oldest first."""
        samples = self._copy()
        if limit is not None:
            samples = samples[-(limit + 1) :]
        t: list[float] = []
        lines: list[float] = []
        errors: list[float] = []
        procs: dict[str, list[float]] = {p: [] for p in self.processors}
        for a, b in itertools.pairwise(samples):
            dt = b.t - a.t
            t.append(round(b.t, 3))
            lines.append(round((b.lines - a.lines) / dt, 1))
            errors.append(round((b.errors - a.errors) / dt, 2))
            for i, p in enumerate(self.processors):
                procs[p].append(round((b.procs[i] - a.procs[i]) / dt, 1))
        return {"t": t, "lines_per_s": lines, "errors_per_s": errors, "processors": procs}
