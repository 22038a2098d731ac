"""The stats document: the one builder behind ``/stats``, ``--save-metrics``, the summary and bench.

Everything in it comes from a segment snapshot and the run's RunMeta, plus ``Parts``:
what only the coordinator knows (counter keys, errors by type, the executor's view) and
what only the dashboard measures (worker CPU and memory, rates). This module alone
knows where each goes (``build_stats``, ``place``).
"""

from __future__ import annotations

import copy
import heapq
import os
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from mpobs.defaults import STALL_AFTER
from mpobs.metrics.activity import where
from mpobs.metrics.histogram import summary as hist_summary
from mpobs.metrics.layout import COMPRESSIONS, INPUT_STATES, TIME_FIELDS
from mpobs.metrics.segment import Snapshot

if TYPE_CHECKING:  # the document is built from a run's parts, not from the pipeline's code
    from mpobs.pipeline.dag import Pipeline


class RunMeta:
    """What a reader of the segment needs to know about the run besides the numbers."""

    def __init__(
        self,
        input_name: str,
        input_path: str,
        processors: list[dict[str, Any]],
        edges: list[dict[str, Any]],
        tags: list[str],
        workers: int,
        trace: bool = False,
        trace_sample: float = 0.0,
        output: str | None = None,
        executor: str = "local",
        stall_after: float = STALL_AFTER,
        inputs: list[dict[str, Any]] | None = None,
        input_names: list[str] | None = None,
    ) -> None:
        self.input_name, self.input_path = input_name, input_path
        self.processors = processors  # {"id", "type", "inputs", "routes", "sink", "settings"}
        self.edges, self.tags, self.workers = edges, tags, workers
        self.trace, self.trace_sample, self.output, self.executor = trace, trace_sample, output, executor
        self.stall_after = stall_after  # a call running longer is listed in ``stalled_calls``
        #: Per input, in order: {"name" (as given), "kind", "compression"}; and the names records use.
        self.inputs = inputs if inputs is not None else []
        self.input_names = input_names if input_names is not None else []

    def record_names(self) -> list[tuple[str, str]]:
        """Per input: (the name records show, the name as given)."""
        return [(name, d["name"]) for name, d in zip(self.input_names, self.inputs)]

    @classmethod
    def of(cls, pipeline: Pipeline, inputs: Any, workers: int, **kw: Any) -> RunMeta:
        """``inputs``: the run's InputSet (or one plain file's path)."""
        procs = [
            {
                "id": n.id,
                "type": n.proc.type_name,
                "inputs": [s + (f".{r}" if r else "") for s, r in n.inputs],
                "routes": list(n.proc.routes),
                "sink": not n.consumers,
                "settings": n.proc.describe(),
            }
            for n in pipeline.nodes
        ]
        if isinstance(inputs, str):
            name, path = os.path.basename(inputs), inputs
            described, names = [{"name": inputs, "kind": "file", "compression": None}], [name]
        else:
            name, path = inputs.name, " ".join(s.given for s in inputs.sources)
            described, names = inputs.describe(), inputs.names
        return cls(
            name, path, procs, pipeline.edges(), list(pipeline.tags), workers, **kw, inputs=described, input_names=names
        )


class SlowestTasks:
    """The KEEP slowest tasks committed so far: input, line range, seconds and worker, to show skew."""

    KEEP = 10

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, tuple[int, int, int, str]]] = []

    def add(self, task: Any, ns: int, worker: str) -> None:
        item = (ns, task.index, (task.input, task.file_line, task.lines, worker))
        if len(self._heap) < self.KEEP:
            heapq.heappush(self._heap, item)
        elif item > self._heap[0]:
            heapq.heapreplace(self._heap, item)

    def rows(self, names: list[str]) -> list[dict[str, Any]]:
        out = []
        for ns, index, (k, first, n, worker) in sorted(self._heap, reverse=True):
            name = names[k] if k < len(names) else f"input {k}"
            out.append(
                {
                    "task": index,
                    "input": name,
                    "lines": f"{first}-{first + n - 1}",
                    "seconds": round(ns / 1e9, 6),
                    "worker": worker,
                }
            )
        return out


