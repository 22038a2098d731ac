"""The /metrics exposition: a prometheus_client custom collector over the dashboard's source."""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from mpobs.histogram import LE_LABELS
from mpobs.layout import STATES

#: Keys per counter processor exposed as series (the most frequent); keeps cardinality bounded.
MAX_KEYS = 100

# (stats field, metric name, help, scale): one counter family per processor field.
PROC_COUNTERS = (
    ("lines_in", "mpobs_processor_lines_in_total", "Lines that entered the processor.", 1),
    ("lines_out", "mpobs_processor_lines_out_total", "Lines the processor emitted.", 1),
    ("errors", "mpobs_processor_errors_total", "Lines on which the processor raised an error.", 1),
    ("processing_time_ms", "mpobs_processor_processing_seconds_total", "Time spent in the processor.", 1e-3),
    ("batches", "mpobs_processor_batches_total", "Batches the processor ran.", 1),
)
# (system field, metric name, help): run-wide counters.
RUN_COUNTERS = (
    ("total_lines", "mpobs_lines_processed_total", "Input lines processed (committed + in flight)."),
    ("bytes_done", "mpobs_input_bytes_processed_total", "Input bytes processed."),
    ("tasks_done", "mpobs_tasks_done_total", "Tasks (byte ranges of the input) done."),
    ("total_errors", "mpobs_errors_total", "Processor errors, all processors."),
    ("workers_restarted", "mpobs_workers_restarted_total", "Worker processes restarted after dying."),
    ("traces_sent", "mpobs_traces_sent_total", "Trace records workers sent."),
    ("traces_dropped", "mpobs_traces_dropped_total", "Trace records dropped because the queue was full."),
    ("errors_recorded", "mpobs_error_records_sent_total", "Error records workers sent."),
    ("errors_dropped", "mpobs_error_records_dropped_total", "Error records dropped because the queue was full."),
)


