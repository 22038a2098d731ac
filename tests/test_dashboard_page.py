"""The page in headless Chromium: it shows the run's numbers, renders log text as text, runs no injected code."""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboard_app.sources import LiveSource
from tests.helpers import (
    XSS_LINE,
    big_log,
    fn_config,
    free_port,
    get_json,
    kill_if_running,
    launch_chromium,
    serve_in_child,
    small_run,
    start_cli,
    stop_child,
    stop_cli,
    wait_for,
)

pytestmark = pytest.mark.browser


@pytest.fixture
def browser_page() -> Iterator[tuple[Any, list[str]]]:
    """A fresh Chromium page (1440x1000) and the list its console errors and page errors go to."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            yield page, problems
        finally:
            browser.close()


def test_page_shows_numbers_and_log_text_as_text(tmp_path: Path, browser_page: tuple[Any, list[str]]) -> None:
    page, problems = browser_page
    run = small_run(tmp_path)
    source = LiveSource(run.seg, run.meta, cache_s=0.0)
    source.handle(("events", run.events.traces, run.events.errors))
    source.handle(("counters", run.counters))
    # A Dask run's view of its cluster (mpobs.executors.dask.executor.DaskExecutor.view), as the coordinator sends it.
    worker = {
        "address": "tcp://10.0.0.2:4000",
        "name": "w-1",
        "nthreads": 1,
        "tasks": 3,
        "lines": 1500,
        "cpu_percent": 12.5,
        "rss_bytes": 64 << 20,
    }
    source.handle(
        (
            "executor",
            {
                "name": "dask",
                "scheduler": "tcp://10.0.0.1:8786",
                "dashboard": "http://127.0.0.1:8787/status",
                "workers": [worker],
            },
        )
    )
    source.sample()
    port = free_port()
    server = serve_in_child(source, port)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: get_json(f"{url}/healthz")[0] == 200, 20, what="the server")
        stats = get_json(f"{url}/stats")[1]
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=15000)
        for pid, row in stats["processors"].items():
            tr = page.locator(f"#proc-table tr[data-processor='{pid}']")
            assert tr.locator("td[data-field='lines_in']").text_content() == f"{row['lines_in']:,}"
            assert tr.locator("td[data-field='lines_out']").text_content() == f"{row['lines_out']:,}"
            batch = tr.locator("td[data-field='batch_latency']").text_content().split(" / ")
            assert len(batch) == 3 and all(_seconds(v) > 0 for v in batch), batch
            p50, _, p99 = (_seconds(v) for v in batch)
            assert p50 == pytest.approx(row["batch_latency"]["p50_s"], rel=0.06) and p50 <= p99
            calls = tr.locator("td[data-field='call_latency']").text_content()
            assert (calls == "–") == ("call_latency" not in row), (pid, calls)
            node = page.locator(f"#dag g.node[data-id='{pid}']")
            assert node.locator(".node-in").text_content().split() == ["in", f"{row['lines_in']:,}"]
            assert node.locator(".node-out").text_content().split() == ["out", f"{row['lines_out']:,}"]
        assert page.locator("#k-lines").text_content() == f"{run.lines:,}"
        cells = page.locator("#worker-table tr[data-worker='tcp://10.0.0.2:4000'] td").all_text_contents()
        assert cells[0] == "tcp://10.0.0.2:4000" and cells[2] == "alive" and cells[3:5] == ["3", "1,500"]
        assert page.locator("#executor-info").text_content().startswith("on Dask (tcp://10.0.0.1:8786)")
        assert page.locator("#dask-dashboard-link").get_attribute("href") == "http://127.0.0.1:8787/status"
        assert page.locator("#dag path.edge-line").count() == len(run.meta.edges)
        assert page.locator("#alerts-panel").is_hidden() and page.locator("#alerts-pill").is_hidden()  # no --alerts
        # The injected line: visible as text, in the traces and in the errors; nothing ran, no <img> made.
        page.wait_for_selector("#traces li.trace", timeout=10000)
        newest = page.locator(f"#traces li[data-line='small.log:{run.lines}'] .trace-text")
        assert newest.text_content() == XSS_LINE
        assert page.locator("#errors pre.logline", has_text="onerror").first.text_content() == XSS_LINE
        assert page.locator("img").count() == 0
        page.locator(f"#traces li[data-line='small.log:{run.lines}']").click()
        assert page.locator("#trace-title").text_content() == f"small.log:{run.lines}"
        trace = next(t for t in run.events.traces if t[0] == run.lines)  # compact: (line, text, steps, outputs)
        assert page.locator("#trace-detail li.step").count() == len(trace[2])
        assert page.locator("#trace-detail pre.logline").first.text_content() == XSS_LINE
        assert page.locator("#trace-detail .chip.st-error").count() == 1
        page.wait_for_timeout(1200)  # a few more polls
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert problems == []
    finally:
        stop_child(server)
        source.stop()
        run.seg.close()


def test_page_during_a_real_run_and_screenshot(tmp_path: Path, browser_page: tuple[Any, list[str]]) -> None:
    from playwright.sync_api import expect

    page, problems = browser_page
    log = big_log(tmp_path / "access.log", 4_000_000)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Lingers until the test's SIGINT (or 600 s): on a busy machine the run alone can take a minute.
    proc = start_cli(
        "process",
        str(log),
        "--workers",
        "2",
        "--dashboard",
        "--dashboard-port",
        str(port),
        "--linger",
        "600",
        "--trace",
        "--trace-sample",
        "0.001",
        "-o",
        "out.log",
        "-q",
        cwd=tmp_path,
    )
    try:
        wait_for(lambda: get_json(f"{url}/healthz")[0] == 200, 30, what="the dashboard")
        page.goto(url + "/")
        page.wait_for_selector("#run-state.state-running", timeout=15000)
        page.wait_for_selector("#run-state.state-done", timeout=240_000)
        # The final numbers no longer change; the page polls slower once final, so each list is waited
        # for until it shows them (not for a fixed time).
        stats = get_json(f"{url}/stats")[1]
        assert stats["system"]["state"] == "done"
        shown = {"timeout": 30_000}
        for pid, row in stats["processors"].items():
            cell = page.locator(f"#proc-table tr[data-processor='{pid}'] td[data-field='lines_out']")
            expect(cell).to_have_text(f"{row['lines_out']:,}", **shown)
        expect(page.locator("#k-lines")).to_have_text("4,000,000", **shown)
        inputs = page.locator("#input-table tbody tr")
        expect(inputs).to_have_count(1, **shown)
        expect(inputs.locator("td[data-field='lines']")).to_have_text("4,000,000", **shown)
        expect(inputs.locator("td[data-field='state']")).to_have_text("done", **shown)
        expect(page.locator("#dag g.node[data-id='input'] .node-in")).to_have_text("read 4,000,000", **shown)
        page.locator("#traces li.trace").first.wait_for(**shown)
        for w in stats["workers"]:  # each worker's time: busy / waiting for work / waiting for the output
            shares = page.locator(f"#worker-table tr[data-slot='{w['slot']}'] td[data-field='time_shares']")
            want = " / ".join(
                f"{math.floor(w['time_shares'][k] * 100 + 0.5)} %" for k in ("busy", "waiting", "output_wait")
            )  # JS Math.round
            expect(shares).to_have_text(want, **shown)
        assert problems == []
        # Into tmp_path only: a test never writes into the tree. The README's picture is
        # refreshed by hand with `MPOBS_SCREENSHOT=docs/dashboard.png pytest -k page_during_a_real_run`.
        shot = Path(os.environ.get("MPOBS_SCREENSHOT") or tmp_path / "dashboard.png")
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        proc.send_signal(signal.SIGINT)
        stop_cli(proc)
    finally:
        kill_if_running(proc)
    assert proc.returncode == 0


ALERT_RULES = """\
groups:
  - name: page
    rules:
      - alert: ErrorsSeen
        expr: sum by (processor) (mpobs_processor_errors_total) > 0
        labels: {severity: page}
        annotations: {summary: "processor {{ $labels.processor }} failed {{ $value }} times"}
      - alert: LongWait
        expr: sum(mpobs_lines_processed_total) > 0
        for: 1h
