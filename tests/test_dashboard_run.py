"""The dashboard in real runs: live numbers rise, the final state equals the saved metrics, failures are clean."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import big_log, free_port, get_json, kill_if_running, start_cli, stop_cli, wait_for

COMPARE = ("lines_in", "lines_out", "errors", "processing_time_ms", "batches", "share_of_time")


def test_live_stats_rise_and_final_state_equals_saved_metrics(tmp_path: Path) -> None:
    log = big_log(tmp_path / "big.log", 3_000_000)
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
        "--save-metrics",
        "m.json",
        "-o",
        "out.log",
        "-q",
        cwd=tmp_path,
    )
    try:
        seen: list[int] = []

        def done() -> dict | None:
            status, doc = get_json(f"{url}/stats")
            assert status == 200
            if doc["system"]["state"] == "running":
                seen.append(doc["system"]["total_lines"])
            return doc if doc["dashboard"]["final"] else None

        final = wait_for(done, 240, interval=0.05, what="the run to finish")
        assert final["system"]["state"] == "done"
        assert seen == sorted(seen), "live total_lines went down"
        # Seen part-way, more than once: the last value while "running" may already be the total.
        partial = {n for n in seen if 0 < n < 3_000_000}
        assert len(partial) >= 2, f"too few distinct live values while running: {seen}"
        # While lingering: still served, healthy, with the final numbers.
        assert get_json(f"{url}/healthz") == (200, {"status": "ok", "reason": "done"})
        traces = get_json(f"{url}/trace?limit=5")[1]["traces"]
        assert traces and traces[0]["line_number"] > traces[-1]["line_number"]
        proc.send_signal(signal.SIGINT)  # ends the lingering
        err = stop_cli(proc)
    finally:
        kill_if_running(proc)
    assert proc.returncode == 0, err
    assert f"dashboard at http://127.0.0.1:{port}/" in err
    assert "serving the final state" in err
    saved = json.loads((tmp_path / "m.json").read_text())
    assert final["system"]["total_lines"] == saved["system"]["total_lines"] == 3_000_000
    assert final["system"]["total_errors"] == saved["system"]["total_errors"]
    assert final["tags"] == saved["tags"]
    assert final["counters"] == saved["counters"]
    for pid, row in saved["processors"].items():
        assert {k: final["processors"][pid][k] for k in COMPARE} == {k: row[k] for k in COMPARE}
    assert final["dashboard"]["final"] is True
    # The dashboard process is gone with the run.
    assert not _listening(port)


def test_linger_zero_exits_with_the_run(tmp_path: Path) -> None:
    log = big_log(tmp_path / "in.log", 200_000)
    port = free_port()
    proc = start_cli(
        "process",
        str(log),
        "--workers",
        "2",
        "--dashboard",
        "--dashboard-port",
        str(port),
        "--linger",
        "0",
        "-o",
        "out.log",
        "-q",
        cwd=tmp_path,
    )
    err = stop_cli(proc, timeout=60)
    assert proc.returncode == 0, err
    assert not _listening(port)


def test_a_dead_dashboard_does_not_stop_the_run(tmp_path: Path) -> None:
    """The dashboard process killed part way: the run goes on to the end, and says so once.

    The input is a pipe the test writes: the run cannot end before the test has killed the
    dashboard and written the rest, however the processes are scheduled."""
    import threading

    log = big_log(tmp_path / "big.log", 400_000)
    port = free_port()
    r, w = os.pipe()
    killed = threading.Event()

    def feed() -> None:
        with open(log, "rb") as src, open(w, "wb") as pipe:
            try:
                pipe.write(src.read(1 << 20))
                killed.wait(60)
                shutil.copyfileobj(src, pipe)
            except BrokenPipeError:
                pass  # the run ended early: the asserts below say why

    proc = start_cli(
        "process",
        "-",
        "--workers",
        "2",
        "--dashboard",
        "--dashboard-port",
        str(port),
        "--linger",
        "0",
        "--save-metrics",
        "m.json",
        "-o",
        "out.log",
        "-q",
        cwd=tmp_path,
        stdin=r,
    )
    os.close(r)
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        doc = wait_for(lambda: get_json(f"http://127.0.0.1:{port}/stats")[1], 30, what="the dashboard")
        os.kill(doc["dashboard"]["pid"], signal.SIGKILL)
        killed.set()
        err = stop_cli(proc, timeout=60)
    finally:
        killed.set()
        kill_if_running(proc)
        feeder.join(30)
    assert proc.returncode == 0, err
    assert err.count("the dashboard process exited") == 1
    assert json.loads((tmp_path / "m.json").read_text())["system"]["total_lines"] == 400_000


def test_port_in_use_fails_before_any_work(tmp_path: Path) -> None:
    log = big_log(tmp_path / "in.log", 200_000)
    (tmp_path / "out.log").write_bytes(b"the previous run's results\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        proc = start_cli(
            "process", str(log), "--dashboard", "--dashboard-port", str(port), "-o", "out.log", cwd=tmp_path
        )
        err = stop_cli(proc)
    assert proc.returncode == 2
    assert f"port {port} on 127.0.0.1 is in use" in err and "Traceback" not in err
    assert (tmp_path / "out.log").read_bytes() == b"the previous run's results\n"  # untouched


def test_a_start_that_fails_after_the_dashboard_forked_leaves_nothing_behind(tmp_path: Path) -> None:
    """The dashboard's process is forked before the config is read: a bad config must still end it."""
    log = big_log(tmp_path / "in.log", 200_000)
    port = free_port()
    proc = start_cli(
        "process",
        str(log),
        "-c",
        "missing.json",
        "--dashboard",
        "--dashboard-port",
        str(port),
        "-o",
        "out.log",
        cwd=tmp_path,
    )
    err = stop_cli(proc)
    assert proc.returncode == 2 and "missing.json" in err and "Traceback" not in err
    assert "dashboard at" not in err  # announced only once it serves a run
    assert not _listening(port)
    assert not (tmp_path / "out.log").exists()


