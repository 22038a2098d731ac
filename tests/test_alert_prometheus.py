"""The same alert rules in mpobs and in a real Prometheus (Debian package) scraping a live run.

One followed run (with a writer appending lines, some of which fail) is scraped every second
by a Prometheus loading the same rule files as mpobs's ``--alerts``. The tests check that
both fire the same alert, and that mpobs's PromQL gives Prometheus's values: the raw samples
are pulled out of Prometheus, loaded into mpobs's series store, and each expression of a
table is evaluated by both at the same instant.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mpobs.alerts.promql import Evaluator
from mpobs.alerts.store import NAME, SeriesStore
from tests.helpers import ROOT, fn_config, free_port, get_json, prom_query, wait_for
from tests.shared_procs import SHARED_PIDS

pytestmark = pytest.mark.prometheus

RULES = """\
groups:
  - name: test
    interval: 1s
    rules:
      - alert: ErrorsSeen
        expr: sum by (processor) (increase(mpobs_processor_errors_total[30s])) > 0
        for: 2s
        labels: {severity: page}
        annotations:
          summary: "processor {{ $labels.processor }} has errors"
"""

FNS = "def f(line):\n    if 'BAD' in line:\n        raise ValueError('bad line')\n    return line\n"


@dataclass
class Scraped:
    """A live followed run (its dashboard at ``url``) and a Prometheus (at ``prom``) scraping it."""

    url: str
    prom: str
    folder: Path


def _writer(log: Path, stop: threading.Event) -> None:
    """Lines at a changing pace (so rates move), one in ten failing at the python processor."""
    n = 0
    while not stop.wait(0.2):
        count = 50 + 40 * (n // 250 % 3)
        with open(log, "a") as f:
            f.write("".join(f"line {n + i} {'BAD' if (n + i) % 10 == 0 else 'ok'}\n" for i in range(count)))
        n += count


def _stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    import sys

    exe = shutil.which("prometheus")
    assert exe, "Debian prometheus is not installed (scripts/setup.sh --test installs it)"
    folder = tmp_path_factory.mktemp("alertprom")
    log = folder / "app.log"
    log.write_text("")
    rules = folder / "rules.yml"
    rules.write_text(RULES)
    defaults = ROOT / "mpobs" / "alerts" / "defaults.yml"
    config = fn_config(
        folder,
        "promfns",
        FNS,
        [
            {"type": "tag_extractor", "id": "tags"},
            {"type": "python", "id": "f", "inputs": ["tags"], "function": "promfns:f"},
        ],
    )
    port, prom_port = free_port(), free_port()
    url, prom = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prom_port}"
    stop = threading.Event()
    writer = threading.Thread(target=_writer, args=(log, stop), daemon=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(folder / "mpobs.stderr", "wb") as err:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "mpobs",
                        "process",
                        str(log),
                        "-F",
                        "-c",
                        str(config),
                        "-w",
                        "2",
                        "-o",
                        str(folder / "out"),
                        "-q",
                        "--dashboard",
                        "--dashboard-port",
                        str(port),
                        "--linger",
                        "0",
                        "--alerts",
                        str(rules),
                        "--alerts",
                        str(defaults),
                        "--alerts-interval",
                        "1",
                    ],
                    cwd=folder,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            )
        (folder / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{rules}', '{defaults}']\n"
            "scrape_configs:\n"
            "  - job_name: mpobs\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
        )
        with open(folder / "prometheus.log", "wb") as plog:
            procs.append(
                subprocess.Popen(
                    [
                        exe,
                        f"--config.file={folder / 'prometheus.yml'}",
                        f"--storage.tsdb.path={folder / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{prom_port}",
                        "--log.level=warn",
                    ],
                    stdout=plog,
                    stderr=subprocess.STDOUT,
                )
            )
        SHARED_PIDS.update(p.pid for p in procs)
        wait_for(lambda: get_json(f"{url}/healthz")[0] == 200, 30, what="the dashboard")
        writer.start()
        wait_for(lambda: prom_query(prom, "up")["result"], 30, interval=0.5, what="Prometheus's first scrape")
        yield Scraped(url, prom, folder)
    finally:
        stop.set()
        if writer.is_alive():
            writer.join()
        for proc, sig in zip(reversed(procs), (signal.SIGTERM, signal.SIGTERM)):
            _stop(proc, sig)
        SHARED_PIDS.difference_update(p.pid for p in procs)
    assert procs and procs[0].returncode == 0, (folder / "mpobs.stderr").read_text()


def _firing(alerts: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    got = [a for a in alerts if a["labels"]["alertname"] == name and a["state"] == "firing"]
    return sorted(({"labels": a["labels"], "annotations": a["annotations"]} for a in got), key=str)


def test_prometheus_and_mpobs_fire_the_same_alert(scraped: Scraped) -> None:
    def both_fire() -> Any:
        ours = _firing(get_json(f"{scraped.url}/alerts")[1]["data"]["alerts"], "ErrorsSeen")
        with urllib.request.urlopen(f"{scraped.prom}/api/v1/alerts", timeout=10) as r:
            theirs = _firing(json.loads(r.read())["data"]["alerts"], "ErrorsSeen")
        return (ours, theirs) if ours and theirs else None

    ours, theirs = wait_for(both_fire, 60, interval=0.5, what="ErrorsSeen firing in mpobs and in Prometheus")
    assert (
        ours
        == theirs
        == [
            {
                "labels": {"alertname": "ErrorsSeen", "processor": "f", "severity": "page"},
                "annotations": {"summary": "processor f has errors"},
            }
        ]
    )
    # Prometheus evaluates the shipped defaults over the same series without an error.
    with urllib.request.urlopen(f"{scraped.prom}/api/v1/rules", timeout=10) as r:
        groups = json.loads(r.read())["data"]["groups"]
    health = {rule["name"]: (rule["health"], rule.get("lastError", "")) for g in groups for rule in g["rules"]}
    assert health == dict.fromkeys(health, ("ok", "")) and len(health) == 5, health
    err = (scraped.folder / "mpobs.stderr").read_text()
    assert 'alert ErrorsSeen{processor="f",severity="page"} firing' in err and "Traceback" not in err


#: Expressions a rule writer uses, over counters that grow, gauges, and histograms.
TABLE = [
    "mpobs_lines_processed_total",
    'mpobs_processor_lines_in_total{processor=~"t.*"}',
    'mpobs_processor_lines_in_total{processor!="tags"}',
    "rate(mpobs_lines_processed_total[30s])",
    "rate(mpobs_processor_lines_in_total[1m])",
    "irate(mpobs_lines_processed_total[30s])",
    "increase(mpobs_processor_errors_total[20s])",
    "delta(mpobs_run_elapsed_seconds[15s])",
    "delta(mpobs_lines_per_second[10s])",
    "sum by (processor) (rate(mpobs_processor_errors_total[1m])) / sum by (processor) "
    "(rate(mpobs_processor_lines_in_total[1m]))",
    "sum(rate(mpobs_lines_processed_total[1m])) < 0.5 * sum(rate(mpobs_lines_processed_total[5m]))",
    "sum(rate(mpobs_lines_processed_total[10s])) > bool 0.5 * sum(rate(mpobs_lines_processed_total[5m]))",
    "avg(mpobs_processor_lines_in_total)",
    "max by (job) (mpobs_processor_lines_out_total)",
    "min(mpobs_processor_lines_out_total)",
    "sum(mpobs_processor_lines_in_total)",
    "mpobs_processor_errors_total > 5",
    "mpobs_processor_errors_total > bool 5",
    "5 < mpobs_processor_errors_total",
    "mpobs_processor_errors_total / mpobs_processor_lines_in_total",
    "mpobs_processor_errors_total / on(processor) mpobs_processor_lines_in_total",
    "mpobs_processor_errors_total / ignoring(job) mpobs_processor_lines_in_total",
    "mpobs_processor_lines_out_total <= on(processor, instance) mpobs_processor_lines_in_total",
    "mpobs_processor_lines_out_total < bool ignoring(instance) mpobs_processor_lines_in_total",
    "-mpobs_lines_processed_total + 2 * mpobs_lines_processed_total - 1",
    "mpobs_lines_processed_total % 7 ^ 2",
    "mpobs_processor_lines_in_total and mpobs_processor_errors_total > 0",
    "mpobs_processor_lines_in_total unless mpobs_processor_errors_total > 0",
    "mpobs_processor_errors_total > 0 or mpobs_processor_lines_in_total",
    'sum(increase(mpobs_lines_processed_total[1m])) == 0 and on() mpobs_run_state{state="running"} == 1',
    'mpobs_run_state{state="running"} == 1 and on() mpobs_run_elapsed_seconds > 5',
    "histogram_quantile(0.9, sum by (le, processor) (rate(mpobs_processor_batch_seconds_bucket[30s])))",
    "histogram_quantile(0.5, rate(mpobs_processor_batch_seconds_bucket[1m]))",
    "histogram_quantile(0.99, mpobs_processor_batch_seconds_bucket)",
    "absent(mpobs_no_such_metric)",
    'absent(mpobs_lines_processed_total{job="elsewhere", instance=~"x.*"})',
    "absent(mpobs_lines_processed_total)",
    "increase(mpobs_workers_restarted_total[1m]) > 0",
]


#: Conditions that do not hold in this run: they must select nothing in both.
EMPTY = {
    "sum(rate(mpobs_lines_processed_total[1m])) < 0.5 * sum(rate(mpobs_lines_processed_total[5m]))",
    'sum(increase(mpobs_lines_processed_total[1m])) == 0 and on() mpobs_run_state{state="running"} == 1',
    "absent(mpobs_lines_processed_total)",
    "increase(mpobs_workers_restarted_total[1m]) > 0",
}


def _store_from(prom: str, at: float) -> SeriesStore:
    """Prometheus's raw samples of every mpobs series in the last 10 minutes before ``at``."""
    store = SeriesStore(3_600_000)
    for series in prom_query(prom, '{__name__=~"mpobs_.+"}[10m]', at)["result"]:
        key = tuple(sorted(series["metric"].items()))
        for ts, value in series["values"]:
            store.add(key, round(float(ts) * 1000), float(value))
    return store


