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

from mpobs.metrics.histogram import BUCKETS, LE_LABELS, LE_NS, bucket_of, quantile
from mpobs.testing import run_pipeline
from tests.handshake import pipe_is_full, run_is_asleep
from tests.helpers import DAG_CONFIG, DAG_FNS, SMALL_TASKS, fn_config, wait_for

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


#: The engine tests' DAG (a per-line python function among others), plus a batch function.
HIST_CONFIG = {
    "processors": [
        *DAG_CONFIG["processors"],
        {"type": "python", "id": "shout", "function": "histfns:shout", "batch": True, "inputs": ["audit"]},
    ]
}


def _run(data: bytes, workers: int) -> dict[str, Any]:
    """HIST_CONFIG over ``data`` in-process (many tasks and batches); the final stats."""
    functions = {"dagfns": DAG_FNS, "histfns": BATCH_FNS}
    return run_pipeline(HIST_CONFIG, data, workers=workers, functions=functions).stats


def test_buckets_sum_to_the_batches_and_calls_counted(workers: int, make_log: Any) -> None:
    data = make_log(6000, awkward=0.01).read_bytes() + b"x WARN explode\nERROR [api] user login failed\n"
    stats = _run(data, workers)
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


def test_the_same_counts_at_every_worker_count(make_log: Any) -> None:
    """Durations differ from run to run; how many of them there are does not."""
    data = make_log(6000, awkward=0.01).read_bytes()
    got = []
    for w in (1, 2, 3):
        procs = _run(data, w)["processors"]
        got.append(
            {
                pid: (row["batch_latency"]["count"], row.get("call_latency", {}).get("count"))
                for pid, row in procs.items()
            }
        )
    assert got[0] == got[1] == got[2]


def test_metrics_expose_prometheus_histograms(make_log: Any) -> None:
    """/metrics of the final stats: cumulative buckets, +Inf = _count = batches, _sum = processing time."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from dashboard_app.metrics import make_registry

    stats = _run(make_log(3000).read_bytes(), 2)

    class Source:
        def stats(self) -> dict[str, Any]:
            return stats

    text = generate_latest(make_registry(Source())).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name, key in (
        ("mpobs_processor_batch_seconds", "batch_latency"),
        ("mpobs_function_call_seconds", "call_latency"),
    ):
        fam = fams[name]
        assert fam.type == "histogram"
        by_proc: dict[str, dict[str, float]] = {}
        for s in fam.samples:
            by_proc.setdefault(s.labels["processor"], {})[s.name[len(name) :] + s.labels.get("le", "")] = s.value
        for pid, got in by_proc.items():
            h = stats["processors"][pid][key]
            assert got["_bucket+Inf"] == got["_count"] == h["count"]
            assert got["_sum"] == pytest.approx(h["sum_s"])
            cumulative = [got[f"_bucket{le}"] for le in LE_LABELS]
            assert cumulative == sorted(cumulative)
        assert by_proc
    assert 'mpobs_function_call_seconds_count{function="dagfns:annotate",processor="annotate"}' in text


SLOW_ROUTE_FNS = """
import gc, os, time
from mpobs.metrics.histogram import LE_NS, quantile

def _bound_ns():
    # How long a slow call waits: longer than every fast task took, and than 3 times their 75th percentile.
    # The first slow call to get here waits until every fast task is done (they come before the slow
    # ones in the input, so no worker holds one behind a slow task), reads the task histogram of the
    # worker's stats segment (in-flight rows included) and publishes its bound; every call uses that one.
    path = os.environ["SLOW_BOUND"]
    if not os.path.exists(path):
        seg = next(o for o in gc.get_objects() if type(o).__name__ == "StatsSegment")
        deadline = time.monotonic() + 60
        while True:
            snap = seg.snapshot()
            if snap.run("tasks_done") >= int(os.environ["FAST_TASKS"]) or time.monotonic() > deadline:
                break
            time.sleep(0.001)
        buckets, _ = snap.task_hist()
        top = max(k for k, n in enumerate(buckets) if n)  # every fast task took at most LE_NS[top]
        bound = max(LE_NS[top], int(3 * quantile(buckets, 0.75) * 1e9)) + 1_000_000
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(str(bound))
        try:
            os.link(tmp, path)  # the first bound published wins, whole
        except FileExistsError:
            pass
        os.unlink(tmp)
    with open(path) as f:
        return int(f.read())

def crawl(lines):
    # One wait per slow task: the batch holding its first line (marked SLOWSTOP).
    if any(line.startswith("SLOWSTOP") for line in lines):
        t0 = time.perf_counter_ns()
        bound = _bound_ns()
        while (left := bound - (time.perf_counter_ns() - t0)) >= 0:
            time.sleep(left / 1e9 + 0.0001)
    return lines
