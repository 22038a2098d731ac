"""Latency histograms: every batch call and every user-function call lands in exactly one bucket.

The buckets are columns of the count vector, so they merge like the counters: at any worker
count they sum exactly to the batches (and calls) counted, and /metrics exposes them as
Prometheus histograms whose _count and _sum are those numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mpobs.histogram import BUCKETS, LE_LABELS, LE_NS, bucket_of, quantile
from tests.conftest import run_cli
from tests.test_engine import SMALL_TASKS, write_dag

BATCH_FNS = "def shout(lines):\n    return [line.upper() for line in lines]\n"


def test_buckets_are_powers_of_two_inclusive_upper_bounds() -> None:
    assert bucket_of(0) == bucket_of(1) == bucket_of(1024) == 0
    assert bucket_of(1025) == bucket_of(2048) == 1
    assert bucket_of(2049) == 2
    assert bucket_of(LE_NS[-1]) == BUCKETS - 2
    assert bucket_of(LE_NS[-1] + 1) == bucket_of(10**15) == BUCKETS - 1  # +Inf
    for k, le in enumerate(LE_NS):
        assert bucket_of(le) == k and bucket_of(le + 1) == k + 1
    assert LE_LABELS[0] == "1.024e-06" and LE_LABELS[-1] == "+Inf" and len(LE_LABELS) == BUCKETS


def test_quantiles_interpolate_within_a_bucket_as_prometheus_does() -> None:
    counts = [0] * BUCKETS
    assert quantile(counts, 0.5) is None
    counts[3] = 10  # (4.096 us, 8.192 us]
    assert quantile(counts, 0.5) == pytest.approx((4096 + 4096 * 0.5) / 1e9)
    assert quantile(counts, 1.0) == pytest.approx(8192 / 1e9)
    counts[BUCKETS - 1] = 1000  # most calls above the highest bound: answered with that bound
    assert quantile(counts, 0.99) == pytest.approx(LE_NS[-1] / 1e9)


def _config(tmp_path: Path) -> Path:
    """The engine tests' DAG (a per-line python function among others), plus a batch function."""
    (tmp_path / "histfns.py").write_text(BATCH_FNS)
    config = json.loads(write_dag(tmp_path).read_text())
    config["processors"].append({"type": "python", "id": "shout", "function": "histfns:shout", "batch": True,
                                 "inputs": ["audit"]})  # fmt: skip
    path = tmp_path / "hist.json"
    path.write_text(json.dumps(config))
    return path


def _run(tmp_path: Path, cli: Any, log: Path, config: Path, workers: int) -> dict[str, Any]:
    m = tmp_path / f"m{workers}.json"
    res = cli("process", str(log), "-c", str(config), "-w", str(workers), "-o", str(tmp_path / "out"), "-q",
              "--save-metrics", str(m), *SMALL_TASKS)  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()
    return json.loads(m.read_text())


def test_buckets_sum_to_the_batches_and_calls_counted(tmp_path: Path, cli: Any, workers: int, make_log: Any) -> None:
    log = make_log(6000, awkward=0.01)
    log.write_bytes(log.read_bytes() + b"x WARN explode\nERROR [api] user login failed\n")
    stats = _run(tmp_path, cli, log, _config(tmp_path), workers)
    procs = stats["processors"]
    for pid, row in procs.items():
        h = row["batch_latency"]
        assert sum(h["buckets"].values()) == h["count"] == row["batches"] > 0, pid
        assert h["sum_s"] == pytest.approx(row["processing_time_ms"] / 1e3, abs=1e-6), pid
        assert set(h["buckets"]) <= set(LE_LABELS)
        assert 0 < h["p50_s"] <= h["p90_s"] <= h["p99_s"]
    # Only user functions time their calls: one call per line, errors included ...
    assert {pid for pid, row in procs.items() if "call_latency" in row} == {"annotate", "shout"}
    calls = procs["annotate"]["call_latency"]
    assert calls["function"] == "dagfns:annotate"
    assert sum(calls["buckets"].values()) == calls["count"] == procs["annotate"]["lines_in"] > 0
    assert procs["annotate"]["errors"] >= 1
    assert 0 < calls["sum_s"] <= procs["annotate"]["processing_time_ms"] / 1e3
    # ... and a batch function once per batch (none of its batches failed).
    assert procs["shout"]["call_latency"]["count"] == procs["shout"]["batches"] > 0


def test_the_same_counts_at_every_worker_count(tmp_path: Path, cli: Any, make_log: Any) -> None:
    """Durations differ from run to run; how many of them there are does not."""
    log = make_log(6000, awkward=0.01)
    config = _config(tmp_path)
    got = []
    for w in (1, 2, 3):
        procs = _run(tmp_path, cli, log, config, w)["processors"]
        got.append({pid: (row["batch_latency"]["count"], row.get("call_latency", {}).get("count"))
                    for pid, row in procs.items()})  # fmt: skip
    assert got[0] == got[1] == got[2]


def test_metrics_expose_prometheus_histograms(tmp_path: Path, make_log: Any) -> None:
    """/metrics of the final stats: cumulative buckets, +Inf = _count = batches, _sum = processing time."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from dashboard_app.metrics import make_registry

    log = make_log(3000)
    stats = _run(tmp_path, run_cli, log, _config(tmp_path), 2)

    class Source:
        def stats(self) -> dict[str, Any]:
            return stats

    text = generate_latest(make_registry(Source())).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name, key in (("mpobs_processor_batch_seconds", "batch_latency"), ("mpobs_function_call_seconds", "call_latency")):
        fam = fams[name]
        assert fam.type == "histogram"
        by_proc: dict[str, dict[str, float]] = {}
        for s in fam.samples:
            by_proc.setdefault(s.labels["processor"], {})[s.name[len(name):] + s.labels.get("le", "")] = s.value
        for pid, got in by_proc.items():
            h = stats["processors"][pid][key]
            assert got["_bucket+Inf"] == got["_count"] == h["count"]
            assert got["_sum"] == pytest.approx(h["sum_s"])
            cumulative = [got[f"_bucket{le}"] for le in LE_LABELS]
            assert cumulative == sorted(cumulative)
        assert by_proc
    assert 'mpobs_function_call_seconds_count{function="dagfns:annotate",processor="annotate"}' in text