class Parts:
    """What the segment does not hold, each from the one part of the run that knows it.

    The coordinator knows the counter keys, errors by type, the slowest tasks, the
    alerts' state, what the executor last saw and the recent records; the dashboard
    measures worker CPU and memory and the rates, and says what it is. ``build_stats``
    and ``place`` put each where it belongs: a new part is added here and nowhere else.
    """

    __slots__ = (
        "alerts",
        "counters",
        "dashboard",
        "error_types",
        "executor",
        "rates",
        "recent_errors",
        "recent_traces",
        "slowest",
        "usage",
    )

    def __init__(
        self,
        counters: dict[str, dict[str, int]] | None = None,
        *,
        error_types: dict[tuple[str, str], int] | None = None,  # known when the run is over
        slowest: list[dict[str, Any]] | None = None,  # SlowestTasks.rows
        alerts: dict[str, Any] | None = None,  # AlertWatch.doc
        executor: dict[str, Any] | None = None,  # Executor.view: a cluster's workers
        usage: dict[int, tuple[float | None, int | None]] | None = None,  # CPU % and RSS by worker pid
        rates: tuple[dict[str, Any], dict[str, Any]] | None = None,  # the last 10 s and 1 min (History.rates)
        dashboard: dict[str, Any] | None = None,  # the dashboard's own: source, final, records kept
        recent_errors: list[dict[str, Any]] | None = None,  # the saved document's (--save-metrics)
        recent_traces: list[dict[str, Any]] | None = None,
    ) -> None:
        self.counters, self.error_types, self.slowest, self.alerts = counters, error_types, slowest, alerts
        self.executor, self.usage, self.rates, self.dashboard = executor, usage, rates, dashboard
        self.recent_errors, self.recent_traces = recent_errors, recent_traces


def build_stats(
    snap: Snapshot, meta: RunMeta, parts: Parts | None = None, live: bool = True, now: float | None = None
) -> dict[str, Any]:
    """The stats document (the /stats reference in the docs). ``live``: committed + in flight; else committed only."""
    parts = parts or Parts()
    procs = _processor_rows(snap, meta, live)
    system = _system(snap, meta, live, time.time() if now is None else now, procs)
    workers = worker_rows(snap, parts.usage, meta)
    system["stalled_calls"] = [
        dict(w["doing"], worker=w["slot"])
        for w in workers
        if w["doing"] is not None and w["doing"]["for_s"] >= meta.stall_after
    ]
    doc = {
        "processors": procs,
        "tags": {t: snap.tag(t, live) for t in meta.tags},
        "counters": parts.counters or {},
        "system": system,
        "workers": workers,
        "tasks": dict(hist_summary(*snap.task_hist(live)), slowest=parts.slowest or []),
        "inputs": input_rows(snap, meta),
        "edges": meta.edges,  # so `mpobs dashboard --metrics` can draw the DAG
        "meta": {"processors": meta.processors, "input": meta.input_name, "executor": meta.executor},
    }
    place(doc, parts)
    return doc


def place(doc: dict[str, Any], parts: Parts) -> None:
    """Put the parts that are given into ``doc`` (a built or a saved document)."""
    if parts.alerts is not None:
        doc["alerts"] = parts.alerts
    if parts.error_types is not None:
        doc["errors_by_type"] = [
            {"processor": p, "error_type": t, "count": n} for (p, t), n in sorted(parts.error_types.items())
        ]
    if parts.executor is not None:
        doc["executor"] = parts.executor
    if parts.rates is not None:
        r10, r60 = parts.rates
        for pid, row in doc["processors"].items():
            row["rate_10s"] = r10["processors"].get(pid, 0.0)
            row["rate_1m"] = r60["processors"].get(pid, 0.0)
        doc["system"].update(
            lines_per_second_10s=r10["lines_per_s"],
            lines_per_second_1m=r60["lines_per_s"],
            errors_per_second_10s=r10["errors_per_s"],
        )
    if parts.dashboard is not None:
        doc["dashboard"] = parts.dashboard
    if parts.recent_errors is not None:
        doc["recent_errors"] = parts.recent_errors
    if parts.recent_traces is not None:
        doc["recent_traces"] = parts.recent_traces


