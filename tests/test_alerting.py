"""Alert rules evaluated by mpobs itself: PromQL values, the pending/firing/resolved cycle, exit 4."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mpobs.alerts.promql import Evaluator
from mpobs.alerts.rules import load_rules
from mpobs.alerts.store import SeriesStore, labels_of
from mpobs.alerts.watch import AlertOptions, AlertWatch, expand, go_e, go_v, rfc3339
from tests.helpers import fn_config

T0 = 1_700_000_000_000  # ms


def _store(points: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[int, float]]]) -> Evaluator:
    store = SeriesStore(3_600_000)
    for (name, labels), pts in points.items():
        for t, v in pts:
            store.add(labels_of(name, dict(labels)), T0 + t, v)
    return Evaluator(store)


def _values(got: Any) -> dict[tuple, float]:
    return {tuple(k for k in key): v for key, v in got}


def test_rate_and_increase_extrapolate_like_prometheus() -> None:
    # 10 s samples of a counter growing 10/s: rate over 1m at the last sample is 10, increase 600.
    ev = _store({("c_total", (("p", "a"),)): [(i * 10_000, 100.0 * i) for i in range(13)]})
    t = T0 + 120_000
    assert _values(ev.query("rate(c_total[1m])", t)) == {(("p", "a"),): pytest.approx(10.0)}
    assert _values(ev.query("increase(c_total[1m])", t)) == {(("p", "a"),): pytest.approx(600.0)}
    assert _values(ev.query("irate(c_total[1m])", t)) == {(("p", "a"),): pytest.approx(10.0)}
    # A counter reset (a restart) is not a fall: 1200 -> 50 counts as +50.
    ev = _store({("c_total", ()): [(0, 1000.0), (10_000, 1200.0), (20_000, 50.0)]})
    assert _values(ev.query("increase(c_total[20s])", T0 + 20_000))[()] == pytest.approx((200 + 50) * 1.0)
    assert _values(ev.query("delta(c_total[20s])", T0 + 20_000))[()] == pytest.approx(-950.0)


def test_aggregation_matching_comparison_and_sets() -> None:
    ev = _store(
        {
            ("e_total", (("p", "a"),)): [(0, 5.0)],
            ("e_total", (("p", "b"),)): [(0, 0.0)],
            ("l_total", (("p", "a"),)): [(0, 50.0)],
            ("l_total", (("p", "b"),)): [(0, 100.0)],
            ("up", ()): [(0, 1.0)],
        }
    )
    t = T0
    assert _values(ev.query("sum(l_total)", t)) == {(): 150.0}
    assert _values(ev.query("avg(l_total)", t)) == {(): 75.0}
    assert _values(ev.query("max by (p) (l_total)", t)) == {(("p", "a"),): 50.0, (("p", "b"),): 100.0}
    ratio = "sum by (p) (e_total) / sum by (p) (l_total)"
    assert _values(ev.query(ratio, t)) == {(("p", "a"),): 0.1, (("p", "b"),): 0.0}
    assert _values(ev.query(ratio + " > 0.05", t)) == {(("p", "a"),): 0.1}
    assert _values(ev.query(ratio + " > bool 0.05", t)) == {(("p", "a"),): 1.0, (("p", "b"),): 0.0}
    assert _values(ev.query("0.5 * sum(l_total)", t)) == {(): 75.0}
    assert len(ev.query("sum(l_total) > 100 and on() up == 1", t)) == 1
    assert ev.query("sum(l_total) > 100 and on() up == 0", t) == []
    assert ev.query('absent(nothing_total{p="x"})', t) == [((("p", "x"),), 1.0)]
    assert ev.query("absent(up)", t) == []
    assert ev.query("up", t + 6 * 60_000) == []  # older than the 5-minute lookback


def test_histogram_quantile_interpolates_in_the_bucket() -> None:
    buckets = {("h_bucket", (("le", le),)): [(0, c)] for le, c in [("0.1", 10.0), ("0.2", 30.0), ("+Inf", 40.0)]}
    ev = _store(buckets)
    ((_, p50),) = ev.query("histogram_quantile(0.5, h_bucket)", T0)
    assert p50 == pytest.approx(0.1 + 0.1 * (20 - 10) / 20)
    ((_, p99),) = ev.query("histogram_quantile(0.99, h_bucket)", T0)
    assert p99 == pytest.approx(0.2)  # the rank falls in +Inf: the highest finite bound


def test_templates_and_values_print_as_go_does() -> None:
    assert [go_v(v) for v in (0.0625, 1.0, 1e6, 123456.0, 1e-5)] == ["0.0625", "1", "1e+06", "123456", "1e-05"]
    assert [go_e(v) for v in (1.0, 274.0, 0.5)] == ["1e+00", "2.74e+02", "5e-01"]
    assert expand("{{ $labels.p }} at {{ $value }}{{$labels.none}}", {"p": "a"}, 0.25) == "a at 0.25"


RULES = """
groups:
  - name: g
    rules:
      - alert: ErrorsSeen
        expr: sum by (processor) (mpobs_processor_errors_total) > 2
        for: 2s
        keep_firing_for: 1s
        labels: {severity: page}
        annotations: {summary: "{{ $labels.processor }}: {{ $value }} errors"}
