"""Load test of the dashboard: concurrent clients poll /stats during a 2-worker run.

``python -m bench.stats_load`` prints one JSON object: /stats latency (p50/p99/max ms),
failed requests, and the processing slowdown of the run with the dashboard under load
against the same run without a dashboard. Loopback only; the clients are a bounded set
of threads using http.client with keep-alive connections.

MPOBS_BENCH_LOG names an input to use; otherwise a log of --lines lines is generated.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

TARGET_P99_MS = 20.0
TARGET_SLOWDOWN_PCT = 5.0
MAX_CLIENTS = 200


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.stats_load", description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50, at most 200)")
    p.add_argument("--seconds", type=float, default=10.0, help="how long the clients poll (default 10)")
    p.add_argument(
        "--interval",
        type=float,
        default=0.2,
        help="each client's pause between answers and its next request, s (default 0.2: 250 req/s in all)",
    )
    p.add_argument(
        "--lines",
        type=int,
        default=16_000_000,
        help="generated log size when MPOBS_BENCH_LOG is unset (default: a run of 10 s or more)",
    )
    p.add_argument("--rounds", type=int, default=2, help="alternating runs with and without the dashboard (default 2)")
    p.add_argument("--workers", type=int, default=2)
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_log(folder: Path, lines: int) -> Path:
    """A block of generated lines written over and over: big input in a second or two."""
    from mpobs.inputs.loggen import generate_file

    block = folder / "block.log"
    n = min(lines, 250_000)
    generate_file(str(block), n, seed=42)
    data = block.read_bytes()
    block.unlink()
    path = folder / "load.log"
    with open(path, "wb") as f:
        for _ in range(max(1, lines // n)):
            f.write(data)
    return path


def mpobs(*args: str) -> list[str]:
    return [sys.executable, "-m", "mpobs.cli.commands", "process", *args]


def run_plain(log: Path, folder: Path, workers: int) -> float:
    """The run's own elapsed seconds (from its saved metrics) without a dashboard."""
    m = folder / "plain.json"
    subprocess.run(
        mpobs(str(log), "-w", str(workers), "-o", os.devnull, "-q", "--save-metrics", str(m)),
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return float(json.loads(m.read_text())["system"]["elapsed_s"])


class Client(threading.Thread):
    """Polls /stats on one keep-alive connection until ``stop``; records latency and failures."""

    def __init__(self, port: int, interval: float, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.interval, self.stop = port, interval, stop
        self.latencies: list[float] = []
        self.failed = 0
        self.errors: list[str] = []

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        rng = random.Random(id(self))
        # Real pollers are not in step: start at a random point of the interval, and jitter each pause.
        self.stop.wait(rng.uniform(0, self.interval))
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/stats")
                resp = conn.getresponse()
                body = resp.read()
                ok = resp.status == 200 and body.startswith(b"{")
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as err:
                ok = False
                if len(self.errors) < 5:
                    self.errors.append(f"{type(err).__name__}: {err}")
                if conn is not None:
                    conn.close()
                conn = None
            dt = time.perf_counter() - t0
            if ok:
                self.latencies.append(dt)
            else:
                self.failed += 1
            self.stop.wait(self.interval * rng.uniform(0.5, 1.5))
        if conn is not None:
            conn.close()


def wait_up(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status in (200, 503):
                conn.close()
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"the dashboard on port {port} did not answer within {timeout} s")


def run_loaded(log: Path, folder: Path, workers: int, clients: int, seconds: float, interval: float) -> dict[str, Any]:
    """One run with the dashboard, ``clients`` polling for ``seconds`` from when it answers."""
    m = folder / "dash.json"
    port = free_port()
    linger = str(int(seconds) + 30)
    proc = subprocess.Popen(
        mpobs(
            str(log),
            "-w",
            str(workers),
            "-o",
            os.devnull,
            "-q",
            "--save-metrics",
            str(m),
            "--dashboard",
            "--dashboard-port",
            str(port),
            "--linger",
            linger,
        ),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stop = threading.Event()
    pool = [Client(port, interval, stop) for _ in range(clients)]
    try:
        wait_up(port)
        started = time.monotonic()
        for c in pool:
            c.start()
        stop.wait(seconds)
        stop.set()
        for c in pool:
            c.join(15)
        polled = time.monotonic() - started
    finally:
        stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # ends the lingering
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    elapsed = float(json.loads(m.read_text())["system"]["elapsed_s"])
    return {
        "elapsed_s": elapsed,
        "polled_s": round(polled, 2),
        "latencies": [x for c in pool for x in c.latencies],
        "failed": sum(c.failed for c in pool),
        "errors": [e for c in pool for e in c.errors][:5],
    }


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    clients = max(1, min(args.clients, MAX_CLIENTS))
    with tempfile.TemporaryDirectory(prefix="mpobs-stats-load-") as tmp:
        folder = Path(tmp)
        given = os.environ.get("MPOBS_BENCH_LOG")
        log = Path(given) if given else make_log(folder, args.lines)
        size = log.stat().st_size
        plain: list[float] = []
        loaded: list[dict[str, Any]] = []
        for _ in range(max(1, args.rounds)):
            plain.append(run_plain(log, folder, args.workers))
            loaded.append(run_loaded(log, folder, args.workers, clients, args.seconds, args.interval))
    lat = [x for r in loaded for x in r["latencies"]]
    base = statistics.median(plain)
    with_dash = statistics.median(r["elapsed_s"] for r in loaded)
    slowdown = (with_dash - base) / base * 100 if base > 0 else None
    failed = sum(r["failed"] for r in loaded)
    p50, p99 = pct(lat, 50), pct(lat, 99)
    doc = {
        "clients": clients,
        "seconds": args.seconds,
        "interval_s": args.interval,
        "workers": args.workers,
        "input_bytes": size,
        "requests": len(lat) + failed,
        "failed": failed,
        "failures": [e for r in loaded for e in r["errors"]][:5],
        "stats_p50_ms": round(p50 * 1000, 2) if p50 is not None else None,
        "stats_p99_ms": round(p99 * 1000, 2) if p99 is not None else None,
        "stats_max_ms": round(max(lat) * 1000, 2) if lat else None,
        "run_s_without_dashboard": [round(x, 3) for x in plain],
        "run_s_with_dashboard_under_load": [r["elapsed_s"] for r in loaded],
        "polled_s": [r["polled_s"] for r in loaded],
        "slowdown_pct": round(slowdown, 1) if slowdown is not None else None,
        "targets": {"stats_p99_ms": TARGET_P99_MS, "slowdown_pct": TARGET_SLOWDOWN_PCT, "failed": 0},
    }
    doc["met"] = {
        "stats_p99_ms": p99 is not None and p99 * 1000 <= TARGET_P99_MS,
        "slowdown_pct": slowdown is not None and slowdown <= TARGET_SLOWDOWN_PCT,
        "no_failed_requests": failed == 0,
    }
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