"""


def test_task_durations_show_the_task_with_the_slow_route(
    tmp_path: Path, cli: Any, workers: int, make_log: Any
) -> None:
    """The last ten tasks' lines take a slow route: those tasks are the slowest, and the task histogram
    counts every task once.

    Slower by construction, not by a margin a busy machine can eat: each slow task waits in its slow
    call until every other task is done, and then longer than the longest of them took (read from the
    task histogram while the run goes on), so that no fast task held up for a while can overtake it."""
    from mpobs.inputs.inputset import open_inputs

    log = make_log(6000)
    source = open_inputs([str(log)])
    plan = list(source.tasks(int(SMALL_TASKS[1])))  # the run's tasks (--task-size)
    source.close()
    slow = plan[-10:]
    first_slow = slow[0].first_line
    lines = log.read_bytes().split(b"\n")
    starts = {t.first_line for t in slow}
    for n in range(first_slow, plan[-1].last_line + 1):  # marked in place: the same bytes per line, the same plan
        lines[n - 1] = (b"SLOWSTOP" if n in starts else b"SLOWPATH") + lines[n - 1][8:]
    log.write_bytes(b"\n".join(lines))
    config = fn_config(
        tmp_path,
        "slowroute",
        SLOW_ROUTE_FNS,
        [
            {"type": "router", "id": "route", "routes": {"slow": "^SLOW"}, "default": "fast"},
            {"type": "python", "id": "crawl", "function": "slowroute:crawl", "batch": True, "inputs": ["route.slow"]},
            {"type": "uppercase", "id": "up", "inputs": ["route.fast"]},
        ],
    )
    env = {"FAST_TASKS": str(len(plan) - len(slow)), "SLOW_BOUND": str(tmp_path / "slow-bound")}
    m = tmp_path / f"m{workers}.json"
    res = cli(
        "process",
        str(log),
        "-c",
        str(config),
        "-w",
        str(workers),
        "-o",
        str(tmp_path / "out"),
        "-q",
        "--save-metrics",
        str(m),
        *SMALL_TASKS,
        env=env,
    )
    assert res.returncode == 0, res.stderr.decode()
    stats = json.loads(m.read_text())
    tasks = stats["tasks"]
    assert tasks["count"] == sum(tasks["buckets"].values()) == stats["system"]["tasks_done"] == len(plan) > 10
    assert 0 < tasks["p50_s"] <= tasks["p90_s"] <= tasks["p99_s"]
    slowest = tasks["slowest"]
    assert len(slowest) == 10 and [s["seconds"] for s in slowest] == sorted(
        (s["seconds"] for s in slowest), reverse=True
    )
    assert sorted(s["lines"] for s in slowest) == sorted(f"{t.first_line}-{t.last_line}" for t in slow)
    bound = int((tmp_path / "slow-bound").read_text()) / 1e9
    for s in slowest:  # the ten slowest are the tasks of the slow stretch
        assert s["input"] == "in.log" and s["seconds"] > bound - 1e-6 and s["seconds"] > 3 * tasks["p50_s"], s


def test_worker_time_shares_show_a_slow_output(tmp_path: Path, fault_workers: int, make_log: Any) -> None:
    """Workers whose output goes to a pipe nobody reads for a while wait for the output, not for work.

    The reader holds off until the run has stalled on the full pipe (all its processes asleep), and then
    twice as long as the run took to get there: whatever the machine's speed, the workers then spent
    more of their lives waiting for the output than working and waiting for work together."""
    import subprocess
    import sys
    import time

    log = make_log(100_000)
    m = tmp_path / "m.json"
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpobs", "process", str(log), "-w", str(fault_workers), "-q", "--save-metrics", str(m)],
        stdout=subprocess.PIPE,
    )
    with proc.stdout:  # type: ignore[union-attr]
        fd = proc.stdout.fileno()  # type: ignore[union-attr]
        wait_for(
            lambda: pipe_is_full(fd) and run_is_asleep(proc.pid, fault_workers),
            60,
            interval=0.02,
            what="the run held by its full output pipe",
        )
        # Until now each worker was busy or waited for work at most this long; after the read it has
        # less left to do than it did before (its backlog of finished tasks was most of the run).
        time.sleep(max(1.0, 2 * (time.monotonic() - started)))  # nobody reads: the run stays held
        proc.stdout.read()  # type: ignore[union-attr]
    assert proc.wait(timeout=60) == 0
    for w in json.loads(m.read_text())["workers"]:
        shares = w["time_shares"]
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
        assert shares["output_wait"] > 0.5 > shares["waiting"], w
        assert w["busy_s"] > 0 and w["output_wait_s"] > 0.5
    out = tmp_path / "out"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mpobs",
            "process",
            str(log),
            "-w",
            str(fault_workers),
            "-q",
            "-o",
            str(out),
            "--save-metrics",
            str(m),
        ],
        capture_output=True,
    )
    assert res.returncode == 0
    for w in json.loads(m.read_text())["workers"]:
        assert w["time_shares"]["output_wait"] < 0.1, w  # into a file: nothing holds the output