def test_the_dashboard_process_never_loads_numpy(tmp_path: Path) -> None:
    """It reads the segment without numpy, so its start-up costs the workers no numpy import."""
    log = big_log(tmp_path / "in.log", 200_000)
    port = free_port()
    proc = start_cli(
        "process",
        str(log),
        "--workers",
        "2",
        "--trace",
        "--dashboard",
        "--dashboard-port",
        str(port),
        "--linger",
        "30",
        "-o",
        "out.log",
        "-q",
        cwd=tmp_path,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: get_json(f"{url}/stats")[1]["system"]["state"] == "done", 60, what="the run to finish")
        for path in ("/stats", "/trace", "/errors", "/history", "/dag", "/healthz", "/metrics", "/"):
            with urllib.request.urlopen(url + path, timeout=10) as resp:
                assert resp.status == 200, path
        pid = get_json(f"{url}/stats")[1]["dashboard"]["pid"]
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "numpy" not in maps, "the dashboard process loaded numpy"
        assert "_psutil" in maps  # the check sees the process's own libraries
        proc.send_signal(signal.SIGINT)
        stop_cli(proc)
    finally:
        kill_if_running(proc)
    assert proc.returncode == 0


def test_bad_host_and_public_host_without_token_exit_2(tmp_path: Path) -> None:
    log = big_log(tmp_path / "in.log", 200_000)
    proc = start_cli("process", str(log), "--dashboard", "--dashboard-host", "0.0.0.0", "-o", "out.log", cwd=tmp_path)
    err = stop_cli(proc)
    assert proc.returncode == 2 and "token" in err and "Traceback" not in err
    proc = start_cli(
        "process",
        str(log),
        "--dashboard",
        "--dashboard-host",
        "192.0.2.1",
        "--dashboard-token",
        "t",
        "-o",
        "out.log",
        cwd=tmp_path,
    )
    err = stop_cli(proc)
    assert proc.returncode == 2 and "cannot bind host '192.0.2.1'" in err and "Traceback" not in err


def test_token_on_a_real_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = big_log(tmp_path / "in.log", 200_000)
    port = free_port()
    env_token = "tok-" + os.urandom(4).hex()
    monkeypatch.setenv("MPOBS_DASHBOARD_TOKEN", env_token)
    proc = start_cli(
        "process",
        str(log),
        "--dashboard",
        "--dashboard-port",
        str(port),
        "--linger",
        "30",
        "-o",
        "out.log",
        "-q",
        cwd=tmp_path,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: get_json(f"{url}/healthz")[0] == 200, 30, what="the dashboard")
        assert get_json(f"{url}/stats")[0] == 401
        status, doc = get_json(f"{url}/stats", headers={"Authorization": f"Bearer {env_token}"})
        assert status == 200 and doc["system"]["input"] == "in.log"
        proc.send_signal(signal.SIGINT)
        stop_cli(proc)
    finally:
        kill_if_running(proc)