def with_workers_now(final: dict[str, Any], snap: Snapshot, parts: Parts) -> dict[str, Any]:
    """A copy of a final document, its worker rows read again (CPU and memory now) and ``parts`` placed."""
    doc = copy.deepcopy(final)
    doc["workers"] = worker_rows(snap, parts.usage)
    place(doc, parts)
    return doc


def _processor_rows(snap: Snapshot, meta: RunMeta, live: bool) -> dict[str, Any]:
    procs: dict[str, Any] = {}
    total_ns = sum(snap.proc(p, "time_ns", live) for p in range(len(meta.processors)))
    for p, pm in enumerate(meta.processors):
        ns = snap.proc(p, "time_ns", live)
        procs[pm["id"]] = {
            "type": pm["type"],
            "lines_in": snap.proc(p, "lines_in", live),
            "lines_out": snap.proc(p, "lines_out", live),
            "errors": snap.proc(p, "errors", live),
            "processing_time_ms": round(ns / 1e6, 3),
            "batches": snap.proc(p, "batches", live),
            "share_of_time": round(round(ns / 1e6, 3) * 1e6 / total_ns, 4) if total_ns else 0.0,
            "batch_latency": hist_summary(snap.batch_hist(p, live), ns),
        }
        if p in snap.layout.timed:  # a user function: each of its calls timed too
            counts, call_ns = snap.call_hist(p, live)
            procs[pm["id"]]["call_latency"] = dict(
                hist_summary(counts, call_ns), function=pm["settings"].get("function")
            )
    return procs


def _system(snap: Snapshot, meta: RunMeta, live: bool, now: float, procs: dict[str, Any]) -> dict[str, Any]:
    started = snap.sys("started_at_ms") / 1000
    ended = snap.sys("ended_at_ms") / 1000
    elapsed = max((ended or now) - started, 0.0) if started else 0.0
    total_ns = sum(snap.proc(p, "time_ns", live) for p in range(len(meta.processors)))
    lines = snap.run("lines_done", live)
    bytes_total = snap.sys("bytes_total")  # UNKNOWN (a stream): no progress share, no ETA
    bytes_done = snap.run("bytes_done", live)
    byte_rate = bytes_done / elapsed if elapsed > 0 else 0.0
    running = snap.state == "running"
    workers = [snap.worker(s) for s in range(snap.layout.slots)]
    system = {
        "total_lines": lines,
        "total_processing_time_ms": round(total_ns / 1e6, 3),
        "lines_per_second": round(lines / elapsed if elapsed > 0 else 0.0, 1),
        "total_errors": sum(row["errors"] for row in procs.values()),
        "workers": meta.workers,
        "bytes_total": bytes_total if bytes_total >= 0 else None,
        "bytes_done": bytes_done,
        "state": snap.state,
        "started_at": _iso(started),
        "elapsed_s": round(elapsed, 3),
        "progress": round(bytes_done / bytes_total, 4) if bytes_total > 0 else (1.0 if snap.state == "done" else None),
        "eta_s": round((bytes_total - bytes_done) / byte_rate, 1)
        if byte_rate > 0 and running and bytes_total >= 0
        else None,
        "tasks_done": snap.run("tasks_done", live),
        "tasks_total": snap.sys("tasks_total") or None,
        "lines_total": snap.sys("lines_total") or None,
        "workers_restarted": snap.sys("workers_restarted"),
        "workers_alive": sum(w["alive"] for w in workers),
        "traces_sent": sum(w["traces_sent"] for w in workers),
        "traces_dropped": sum(w["traces_dropped"] for w in workers),
        # sampled lines whose trace no task built: without --save-traces only the most recent are kept
        "traces_skipped": snap.run("traces_skipped", live),
        "errors_recorded": sum(w["errors_sent"] for w in workers),
        "errors_dropped": sum(w["errors_dropped"] for w in workers),
        # records a worker sent again after a crash (dropped as repeats), and records the
        # dashboard could not take (its queue was full): counted, never silent
        "records_repeated": snap.sys("records_repeated"),
        "dashboard_records_dropped": snap.sys("dashboard_dropped"),
        "output_reopens": snap.sys("output_reopens"),  # SIGHUP: the output went on in a new file
        "input": meta.input_name,
        "executor": meta.executor,
        "trace": meta.trace,
        "trace_sample": meta.trace_sample if meta.trace else None,
    }
    if snap.sys("checkpoint_at_ms"):
        system["checkpoint"] = {
            "at": _iso(snap.sys("checkpoint_at_ms") / 1000),
            "lines": snap.sys("checkpoint_lines"),
            "output_bytes": snap.sys("checkpoint_output"),
        }
    if ended:
        system["ended_at"] = _iso(ended)
        system["traces_delivered"] = snap.sys("traces_delivered")
        system["errors_delivered"] = snap.sys("errors_delivered")
    return system


