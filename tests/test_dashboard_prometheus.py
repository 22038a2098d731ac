"""/metrics read by real Prometheus tools: promtool's linter, and a Prometheus server scraping every second."""

from __future__ import annotations

import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import big_log, free_port, get_json, prom_query, start_cli, stop_cli, wait_for

pytestmark = pytest.mark.prometheus
LINES = 400_000


def _metrics(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def test_prometheus_scrapes_the_line_count(tmp_path: Path) -> None:
    exe, promtool = shutil.which("prometheus"), shutil.which("promtool")
    assert exe and promtool, "Debian prometheus is not installed (scripts/setup.sh --test installs it)"
    log = big_log(tmp_path / "in.log", LINES)
    port, prom_port = free_port(), free_port()
    url, prom = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prom_port}"
    run = start_cli(
        "process",
        str(log),
        "--workers",
        "2",
        "--dashboard",
        "--dashboard-port",
        str(port),
        "--linger",
        "120",
        "-o",
        "out.log",
        "-q",
        cwd=tmp_path,
    )
    server = None
    try:
        wait_for(lambda: get_json(f"{url}/healthz")[0] == 200, 30, what="the dashboard")
        # promtool's linter on a live exposition (mid-run or final, both must pass).
        text = _metrics(url)
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: mpobs\n"
            "    scrape_interval: 1s\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
        )
        log_file = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
        try:
            server = subprocess.Popen(
                [
                    exe,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--log.level=warn",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        finally:
            log_file.close()

        def scraped_all() -> bool:  # the last line may be counted in a scrape made before the run was done
            got, done = (
                prom_query(prom, "mpobs_lines_processed_total")["result"],
                prom_query(prom, "mpobs_run_state{state='done'}")["result"],
            )
            return bool(got) and got[0]["value"][1] == str(LINES) and bool(done) and done[0]["value"][1] == "1"

        wait_for(scraped_all, 60, interval=0.5, what="Prometheus to hold the final line count and state")
        per_proc = prom_query(prom, "mpobs_processor_lines_in_total")["result"]
        assert {r["metric"]["processor"]: r["value"][1] for r in per_proc}["line_counter"] == str(LINES)
        assert all(r["metric"]["job"] == "mpobs" for r in per_proc)
        assert prom_query(prom, "up{job='mpobs'}")["result"][0]["value"][1] == "1"
        done = prom_query(prom, "mpobs_run_state{state='done'}")["result"]
        assert done and done[0]["value"][1] == "1"
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if run.poll() is None:
            run.send_signal(signal.SIGINT)
        stop_cli(run)
    assert run.returncode == 0
