"""The /metrics exposition: a prometheus_client custom collector over the dashboard's source.

The series themselves are derived in ``mpobs.metrics.series`` (the alert evaluator reads the same
ones); this module only hands them to prometheus_client's exposition.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from mpobs.metrics.series import families


class StatsCollector(Collector):
    """Reads ``source.stats()`` at scrape time; every series is derived from that one document."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return []  # families depend on the run; no registration-time collision check needed

    def collect(self) -> Iterator[Metric]:
        for fam in families(self.source.stats()):
            metric = Metric(fam.name, fam.help, fam.kind)
            for name, labels, value in fam.samples:
                metric.add_sample(name, labels, value)
            yield metric


def make_registry(source: Any) -> CollectorRegistry:
    """A registry of its own per app (never the global one: no module state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(source))
    return registry