def input_rows(snap: Snapshot, meta: RunMeta) -> list[dict[str, Any]]:
    """One row per input, in order: bytes read of its total (compressed bytes if compressed), lines, state."""
    rows = []
    for k, described in enumerate(meta.inputs[: snap.layout.inputs]):
        v = snap.input(k)
        rows.append(
            {
                **described,
                "bytes_read": v["bytes_read"],
                "bytes_total": v["bytes_total"] if v["bytes_total"] >= 0 else None,
                "lines": v["lines_read"],
                "lines_done": v["lines_done"],
                "state": INPUT_STATES[v["state"]],
                "compression": COMPRESSIONS[v["compression"]],
                **(
                    {
                        "following": bool(v["following"]),
                        "rotations": v["rotations"],
                        "lag_bytes": v["lag_bytes"],
                        "last_line_at": _iso(v["last_line_ms"] / 1000) if v["last_line_ms"] else None,
                    }
                    if described.get("follow")
                    else {}
                ),
            }
        )
    return rows


def worker_rows(
    snap: Snapshot, usage: dict[int, tuple[float | None, int | None]] | None = None, meta: RunMeta | None = None
) -> list[dict[str, Any]]:
    """One row per worker slot; ``usage``: CPU % and RSS by pid, where the dashboard measured them.

    With ``meta``, ``doing`` says what a live worker is running now: processor, function,
    line (``mpobs.metrics.activity.where``) and for how long (``for_s``).
    """
    now = time.perf_counter_ns()
    named = (
        [(p["id"], p["settings"].get("function") if p["type"] == "python" else None) for p in meta.processors]
        if meta is not None
        else []
    )
    names = meta.input_names if meta is not None else []
    return [_worker_row(slot, snap.worker(slot), usage or {}, named, names, now) for slot in range(snap.layout.slots)]


def _worker_row(
    slot: int,
    w: dict[str, int],
    usage: dict[int, tuple[float | None, int | None]],
    named: list[tuple[str, str | None]],
    names: list[str],
    now: int,
) -> dict[str, Any]:
    cpu, rss = usage.get(w["pid"], (None, None))
    doing = where(w, named, names) if w["alive"] else None
    if doing is not None:
        doing["for_s"] = round(max(0, now - doing.pop("since_ns")) / 1e9, 3)
    spent = {f: w[f] for f in TIME_FIELDS}
    total = sum(spent.values())
    time_s = {f[: -len("_ns")] + "_s": round(ns / 1e9, 3) for f, ns in spent.items()}
    shares = {f[: -len("_ns")]: round(ns / total, 4) if total else 0.0 for f, ns in spent.items()}
    return {
        "slot": slot,
        "pid": w["pid"] or None,
        "alive": bool(w["alive"]),
        "lines": w["lines"],
        "tasks": w["tasks"],
        "bytes": w["bytes"],
        "cpu_percent": cpu,
        "rss_bytes": rss,
        "traces_sent": w["traces_sent"],
        "traces_dropped": w["traces_dropped"],
        "errors_sent": w["errors_sent"],
        "errors_dropped": w["errors_dropped"],
        "doing": doing,
        **time_s,
        "time_shares": shares,
    }


def _iso(ts: float) -> str | None:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds") if ts else None