def test_the_demo_dashboard_shares_the_runs_resource_tracker(tmp_path: Path) -> None:
    """Without ``mpobs process`` starting the tracker first, the dashboard must not start one of its own.

    A tracker of its own would unlink the run's segment when the dashboard process ends.
    """
    import psutil

    port = free_port()
    proc = start_cli("dashboard", "--port", str(port), "--lines", "200000", "--workers", "2", cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: get_json(f"{url}/stats")[1]["system"]["state"] == "done", 60, what="the demo run")
        trackers = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if any("resource_tracker" in part for part in p.cmdline())
        ]
        assert len(trackers) == 1, [(p.pid, p.ppid()) for p in trackers]
        assert trackers[0].ppid() == proc.pid
        proc.send_signal(signal.SIGINT)
        err = stop_cli(proc)
    finally:
        kill_if_running(proc)
    assert proc.returncode == 0, err
    assert "leaked" not in err and "Traceback" not in err and "Warning" not in err, err


def test_a_failing_save_traces_ends_the_run_with_the_dashboard(tmp_path: Path) -> None:
    """The last flush of --save-traces fails (a full device): exit 1 with the reason, nothing left running."""
    from mpobs.inputs.loggen import generate_file

    log = tmp_path / "in.log"
    generate_file(str(log), 5, seed=1)  # its traces fit the file's buffer: only closing it fails
    port = free_port()
    proc = start_cli(
        "process",
        str(log),
        "-w",
        "1",
        "-q",
        "--save-traces",
        "/dev/full",
        "--trace-sample",
        "1",
        "-o",
        "out.log",
        "--dashboard",
        "--dashboard-port",
        str(port),
        "--linger",
        "0",
        cwd=tmp_path,
    )
    err = stop_cli(proc, timeout=60)
    assert proc.returncode == 1, err
    assert (
        "I/O error: cannot write the --save-traces file '/dev/full'" in err
        and "Traceback" not in err
        and "internal error" not in err
    )
    assert not _listening(port)


def test_dashboard_command_serves_saved_metrics(tmp_path: Path) -> None:
    log = big_log(tmp_path / "in.log", 200_000)
    proc = start_cli("process", str(log), "--trace", "--save-metrics", "m.json", "-o", "out.log", "-q", cwd=tmp_path)
    assert stop_cli(proc) is not None and proc.returncode == 0
    saved = json.loads((tmp_path / "m.json").read_text())
    port = free_port()
    proc = start_cli("dashboard", "--metrics", "m.json", "--port", str(port), cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        status, doc = wait_for(lambda: get_json(f"{url}/stats"), 30, what="the saved dashboard")
        assert status == 200
        assert doc["processors"]["line_counter"]["lines_in"] == saved["processors"]["line_counter"]["lines_in"]
        assert doc["dashboard"]["source"] == "saved"
        assert get_json(f"{url}/trace?limit=2")[1]["traces"] == saved["recent_traces"][:2]
        proc.send_signal(signal.SIGINT)
        err = stop_cli(proc)
    finally:
        kill_if_running(proc)
    assert proc.returncode == 0, err
    bad = start_cli("dashboard", "--metrics", "missing.json", "--port", str(port), cwd=tmp_path)
    err = stop_cli(bad)
    assert bad.returncode == 2 and "cannot read it" in err


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_dashboard_module_imports_cheaply() -> None:
    import subprocess
    import sys

    heavy = "('flask', 'waitress', 'psutil', 'prometheus_client')"
    code = f"import sys, mpobs.cli.commands; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_without_linger_the_summary_and_saved_metrics_come_when_the_run_ends(tmp_path: Path) -> None:
    """--dashboard without --linger serves the final state until Ctrl-C; the summary and the --save-metrics
    file are written when the run ends, not when the dashboard stops."""
    log = big_log(tmp_path / "in.log", 20_000, block=20_000)
    port = free_port()
    proc = start_cli(
        "process",
        str(log),
        "-w",
        "2",
        "-o",
        "out",
        "--save-metrics",
        "m.json",
        "--dashboard",
        "--dashboard-port",
        str(port),
        cwd=tmp_path,
    )
    try:
        wait_for(
            lambda: "dashboard still serving the final state" in (tmp_path / "cli.stderr").read_text(),
            60,
            what="the run's end",
        )
        err = (tmp_path / "cli.stderr").read_text()
        assert "done: 20,000 lines in" in err, err
        assert err.index("done: 20,000 lines") < err.index("dashboard still serving")
        saved = json.loads((tmp_path / "m.json").read_text())
        assert saved["system"]["state"] == "done" and saved["system"]["total_lines"] == 20_000
        code, live = get_json(f"http://127.0.0.1:{port}/stats")  # still serving: the same final numbers
        assert code == 200 and live["system"]["total_lines"] == 20_000 and live["system"]["state"] == "done"
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        err = stop_cli(proc)
    finally:
        kill_if_running(proc)
    assert proc.returncode == 0, err
    assert err.count("done: 20,000 lines") == 1
