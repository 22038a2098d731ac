"""The dashboard's JSON API, /metrics and security, through Flask's test client over a real segment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboard_app import create_app
from dashboard_app.sources import LiveSource, SavedSource
from tests.helpers import XSS_LINE, SmallRun, small_run


@pytest.fixture
def run(tmp_path: Path) -> Iterator[SmallRun]:
    """A small real run (5 processors, errors, a counter, every line traced); its segment is unlinked after."""
    r = small_run(tmp_path)
    yield r
    r.seg.close()


@pytest.fixture
def source(run: SmallRun) -> Iterator[LiveSource]:
    """A live source over the run's segment, fed the run's records as the coordinator would."""
    src = LiveSource(run.seg, run.meta, grace_s=0.0, cache_s=0.0)
    for i in range(0, len(run.events.traces), 100):
        src.handle(("events", run.events.traces[i : i + 100], []))
    src.handle(("events", [], run.events.errors))
    src.handle(("counters", run.counters))
    src.sample()
    yield src
    src.stop()


@pytest.fixture
def client(source: LiveSource) -> Any:
    """A Flask test client of the app over ``source`` (no token)."""
    return create_app(source).test_client()


def test_stats_has_the_run_numbers_rates_and_workers(client: Any, run: SmallRun) -> None:
    r = client.get("/stats")
    assert r.status_code == 200
    assert r.headers["Cache-Control"] == "no-store"
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    doc = r.get_json()
    assert doc["system"]["total_lines"] == run.lines
    assert doc["system"]["state"] == "running"
    assert set(doc["processors"]) == {"tags", "route", "db_errors", "check", "levels"}
    check = doc["processors"]["check"]
    assert check["lines_in"] == run.lines
    assert check["errors"] == len(run.events.errors) > 0
    for row in doc["processors"].values():
        assert {"rate_10s", "rate_1m", "share_of_time"} <= set(row)
    assert abs(sum(r["share_of_time"] for r in doc["processors"].values()) - 1) < 0.01
    assert doc["counters"]["levels"] == run.counters["levels"]
    (w,) = doc["workers"]
    assert w["pid"] > 0 and w["lines"] == run.lines and w["tasks"] >= 1
    assert w["rss_bytes"] > 0 and w["cpu_percent"] is not None
    assert doc["dashboard"]["traces_kept"] == 1000
    (i,) = doc["inputs"]
    assert i["kind"] == "file" and i["compression"] is None and i["lines"] == i["lines_done"] == run.lines
    assert i["bytes_read"] == i["bytes_total"] == doc["system"]["bytes_total"] > 0


def test_rates_come_from_the_samples(source: LiveSource, run: SmallRun) -> None:
    from dashboard_app.history import Sample

    t = source.clock()
    source.hist.samples.clear()
    source.hist.add(Sample(t - 10, 0, 0, (0,) * 5))
    source.hist.add(Sample(t, run.lines, 50, (run.lines,) * 5))
    doc = source.stats()
    assert doc["system"]["lines_per_second_10s"] == pytest.approx(run.lines / 10, rel=0.01)
    assert doc["processors"]["tags"]["rate_1m"] == pytest.approx(run.lines / 10, rel=0.01)
    hist = source.history()
    assert hist["lines_per_s"] == [pytest.approx(run.lines / 10, rel=0.01)]
    assert hist["errors_per_s"] == [5.0]


def test_final_state_replaces_live_numbers(client: Any, source: LiveSource) -> None:
    final = client.get("/stats").get_json()
    final["system"]["state"] = "done"
    final["errors_by_type"] = [{"processor": "check", "error_type": "ValueError", "count": 3}]
    source.handle(("final", final))
    doc = client.get("/stats").get_json()
    assert doc["system"]["state"] == "done"
    assert doc["errors_by_type"][0]["count"] == 3
    assert doc["dashboard"]["final"] is True


def test_trace_newest_first_with_filters(client: Any, run: SmallRun) -> None:
    doc = client.get("/trace").get_json()
    assert doc["count"] == 100 and doc["kept"] == 1000
    nums = [t["line_number"] for t in doc["traces"]]
    assert nums == sorted(nums, reverse=True) and nums[0] == run.lines
    assert doc["traces"][0]["original_content"] == XSS_LINE
    assert len(client.get("/trace?limit=1000").get_json()["traces"]) == 1000
    assert client.get("/trace?limit=0").get_json()["traces"] == []
    one = client.get(f"/trace?line={run.lines - 5}").get_json()["traces"]
    assert [t["line_number"] for t in one] == [run.lines - 5]
    errs = client.get("/trace?status=error&limit=1000").get_json()["traces"]
    assert errs and all(any(s["status"] == "error" for s in t["path"]) for t in errs)
    routed = client.get("/trace?processor=db_errors&limit=1000").get_json()["traces"]
    assert routed and all(any(s["processor"] == "db_errors" for s in t["path"]) for t in routed)
    emitted = client.get("/trace?processor=db_errors&status=emit").get_json()["traces"]
    assert emitted and all("[db]" in t["original_content"] for t in emitted)
    assert client.get("/trace?status=route:errors").get_json()["count"] > 0
    assert client.get("/trace?status=route").get_json()["count"] == 100


def test_errors_with_filters(client: Any, run: SmallRun) -> None:
    doc = client.get("/errors?limit=5").get_json()
    assert doc["count"] == 5 and doc["kept"] == len(run.events.errors)
    assert doc["errors"][0]["line"] == XSS_LINE
    assert client.get("/errors?type=ValueError&processor=check&limit=1000").get_json()["count"] == len(
        run.events.errors
    )
    assert client.get("/errors?type=KeyError").get_json()["errors"] == []


def test_history_and_dag(client: Any, run: SmallRun) -> None:
    hist = client.get("/history").get_json()
    assert set(hist) == {"t", "lines_per_s", "errors_per_s", "processors"}
    assert set(hist["processors"]) == {p["id"] for p in run.meta.processors}
    dag = client.get("/dag").get_json()
    ids = [n["id"] for n in dag["nodes"]]
    assert ids == ["input", "tags", "route", "db_errors", "check", "levels"]
    layers = {n["id"]: n["layer"] for n in dag["nodes"]}
    assert layers == {"input": 0, "tags": 1, "route": 2, "db_errors": 3, "check": 2, "levels": 2}
    edges = {(e["from"], e["to"]): e for e in dag["edges"]}
    assert edges[("input", "tags")]["count"] == run.lines
    procs = client.get("/stats").get_json()["processors"]
    assert edges[("tags", "check")]["count"] == procs["tags"]["lines_out"]
    assert edges[("route", "db_errors")]["route"] == "errors"
    assert edges[("route", "db_errors")]["count"] == procs["db_errors"]["lines_in"] > 0


def test_metrics_exposition(client: Any, run: SmallRun) -> None:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.mimetype == "text/plain"
    text = r.get_data(as_text=True)
    assert "# TYPE mpobs_processor_lines_in_total counter" in text
    assert f'mpobs_processor_lines_in_total{{processor="check"}} {float(run.lines)}' in text
    assert f"mpobs_lines_processed_total {float(run.lines)}" in text
    assert 'mpobs_run_state{state="running"} 1.0' in text
    assert 'mpobs_counter_key_lines_total{key="error",processor="levels"}' in text


def test_healthz_reports_a_dead_worker(client: Any, run: SmallRun) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok", "reason": "running"}
    run.seg.set_worker(0, alive=0)
    r = client.get("/healthz")
    assert r.status_code == 503
    assert "worker 0" in r.get_json()["reason"] and "not replaced" in r.get_json()["reason"]
    run.seg.set_state("failed")
    assert client.get("/healthz").get_json()["reason"] == "the run failed"
    run.seg.set_state("done")
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "url",
    [
        "/trace?limit=abc",
        "/trace?limit=-1",
        "/trace?limit=1001",
        "/trace?limit=99999999999999999999",
        "/trace?limit=1.5",
        "/trace?limit=%EF%BC%91",
        "/trace?line=0",
        "/trace?line=x",
        "/trace?status=bogus",
        "/trace?processor=nope",
        "/errors?limit=abc",
        "/errors?limit=-1",
        "/errors?limit=100000",
        "/errors?processor=nope",
        "/errors?type=" + "x" * 300,
        "/history?limit=0",
        "/history?limit=abc",
    ],
)
def test_bad_parameters_get_400_json(client: Any, url: str) -> None:
    r = client.get(url)
    assert r.status_code == 400, r.get_data(as_text=True)
    doc = r.get_json()
    assert doc["status"] == 400 and doc["message"]


def test_unknown_paths_methods_and_bodies(client: Any) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and r.get_json()["error"] == "Not Found"
    for method in ("post", "put", "delete", "patch", "options"):
        r = getattr(client, method)("/stats")
        assert r.status_code == 405 and r.get_json()["status"] == 405
    r = client.post("/stats", data=b"x" * 100_000)
    assert r.status_code == 413 and r.get_json()["status"] == 413
    for path in ("/nope", "/stats", "/metrics", "/static/dashboard.js"):
        with client.get(path) as r:
            assert "Content-Security-Policy" in r.headers


def test_page_and_static_files(client: Any) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    assert "<script>" not in html and 'src="/static/dashboard.js"' in html
    js = ""
    for name in ("dashboard.js", "charts.js", "dashboard.css"):
        with client.get(f"/static/{name}") as r:
            assert r.status_code == 200
            js += r.get_data(as_text=True)
    assert "innerHTML" not in js and "setTimeout(tick" in js


def test_token_guards_everything_but_healthz(source: LiveSource) -> None:
    c = create_app(source, token="s3cret").test_client()
    for path in ("/", "/stats", "/trace", "/metrics", "/nope", "/static/dashboard.js"):
        with c.get(path) as r:
            assert r.status_code == 401, path
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert c.get("/healthz").status_code == 200
    assert c.get("/stats", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/stats", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/?token=wrong").status_code == 401
    r = c.get("/?token=s3cret")
    assert r.status_code == 303 and r.headers["Location"] == "/"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert c.get("/").status_code == 200  # the cookie now carries it
    assert c.get("/stats").status_code == 200


def test_loopback_only_hosts(source: LiveSource) -> None:
    c = create_app(source, loopback_hosts_only=True).test_client()
    assert c.get("/stats", headers={"Host": "127.0.0.1:8000"}).status_code == 200
    assert c.get("/stats", headers={"Host": "[::1]:8000"}).status_code == 200
    assert c.get("/stats", headers={"Host": "evil.example:8000"}).status_code == 403


def test_saved_metrics_source(tmp_path: Path, client: Any) -> None:
    import json

    doc = client.get("/stats").get_json()
    doc["recent_traces"] = client.get("/trace?limit=10").get_json()["traces"]
    doc["recent_errors"] = client.get("/errors?limit=10").get_json()["errors"]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    saved = create_app(SavedSource.load(str(path))).test_client()
    stats = saved.get("/stats").get_json()
    assert stats["system"]["total_lines"] == doc["system"]["total_lines"]
    assert stats["dashboard"]["source"] == "saved"
    assert saved.get("/trace?limit=3").get_json()["traces"] == doc["recent_traces"][:3]
    assert saved.get("/errors").get_json()["count"] == 10
    assert saved.get("/healthz").status_code == 200
    assert [n["id"] for n in saved.get("/dag").get_json()["nodes"]][1:] == list(doc["processors"])
    assert "mpobs_processor_lines_in_total" in saved.get("/metrics").get_data(as_text=True)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not an mpobs metrics file"):
        SavedSource.load(str(bad))