"""


class Clock:
    def __init__(self) -> None:
        self.t = T0 / 1000

    def __call__(self) -> float:
        return self.t


def _watch(tmp_path: Path, interval: float, say: Any = lambda _: None, **opts: Any) -> tuple[AlertWatch, Clock]:
    """An AlertWatch over RULES on a clock the test moves."""
    path = tmp_path / "r.yml"
    path.write_text(RULES)
    clock = Clock()
    return AlertWatch(AlertOptions(tuple(load_rules(str(path))), interval, **opts), say, clock), clock


def _doc(errors: int) -> dict[str, Any]:
    return {"processors": {"f": {"errors": errors, "lines_in": 10}}, "system": {"state": "running"}}


def test_pending_firing_kept_then_resolved(tmp_path: Path) -> None:
    said: list[str] = []
    watch, clock = _watch(tmp_path, 1.0, said.append, fail_on=("ErrorsSeen",))
    states = []
    for errors in (0, 3, 4, 5, 5, 1, 1, 1):
        watch.tick(lambda e=errors: _doc(e))
        states.append([a["state"] for a in watch.doc()["alerts"]])
        clock.t += 1
    # pending at 3 errors, firing 2 s later, kept firing 1 s after the condition ended, then resolved.
    assert states == [[], ["pending"], ["pending"], ["firing"], ["firing"], ["firing"], [], []]
    assert [line.split(" ")[2] for line in said] == ["firing", "resolved"]
    assert said[0].startswith('alert ErrorsSeen{processor="f",severity="page"} firing (value 5e+00): f: 5 errors')
    assert watch.failed is not None and "ErrorsSeen" in watch.failed
    assert [e["event"] for e in watch.doc()["events"]] == ["firing", "resolved"]


def test_the_run_s_end_leaves_firing_alerts_firing_and_drops_pending_ones(tmp_path: Path) -> None:
    said: list[str] = []
    watch, clock = _watch(tmp_path, 1.0, said.append)
    for errors in (3, 4, 5):  # pending, pending, firing
        watch.tick(lambda e=errors: _doc(e))
        clock.t += 1
    assert [a["state"] for a in watch.doc()["alerts"]] == ["firing"]
    watch.finish(lambda: _doc(5))
    doc = watch.doc()
    assert [a["state"] for a in doc["alerts"]] == ["firing"] and doc["rules"][0]["state"] == "firing"
    assert [e["event"] for e in doc["events"]] == ["firing", "still_firing"]
    assert said[-1] == 'alert ErrorsSeen{processor="f",severity="page"} still firing when the run ended (1 s firing)'
    assert doc["ended_at"] == rfc3339(clock.t)
    # A pending alert at the end never fired: it is dropped, and nothing is said of it.
    watch, clock = _watch(tmp_path, 1.0, said.append)
    watch.tick(lambda: _doc(3))
    watch.finish(lambda: _doc(3))
    assert watch.doc()["alerts"] == [] and [e["event"] for e in watch.doc()["events"]] == []


def _rules(tmp_path: Path, expr: str, name: str = "Seen") -> Path:
    path = tmp_path / "rules.yml"
    path.write_text(
        f"groups:\n  - name: g\n    rules:\n      - alert: {name}\n        expr: '{expr}'\n"
        "        annotations: {summary: 'seen {{ $value }}'}\n"
    )
    return path


@pytest.mark.parametrize("workers", [1, 2])
def test_a_run_records_its_alerts_and_fail_on_alert_exits_4(tmp_path: Path, cli: Any, workers: int) -> None:
    log = tmp_path / "in.log"
    log.write_text("".join(f"line {i} {'BAD' if i % 10 == 0 else 'ok'}\n" for i in range(400)))
    source = "def f(line):\n    if 'BAD' in line:\n        raise ValueError('bad')\n    return line\n"
    config = fn_config(tmp_path, "alfns", source, [{"type": "python", "id": "f", "function": "alfns:f"}])
    rules = _rules(tmp_path, "sum(mpobs_processor_errors_total) > 0")
    m = tmp_path / "m.json"
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
        "--alerts",
        str(rules),
        "--alerts-interval",
        "0.2",
        "--save-metrics",
        str(m),
    )
    err = res.stderr.decode()
    assert res.returncode == 0, err
    assert "alert Seen{} firing (value 4e+01): seen 40" in err, err
    # The run's end resolves nothing: nobody saw the condition end (as a Prometheus that goes away).
    assert "alert Seen{} still firing when the run ended" in err and "resolved" not in err, err
    saved = json.loads(m.read_text())["alerts"]
    assert [e["event"] for e in saved["events"]][-2:] == ["firing", "still_firing"]
    assert [a["state"] for a in saved["alerts"]] == ["firing"] and saved["ended_at"] is not None
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
        "--alerts",
        str(rules),
        "--fail-on-alert",
        "Seen",
    )
    assert res.returncode == 4, res.stderr.decode()
    assert "mpobs: error: alert Seen fired: seen 40 (--fail-on-alert)" in res.stderr.decode()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--fail-on-alert", "Nope"], "--fail-on-alert Nope: no such alert"),
        (["--alertmanager", "localhost:9093"], "--alertmanager must be an http:// or https:// URL"),
    ],
)
def test_bad_alert_options_exit_2(tmp_path: Path, cli: Any, args: list[str], says: str) -> None:
    log = tmp_path / "in.log"
    log.write_text("a\n")
    res = cli("process", str(log), "-q", "--alerts", str(_rules(tmp_path, "mpobs_errors_total > 0")), *args)
    assert res.returncode == 2 and says in res.stderr.decode() and "Traceback" not in res.stderr.decode()
    res = cli("process", str(log), "-q", "--fail-on-alert", "any")
    assert res.returncode == 2 and "--fail-on-alert need --alerts" in res.stderr.decode()


def test_unknown_metric_or_construct_is_refused_at_start(tmp_path: Path, cli: Any) -> None:
    log = tmp_path / "in.log"
    log.write_text("a\n")
    res = cli("process", str(log), "-q", "--alerts", str(_rules(tmp_path, "mpobs_no_such_total > 0")))
    assert res.returncode == 2 and "no metric 'mpobs_no_such_total'" in res.stderr.decode()
    res = cli("process", str(log), "-q", "--alerts", str(_rules(tmp_path, "topk(1, mpobs_errors_total)")))
    assert res.returncode == 2 and "rule 'Seen'" in res.stderr.decode() and "topk" in res.stderr.decode()


def test_alerts_endpoint_and_alerts_series_show_the_watch(tmp_path: Path) -> None:
    from dashboard_app import create_app
    from dashboard_app.sources import SavedSource

    watch, clock = _watch(tmp_path, 1.0)
    for _ in range(3):
        watch.tick(lambda: _doc(5))
        clock.t += 1
    doc = dict(_doc(5), alerts=watch.doc())
    saved = tmp_path / "m.json"
    saved.write_text(json.dumps(doc))
    c = create_app(SavedSource.load(str(saved))).test_client()
    body = c.get("/alerts").get_json()
    (alert,) = body["data"]["alerts"]
    assert body["status"] == "success" and alert["state"] == "firing" and alert["value"] == "5e+00"
    assert alert["labels"] == {"processor": "f", "severity": "page", "alertname": "ErrorsSeen"}
    assert c.get("/api/v1/alerts").get_json() == body
    text = c.get("/metrics").get_data(as_text=True)
    assert 'ALERTS{alertname="ErrorsSeen",alertstate="firing",processor="f",severity="page"} 1.0' in text


def test_fail_on_alert_stops_a_run_that_would_not_end(tmp_path: Path, cli: Any) -> None:
    """A followed log never ends by itself: only the alert, evaluated during the run, can end it (exit 4)."""
    log = tmp_path / "in.log"
    log.write_text("".join(f"line {i} {'BAD' if i % 10 == 0 else 'ok'}\n" for i in range(100)))
    source = "def f(line):\n    if 'BAD' in line:\n        raise ValueError('bad')\n    return line\n"
    config = fn_config(tmp_path, "alfns", source, [{"type": "python", "id": "f", "function": "alfns:f"}])
    rules = _rules(tmp_path, "sum(mpobs_processor_errors_total) > 0")
    res = cli(
        "process",
        str(log),
        "-F",
        "-c",
        str(config),
        "-w",
        "1",
        "-o",
        str(tmp_path / "out"),
        "-q",
        "--alerts",
        str(rules),
        "--alerts-interval",
        "0.2",
        "--fail-on-alert",
        "any",
    )
    assert res.returncode == 4, res.stderr.decode()
    assert "alert Seen fired: seen 10 (--fail-on-alert)" in res.stderr.decode()
    assert (tmp_path / "out").read_text().count("\n") == 90  # what was read is in the output


def test_the_store_keeps_what_the_rules_read_and_marks_what_left_the_scrape() -> None:
    """A long run's store is trimmed to the longest range (or the lookback): every value the
    rules read is the one an untrimmed store gives; a series gone from the scrape is stale."""
    from mpobs.alerts.promql import LOOKBACK_MS

    exprs = ["rate(c_total[10m])", "increase(c_total{p='a'}[1m])", "irate(c_total[30s])", "g", "sum(g)"]
    trimmed, full = SeriesStore(max(600_000, LOOKBACK_MS)), SeriesStore(10 * 3_600_000)
    at = T0
    for i in range(2000):  # 2000 scrapes a second apart: the trimmed store keeps 601 of them
        samples = [("c_total", {"p": "a"}, 3.0 * i), ("c_total", {"p": "b"}, 5.0 * i % 700)]
        if i < 1500:
            samples.append(("g", {}, float(i)))  # leaves the scrape at i = 1500
        for store in (trimmed, full):
            store.scrape(at, samples)
            store.scrape(at, samples)  # the same millisecond again: dropped, as Prometheus drops it
        at += 1000
    t = at - 1000
    assert len(trimmed.series[labels_of("c_total", {"p": "a"})]) == 601
    assert len(full.series[labels_of("c_total", {"p": "a"})]) == 2000
    for expr in exprs:
        assert Evaluator(trimmed).query(expr, t) == Evaluator(full).query(expr, t), expr
    assert Evaluator(trimmed).query("g", t) == []  # stale since it left the scrape
    assert _values(Evaluator(full).query("g", T0 + 1_499_000)) == {(("__name__", "g"),): 1499.0}
    trimmed.scrape(t - 5000, [("c_total", {"p": "a"}, 0.0)])  # a clock set back: dropped
    assert trimmed.series[labels_of("c_total", {"p": "a"})][-1] == (t, 3.0 * 1999)


def test_rules_are_evaluated_on_their_own_beat_not_the_loops(tmp_path: Path) -> None:
    """The coordinator looks every 0.1 s or so; a 0.15 s interval stays 0.15 s (20 evaluations in 3 s, not 15)."""
    watch, clock = _watch(tmp_path, 0.15)
    for _ in range(30):
        watch.tick(lambda: _doc(0))
        clock.t += 0.1
    assert watch.rules[0].evaluations == 20


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_run_ended_by_an_alert_keeps_what_the_alert_counted(tmp_path: Path, make_log: Any, seed: int) -> None:
    """The rules read live counts, which include finished tasks whose output is not written yet.

    The run ends (exit 4) only once those are in the output: the test executor writes a placed
    task's output at a random later poll, so a run that ended at once lost what the alert had
    counted (its final counts, equal to its output, fell below the alert's value).
    """
    import re

    from mpobs.cli.alerts import alert_options
    from mpobs.executors.testing import AdversarialExecutor
    from mpobs.pipeline.config import load_config
    from mpobs.run.coordinator import Coordinator
    from mpobs.run.options import RunOptions

    log = make_log(3000)
    pipeline = load_config(None)
    rules = _rules(tmp_path, "sum(mpobs_lines_processed_total) > 0")
    alerts = alert_options(pipeline, (str(rules),), 0.1, None, ("any",), set())
    out = tmp_path / "out"
    opts = RunOptions(str(log), str(out), workers=4, task_bytes=1024, alerts=alerts)
    executor = AdversarialExecutor(capacity=4, seed=seed, lose=0.0, writes_output=True)
    outcome = Coordinator(pipeline, opts, executor=executor).run()
    assert outcome.exit_code == 4, outcome.message
    m = re.search(r"seen (\d+)", outcome.message or "")
    assert m is not None, outcome.message
    counted, final = int(m[1]), outcome.stats["system"]["total_lines"]
    assert 0 < counted <= final < 3000  # ended early, with all it counted
    lines_out = sum(p["lines_out"] for k, p in outcome.stats["processors"].items() if k.endswith("_filter"))
    assert out.read_text().count("\n") == lines_out  # the output is exactly the committed lines
