"""The run's Prometheus series, derived from one stats document (``mpobs.metrics.document.build_stats``).

One derivation for two readers: the dashboard's ``/metrics`` exposes these families as they
are, and the alert evaluator (``mpobs.alerts.watch``) samples them into its own store, so a rule
sees exactly the series a Prometheus server scraping ``/metrics`` sees. A family is named as
Prometheus's exposition names it (a counter without ``_total``); its samples carry the full
sample names (``_total``, ``_bucket``/``_count``/``_sum``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mpobs.metrics.histogram import LE_LABELS
from mpobs.metrics.layout import STATES

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
#: Series that exist only while something happens (a stalled call, an alert); a rule may name them anyway.
EVENT_SERIES = frozenset({"mpobs_stalled_call_seconds", "ALERTS"})

Labels = dict[str, str]


@dataclass
class Family:
    """One metric family: ``kind`` is counter, gauge or histogram; samples are (sample name, labels, value)."""

    name: str
    kind: str
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    @classmethod
    def counter(cls, name: str, help: str) -> Family:
        return cls(name[: -len("_total")] if name.endswith("_total") else name, "counter", help)

    def add(self, labels: Labels, value: float) -> None:
        self.samples.append((self.name + "_total" if self.kind == "counter" else self.name, labels, float(value)))

    def add_histogram(self, labels: Labels, hist: dict[str, Any]) -> None:
        """The /stats summary's non-empty buckets as Prometheus's cumulative buckets, _count and _sum."""
        got, total = hist["buckets"], 0
        for le in LE_LABELS:
            total += got.get(le, 0)
            self.samples.append((self.name + "_bucket", {**labels, "le": le}, float(total)))
        self.samples.append((self.name + "_count", labels, float(total)))
        self.samples.append((self.name + "_sum", labels, float(hist["sum_s"])))


def families(stats: dict[str, Any]) -> list[Family]:
    """Every family of the run's /metrics, from its stats document."""
    procs: dict[str, Any] = stats.get("processors", {})
    system: dict[str, Any] = stats.get("system", {})
    out: list[Family] = []
    for key, name, doc, scale in PROC_COUNTERS:
        fam = Family.counter(name, doc)
        for pid, row in procs.items():
            fam.add({"processor": pid}, float(row.get(key, 0) or 0) * scale)
        out.append(fam)
    out += _histograms(procs)
    rate = Family("mpobs_processor_lines_per_second", "gauge", "Lines in per second over the last 10 s.")
    for pid, row in procs.items():
        rate.add({"processor": pid}, float(row.get("rate_10s") or 0.0))
    out.append(rate)
    tags = Family.counter("mpobs_tag_lines_total", "Lines that got the tag.")
    for tag, n in stats.get("tags", {}).items():
        tags.add({"tag": tag}, n)
    out.append(tags)
    keys = Family.counter("mpobs_counter_key_lines_total", "Lines per key of counter processors.")
    for pid, counts in stats.get("counters", {}).items():
        for key, n in sorted(counts.items(), key=lambda kv: -kv[1])[:MAX_KEYS]:
            keys.add({"processor": pid, "key": str(key)}, n)
    out.append(keys)
    for key, name, doc in RUN_COUNTERS:
        out.append(_one(Family.counter(name, doc), system.get(key)))
    out += _run_gauges(system)
    out.append(_alerts(stats.get("alerts")))
    return out


def _one(fam: Family, value: Any) -> Family:
    fam.add({}, float(value or 0))
    return fam


def _run_gauges(system: dict[str, Any]) -> Iterator[Family]:
    yield _one(
        Family("mpobs_lines_per_second", "gauge", "Input lines per second over the last 10 s."),
        system.get("lines_per_second_10s"),
    )
    yield _one(Family("mpobs_progress_ratio", "gauge", "Share of the input bytes processed."), system.get("progress"))
    stalled = system.get("stalled_calls") or []
    yield _one(Family("mpobs_stalled_calls", "gauge", "Calls running longer than --stall-after now."), len(stalled))
    running = Family("mpobs_stalled_call_seconds", "gauge", "How long each stalled call has been running.")
    for c in stalled:
        running.add(
            {
                "processor": c["processor"],
                "function": str(c.get("function") or ""),
                "line": c["line"],
                "worker": str(c["worker"]),
            },
            c["for_s"],
        )
    yield running
    yield _one(Family("mpobs_workers", "gauge", "Worker processes of the run."), system.get("workers"))
    yield _one(Family("mpobs_workers_alive", "gauge", "Worker processes alive."), system.get("workers_alive"))
    state = Family("mpobs_run_state", "gauge", "1 for the run's current state.")
    for s in STATES:
        state.add({"state": s}, 1.0 if system.get("state") == s else 0.0)
    yield state
    yield _one(Family("mpobs_run_elapsed_seconds", "gauge", "Seconds since the run started."), system.get("elapsed_s"))


def _histograms(procs: dict[str, Any]) -> list[Family]:
    """Each processor's batch durations, and each user function's call durations, as Prometheus histograms."""
    batch = Family("mpobs_processor_batch_seconds", "histogram", "Duration of each batch call of the processor.")
    calls = Family(
        "mpobs_function_call_seconds", "histogram", "Duration of each call of a python processor's function."
    )
    for pid, row in procs.items():
        if "batch_latency" in row:
            batch.add_histogram({"processor": pid}, row["batch_latency"])
        if "call_latency" in row:
            h = row["call_latency"]
            calls.add_histogram({"processor": pid, "function": str(h.get("function"))}, h)
    return [batch, calls]


def _alerts(doc: dict[str, Any] | None) -> Family:
    """Prometheus's ALERTS series: 1 for each pending or firing alert, labelled with its state."""
    fam = Family("ALERTS", "gauge", "Alerts of the run's --alerts rules, pending or firing.")
    for alert in (doc or {}).get("alerts", []):
        fam.add({**alert["labels"], "alertstate": alert["state"]}, 1.0)
    return fam


def samples(stats: dict[str, Any], names: Iterable[str] | None = None) -> Iterator[tuple[str, Labels, float]]:
    """Every sample of the run's /metrics (only those named ``names``, if given)."""
    wanted = None if names is None else set(names)
    for fam in families(stats):
        for sample in fam.samples:
            if wanted is None or sample[0] in wanted:
                yield sample


def series_names(stats: dict[str, Any]) -> set[str]:
    """The metric names /metrics has for a run with this stats document (histograms as _bucket/_count/_sum)."""
    return set(EVENT_SERIES) | {name for name, _, _ in samples(stats)}


def pipeline_series_names(pipeline: Any) -> set[str]:
    """The metric names /metrics has for a run of ``pipeline`` (``mpobs alerts check --config``)."""
    from mpobs.metrics.document import Parts, RunMeta, build_stats
    from mpobs.metrics.layout import Layout
    from mpobs.metrics.segment import Snapshot

    layout = Layout(tuple(pipeline.ids), tuple(pipeline.tags), 1, 1, tuple(pipeline.timed))
    counters = {n.id: {"key": 0} for n in pipeline.nodes if n.proc.counts_keys}  # a key: its series exist
    doc = build_stats(Snapshot.of(layout, [0] * layout.size), RunMeta.of(pipeline, "input", 1), Parts(counters))
    return series_names(doc)
