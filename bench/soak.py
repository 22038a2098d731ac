"""The soak: a long traced run with the dashboard under 50 pollers; memory over time, errors, exact output.

    python -m bench.soak                  # 20,000,000 lines (a ~1.5 GB log, generated once)
    python -m bench.soak --lines 2000000  # shorter

It runs ``mpobs process LOG --workers 2 --trace --dashboard`` while 50 clients poll
/stats, samples the memory of the whole process tree every second, and checks that
the output is byte-identical to the plain loop's (so every count is exact), that no
poll failed and that the run exited 0. Memory is "flat" when the tree's RSS in the
last quarter of the run is within 10 % of the first quarter (after start-up). Writes
``bench/results/soak.json`` (with the RSS series) and ``soak.md``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.data import ensure_log, sha256_file, warm
from bench.report import machine, machine_line
from bench.rows import kill_if_running
from bench.rss import _status_kb
from bench.stats_load import Client, free_port, pct, wait_up

HERE = Path(__file__).resolve().parent


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=20_000_000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between one client's polls")
    ap.add_argument("--data", type=Path, default=HERE / "data")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    return ap.parse_args(argv)


class MemorySeries(threading.Thread):
    """Once a second: the tree's total RSS and anonymous memory (MB), with the time since start."""

    def __init__(self, pid: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.pid, self.stop = pid, stop
        self.series: list[dict[str, float]] = []
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                pids = [self.pid] + [c.pid for c in psutil.Process(self.pid).children(recursive=True)]
            except psutil.Error:
                return
            rss = anon = 0
            for pid in pids:
                st = _status_kb(pid)
                rss += st.get("VmRSS", 0)
                anon += st.get("RssAnon", 0)
            self.series.append(
                {
                    "t_s": round(time.monotonic() - self.t0, 1),
                    "rss_mb": round(rss / 1024, 1),
                    "anon_mb": round(anon / 1024, 1),
                    "processes": len(pids),
                }
            )
            self.stop.wait(1.0)


def run_state(port: int) -> str:
    """The run's state as /stats tells it ("running" while it cannot be read yet)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/stats")
        state = json.loads(conn.getresponse().read())["system"]["state"]
        conn.close()
        return str(state) if state != "starting" else "running"
    except (OSError, ValueError, KeyError, http.client.HTTPException):
        return "running"


def plain_reference(log: Path, work: Path) -> str:
    out = work / "soak-plain.out"
    subprocess.run([sys.executable, str(HERE / "baselines" / "plain.py"), str(log), str(out)], check=True)
    digest = sha256_file(out)
    out.unlink()
    return digest


def flat(series: list[dict[str, float]], key: str) -> dict[str, Any]:
    """Mean of the first and last quarter (skipping the first 3 s of start-up) and their ratio."""
    body = [s[key] for s in series if s["t_s"] >= 3] or [s[key] for s in series]
    q = max(1, len(body) // 4)
    first, last = sum(body[:q]) / q, sum(body[-q:]) / q
    return {
        "first_quarter_mb": round(first, 1),
        "last_quarter_mb": round(last, 1),
        "ratio": round(last / first, 3) if first else None,
        "max_mb": max(body) if body else None,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    work = args.data / "work"
    work.mkdir(parents=True, exist_ok=True)
    log = ensure_log(args.data, args.lines, 42, say=lambda m: print(m, file=sys.stderr))
    warm(log)
    print(f"soak: {args.lines:,} lines; computing the plain loop's output for the check ...", file=sys.stderr)
    want = plain_reference(log, work)
    out, metrics = work / "soak.out", work / "soak-metrics.json"
    port = free_port()
    argv_run = [
        sys.executable,
        "-m",
        "mpobs",
        "process",
        str(log),
        "-w",
        "2",
        "-q",
        "-o",
        str(out),
        "--trace",
        "--save-metrics",
        str(metrics),
        "--dashboard",
        "--dashboard-port",
        str(port),
        "--linger",
        "120",
    ]
    stop = threading.Event()
    t0 = time.monotonic()
    proc = subprocess.Popen(argv_run, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    mem = MemorySeries(proc.pid, stop)
    mem.start()
    clients = [Client(port, args.interval, stop) for _ in range(args.clients)]
    try:
        wait_up(port)
        for c in clients:
            c.start()
        # Poll until the run has finished; the dashboard lingers, so no poll meets a closing server.
        deadline = time.monotonic() + max(600, args.lines / 20_000)
        while run_state(port) == "running" and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        wall = time.monotonic() - t0
        stop.set()
        for c in clients:
            c.join(15)
        proc.send_signal(signal.SIGINT)  # ends the lingering; the run's exit code stands
        _, err = proc.communicate(timeout=60)
    finally:
        stop.set()
        kill_if_running(proc)
    mem.join(5)
    stats = json.loads(metrics.read_text())
    latencies = [x for c in clients for x in c.latencies]
    got = sha256_file(out)
    out.unlink()
    result = {
        "lines": args.lines,
        "command": " ".join(argv_run[2:]),
        "exit_code": proc.returncode,
        "stderr_tail": err.decode("utf-8", "replace")[-500:],
        "wall_s": round(wall, 2),
        "output_identical_to_plain_loop": got == want,
        "total_lines": stats["system"]["total_lines"],
        "total_errors": stats["system"]["total_errors"],
        "traces_sent": stats["system"]["traces_sent"],
        "traces_dropped": stats["system"]["traces_dropped"],
        "polls": len(latencies),
        "polls_failed": sum(c.failed for c in clients),
        "poll_errors": [e for c in clients for e in c.errors][:5],
        "stats_p50_ms": _ms(pct(latencies, 50)),
        "stats_p99_ms": _ms(pct(latencies, 99)),
        "rss": flat(mem.series, "rss_mb"),
        "anon": flat(mem.series, "anon_mb"),
        "machine": machine(),
        "rss_series": mem.series,
    }
    ok = (
        result["exit_code"] == 0
        and result["output_identical_to_plain_loop"]
        and result["polls_failed"] == 0
        and result["total_lines"] == args.lines
        and (result["rss"]["ratio"] or 0) <= 1.10
    )
    result["verdict"] = "PASS" if ok else "MISS"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    md = [
        f"Soak, {machine_line(result['machine'])}",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| run | `mpobs process` {args.lines:,} lines, --workers 2 --trace --dashboard, {args.clients} pollers |",
        f"| wall time | {result['wall_s']} s (exit {result['exit_code']}) |",
        f"| output = plain loop's (exact counts) | {result['output_identical_to_plain_loop']} |",
        f"| lines counted / processor errors | {result['total_lines']:,} / {result['total_errors']} |",
        f"| /stats polls, failed, p50, p99 | {result['polls']:,}, {result['polls_failed']}, "
        f"{result['stats_p50_ms']} ms, {result['stats_p99_ms']} ms |",
        f"| tree RSS first / last quarter, max | {result['rss']['first_quarter_mb']} / "
        f"{result['rss']['last_quarter_mb']} MB (x{result['rss']['ratio']}), max {result['rss']['max_mb']} MB |",
        f"| tree anonymous memory first / last quarter | {result['anon']['first_quarter_mb']} / "
        f"{result['anon']['last_quarter_mb']} MB (x{result['anon']['ratio']}) |",
        f"| traces sent / dropped | {result['traces_sent']:,} / {result['traces_dropped']:,} |",
        f"| verdict | {result['verdict']} |",
    ]
    (args.out / "soak.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