"""


def test_page_shows_the_alerts_of_a_followed_run(tmp_path: Path, browser_page: tuple[Any, list[str]]) -> None:
    page, problems = browser_page
    log = tmp_path / "app.log"
    log.write_text("".join(f"line {i} {'BAD' if i % 10 == 0 else 'ok'}\n" for i in range(100)))
    fns = "def f(line):\n    if 'BAD' in line:\n        raise ValueError('bad')\n    return line\n"
    config = fn_config(tmp_path, "pagefns", fns, [{"type": "python", "id": "f", "function": "pagefns:f"}])
    (tmp_path / "rules.yml").write_text(ALERT_RULES)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_cli(
        "process",
        str(log),
        "-F",
        "-c",
        str(config),
        "-w",
        "2",
        "--dashboard",
        "--dashboard-port",
        str(port),
        "--linger",
        "60",
        "--alerts",
        "rules.yml",
        "--alerts-interval",
        "0.2",
        "-o",
        "out",
        "-q",
        cwd=tmp_path,
    )
    try:
        wait_for(lambda: get_json(f"{url}/healthz")[0] == 200, 30, what="the dashboard")
        page.goto(url + "/")
        firing = page.locator("#alert-table tr[data-alert='ErrorsSeen'][data-state='firing']")
        firing.wait_for(timeout=30000)  # the run's start, its first errors and a rule evaluation: seconds when busy
        page.locator("#alert-table tr[data-alert='LongWait'][data-state='pending']").wait_for(timeout=30000)
        (alert,) = [a for a in get_json(f"{url}/alerts")[1]["data"]["alerts"] if a["state"] == "firing"]
        assert firing.locator("td[data-field='summary']").text_content() == "processor f failed 10 times"
        assert firing.locator("td[data-field='labels']").text_content() == "processor=f, severity=page"
        assert firing.locator("td[data-field='value']").text_content() == alert["value"] == "1e+01"
        assert page.locator("#alerts-pill").text_content() == "1 firing"
        for rule in ("ErrorsSeen", "LongWait"):
            cell = page.locator(f"#rule-table tr[data-rule='{rule}'] td[data-field='evaluations']")
            assert int(cell.text_content().replace(",", "")) > 0
        assert _event(page) == ["firing", "ErrorsSeen"]
        # The run ends (SIGTERM): what fires stays firing (nothing saw it end), the pending one is
        # dropped, and the lingering page shows it.
        proc.send_signal(signal.SIGTERM)
        page.locator("#alert-events li .chip", has_text="still firing").wait_for(timeout=30000)
        assert _event(page) == ["still firing", "ErrorsSeen"]
        assert page.locator("#alert-table tr[data-alert='LongWait']").count() == 0
        assert page.locator("#alert-table tr[data-alert='ErrorsSeen'][data-state='firing']").count() == 1
        assert page.locator("#alerts-pill").text_content() == "1 firing"
        assert problems == []
        proc.send_signal(signal.SIGINT)
        err = stop_cli(proc)
    finally:
        kill_if_running(proc)
    assert proc.returncode == 0, err


def _event(page: Any) -> list[str]:
    """The newest alert event on the page: [event, alertname]."""
    newest = page.locator("#alert-events li").first
    return [newest.locator(".chip").text_content(), newest.locator(".id").text_content()]


def _seconds(text: str) -> float:
    """A duration as the page shows it ("12.3 µs", "4.1 ms", "2 s") in seconds."""
    value, unit = text.replace(",", "").split()
    return float(value) * {"µs": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def test_page_shows_the_tags_and_each_counter_s_top_keys(tmp_path: Path, browser_page: tuple[Any, list[str]]) -> None:
    """The page reads like the stderr summary: lines per tag, each counter's top 10 keys with count and share,
    the rest summed in one row; the numbers are the run's own."""
    import json

    page, problems = browser_page
    log = big_log(tmp_path / "in.log", 20_000, block=20_000)
    (tmp_path / "c.json").write_text(
        json.dumps(
            {
                "processors": [
                    {"type": "tag_extractor", "id": "tags"},
                    {"type": "counter", "id": "components", "by": r"\[(\w+)\]"},
                    {"type": "counter", "id": "last_word", "by": r"(\w+)$"},
                ]
            }
        )
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_cli(
        "process",
        str(log),
        "-c",
        "c.json",
        "-w",
        "2",
        "-o",
        "out",
        "--dashboard",
        "--dashboard-port",
        str(port),
        "--linger",
        "60",
        cwd=tmp_path,
    )
    try:
        wait_for(
            lambda: "dashboard serving the final state" in (tmp_path / "cli.stderr").read_text(),
            60,
            what="the run's end",
        )
        stats = get_json(f"{url}/stats")[1]
        page.goto(url + "/")
        page.locator("table[data-counter='last_word'] tr[data-others]").wait_for(timeout=15000)
        for name, counts, total in [
            ("tags", stats["tags"], stats["system"]["total_lines"]),
            *((pid, c, sum(c.values())) for pid, c in stats["counters"].items()),
        ]:
            table = page.locator(f"table[data-counter='{name}']")
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            shown = [
                (
                    r.locator("td[data-field='key']").text_content(),
                    r.locator("td[data-field='count']").text_content(),
                    r.locator("td[data-field='share']").text_content(),
                )
                for r in table.locator("tbody tr").all()
            ]
            want = [(k, f"{v:,}", f"{v / total * 100:.1f} %".replace(".0 %", " %")) for k, v in ranked[:10]]
            if len(ranked) > 10:
                rest = sum(v for _, v in ranked[10:])
                want.append(
                    (f"({len(ranked) - 10:,} others)", f"{rest:,}", f"{rest / total * 100:.1f} %".replace(".0 %", " %"))
                )
            assert shown == want, name
        assert len(stats["counters"]["last_word"]) > 1000 and stats["tags"]["info"] > 0
        assert problems == []
        proc.send_signal(signal.SIGINT)
        err = stop_cli(proc)
    finally:
        kill_if_running(proc)
    assert proc.returncode == 0, err
    assert "counter last_word (top 10 of" in err  # the summary on stderr shows the same tables
