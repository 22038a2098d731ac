"""Follow mode (issue 14): append-to-output latency of a followed log, and what an idle follow costs.

A writer appends 100 lines a second (each names its sequence number) to a log that
``mpobs process LOG --follow --workers 2 -o OUT`` follows; a reader polls OUT every 2 ms
and notes when each line appears. Latency is appear time minus append time, per line.
Then nothing is written for a while and the CPU time of mpobs's whole process tree
over that idle stretch is read (psutil), as a share of one core.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.rows import kill_if_running, mpobs_command


def _tree_cpu(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def follow_latency(work: Path, seconds: float = 10.0, idle: float = 10.0, rate: int = 100) -> dict[str, Any]:
    log, out = work / "follow.log", work / "follow.out"
    log.write_bytes(b"")
    out.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [*mpobs_command(), "process", str(log), "--follow", "--workers", "2", "-q", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    written: dict[int, float] = {}
    seen: dict[int, float] = {}
    stop = threading.Event()

    def read_out() -> None:
        at, rest = 0, b""
        while not stop.is_set():
            try:
                with open(out, "rb") as f:
                    f.seek(at)
                    data = f.read()
            except FileNotFoundError:
                data = b""
            now = time.perf_counter()
            at += len(data)
            rest += data
            *whole, rest = rest.split(b"\n")
            for line in whole:
                k = line.rfind(b"seq=")
                if k != -1:
                    seen.setdefault(int(line[k + 4 :]), now)
            time.sleep(0.002)

    reader = threading.Thread(target=read_out, daemon=True)
    reader.start()
    try:
        time.sleep(1.0)  # let it start and reach the end of the empty file
        with open(log, "ab", buffering=0) as f:
            start = time.perf_counter()
            for k in range(int(seconds * rate)):
                due = start + k / rate
                time.sleep(max(0.0, due - time.perf_counter()))
                written[k] = time.perf_counter()
                f.write(b"INFO follow bench seq=%d\n" % k)
        deadline = time.perf_counter() + 10
        while len(seen) < len(written) and time.perf_counter() < deadline:
            time.sleep(0.01)
        ps = psutil.Process(proc.pid)
        time.sleep(0.5)
        cpu0, t0 = _tree_cpu(ps), time.perf_counter()
        time.sleep(idle)
        idle_share = (_tree_cpu(ps) - cpu0) / (time.perf_counter() - t0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        stop.set()
        kill_if_running(proc)
        log.unlink(missing_ok=True)
        out.unlink(missing_ok=True)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {err.decode('utf-8', 'replace')[-200:]}"}
    lat = sorted((seen[k] - written[k]) * 1000 for k in written if k in seen)
    if len(lat) < len(written):
        return {"error": f"{len(written) - len(lat)} of {len(written)} appended lines never came out"}
    return {
        "lines": len(lat),
        "rate_per_s": rate,
        "p50_ms": round(statistics.median(lat), 1),
        "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 1),
        "max_ms": round(lat[-1], 1),
        "idle_cpu_share": round(idle_share, 4),
        "idle_s": idle,
    }


if __name__ == "__main__":
    import json
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(follow_latency(Path(tmp), *(float(a) for a in sys.argv[1:3]))))
    os._exit(0)