def _theirs(prom: str, expr: str, at: float) -> dict[tuple[tuple[str, str], ...], float]:
    data = prom_query(prom, expr, at)
    if data["resultType"] == "scalar":
        return {(): float(data["result"][1])}
    return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in data["result"]}


def _ours(got: Any) -> dict[tuple[tuple[str, str], ...], float]:
    if isinstance(got, float):
        return {(): got}
    return {tuple(sorted(key)): value for key, value in got}


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def test_promql_values_match_prometheus_over_the_same_samples(scraped: Scraped) -> None:
    # Enough history for the ranges to hold several scrapes and a changing pace.
    wait_for(
        lambda: float(prom_query(scraped.prom, "mpobs_run_elapsed_seconds")["result"][0]["value"][1]) > 25,
        60,
        interval=0.5,
        what="25 s of scrapes",
    )
    # Half a scrape before the newest one in the TSDB: a target's scrapes are stored in order, so every
    # one up to ``at`` is there (however late Prometheus stored the last ones), and none comes later.
    newest = float(prom_query(scraped.prom, "timestamp(mpobs_run_elapsed_seconds)")["result"][0]["value"][1])
    at = round(newest - 0.5, 3)
    evaluator = Evaluator(_store_from(scraped.prom, at))
    assert {NAME} <= {k for key in evaluator.store.series for k, _ in key}
    t_ms = round(at * 1000)
    wrong, empty = [], []
    for expr in TABLE:
        theirs, ours = _theirs(scraped.prom, expr, at), _ours(evaluator.query(expr, t_ms))
        if not theirs and expr not in EMPTY:
            empty.append(expr)
        if theirs.keys() != ours.keys() or not all(_same(ours[k], v) for k, v in theirs.items()):
            wrong.append(f"{expr}\n  prometheus: {theirs}\n  mpobs:      {ours}")
    assert not wrong, "\n".join(wrong)
    assert not empty, f"expressions that select nothing (the table would test nothing): {empty}"