class StatsCollector(Collector):
    """Reads ``source.stats()`` at scrape time; every series is derived from that one document."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return []  # families depend on the run; no registration-time collision check needed

    def collect(self) -> Iterator[Metric]:
        stats = self.source.stats()
        procs: dict[str, Any] = stats.get("processors", {})
        system: dict[str, Any] = stats.get("system", {})
        for field, name, doc, scale in PROC_COUNTERS:
            fam = CounterMetricFamily(name, doc, labels=["processor"])
            for pid, row in procs.items():
                fam.add_metric([pid], float(row.get(field, 0) or 0) * scale)
            yield fam
        yield from _histograms(procs)
        rate = GaugeMetricFamily("mpobs_processor_lines_per_second", "Lines in per second over the last 10 s.",
                                 labels=["processor"])  # fmt: skip
        for pid, row in procs.items():
            rate.add_metric([pid], float(row.get("rate_10s") or 0.0))
        yield rate
        tags = CounterMetricFamily("mpobs_tag_lines_total", "Lines that got the tag.", labels=["tag"])
        for tag, n in stats.get("tags", {}).items():
            tags.add_metric([tag], float(n))
        yield tags
        keys = CounterMetricFamily("mpobs_counter_key_lines_total", "Lines per key of counter processors.",
                                   labels=["processor", "key"])  # fmt: skip
        for pid, counts in stats.get("counters", {}).items():
            for key, n in sorted(counts.items(), key=lambda kv: -kv[1])[:MAX_KEYS]:
                keys.add_metric([pid, str(key)], float(n))
        yield keys
        for field, name, doc in RUN_COUNTERS:
            yield CounterMetricFamily(name, doc, value=float(system.get(field) or 0))
        yield GaugeMetricFamily("mpobs_lines_per_second", "Input lines per second over the last 10 s.",
                                value=float(system.get("lines_per_second_10s") or 0.0))  # fmt: skip
        yield GaugeMetricFamily("mpobs_progress_ratio", "Share of the input bytes processed.",
                                value=float(system.get("progress") or 0.0))  # fmt: skip
        stalled = system.get("stalled_calls") or []
        yield GaugeMetricFamily("mpobs_stalled_calls", "Calls running longer than --stall-after now.",
                                value=float(len(stalled)))  # fmt: skip
        running = GaugeMetricFamily("mpobs_stalled_call_seconds", "How long each stalled call has been running.",
                                    labels=["processor", "function", "line", "worker"])  # fmt: skip
        for c in stalled:
            running.add_metric([c["processor"], str(c.get("function") or ""), c["line"], str(c["worker"])], c["for_s"])
        yield running
        yield GaugeMetricFamily("mpobs_workers", "Worker processes of the run.", value=float(system.get("workers") or 0))
        yield GaugeMetricFamily("mpobs_workers_alive", "Worker processes alive.",
                                value=float(system.get("workers_alive") or 0))  # fmt: skip
        state = GaugeMetricFamily("mpobs_run_state", "1 for the run's current state.", labels=["state"])
        for s in STATES:
            state.add_metric([s], 1.0 if system.get("state") == s else 0.0)
        yield state
        yield GaugeMetricFamily("mpobs_run_elapsed_seconds", "Seconds since the run started.",
                                value=float(system.get("elapsed_s") or 0.0))  # fmt: skip


def _histograms(procs: dict[str, Any]) -> Iterator[Metric]:
    """Each processor's batch durations, and each user function's call durations, as Prometheus histograms."""
    batch = HistogramMetricFamily("mpobs_processor_batch_seconds", "Duration of each batch call of the processor.",
                                  labels=["processor"])  # fmt: skip
    calls = HistogramMetricFamily("mpobs_function_call_seconds", "Duration of each call of a python processor's "
                                  "function.", labels=["processor", "function"])  # fmt: skip
    for pid, row in procs.items():
        if "batch_latency" in row:
            batch.add_metric([pid], _cumulative(row["batch_latency"]), row["batch_latency"]["sum_s"])
        if "call_latency" in row:
            h = row["call_latency"]
            calls.add_metric([pid, str(h.get("function"))], _cumulative(h), h["sum_s"])
    yield batch
    yield calls


def _cumulative(hist: dict[str, Any]) -> list[tuple[str, float]]:
    """The /stats summary's non-empty buckets as Prometheus's cumulative (le, count) list."""
    got, total, out = hist["buckets"], 0, []
    for le in LE_LABELS:
        total += got.get(le, 0)
        out.append((le, float(total)))
    return out


#: Series that exist only while something happens (a stalled call); an alert rule may name them anyway.
EVENT_SERIES = frozenset({"mpobs_stalled_call_seconds", "ALERTS"})


def series_names(stats: dict[str, Any]) -> set[str]:
    """The metric names /metrics has for a run with this stats document (histograms as _bucket/_count/_sum)."""

    class One:
        def stats(self) -> dict[str, Any]:
            return stats

    names = set(EVENT_SERIES)
    for fam in StatsCollector(One()).collect():
        names.update(s.name for s in fam.samples)
    return names


def pipeline_series_names(pipeline: Any) -> set[str]:
    """The metric names /metrics has for a run of ``pipeline`` (``mpobs alerts check --config``)."""
    from mpobs.layout import Layout
    from mpobs.segment import Snapshot
    from mpobs.stats import RunMeta, build_stats

    layout = Layout(tuple(pipeline.ids), tuple(pipeline.tags), 1, 1, tuple(pipeline.timed))
    counters = {n.id: {"key": 0} for n in pipeline.nodes if n.proc.counts_keys}  # a key: its series exist
    doc = build_stats(Snapshot.of(layout, [0] * layout.size), RunMeta.of(pipeline, "input", 1), counters)
    return series_names(doc)


def make_registry(source: Any) -> CollectorRegistry:
    """A registry of its own per app (never the global one: no module state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(source))
    return registry
