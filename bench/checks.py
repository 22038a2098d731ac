"""Checks that are not throughput rows: start-up time, and /stats latency under load (bench/stats_load.py)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import BENCH_DIR, REPO_DIR
from bench.rows import last_line, mpobs_command

STATS_LOAD = BENCH_DIR / "stats_load.py"


def startup(tiny: Path, out: Path, runs: int = 5) -> dict[str, Any]:
    """Wall clock of ``mpobs process TINY -q -o OUT`` on a 10-line file, ``runs`` times."""
    argv = [*mpobs_command(), "process", str(tiny), "-q", "-o", str(out)]
    times: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        took = time.perf_counter() - t0
        if proc.returncode != 0:
            return {"error": f"exit {proc.returncode}: {last_line(proc.stderr.decode('utf-8', 'replace'))}"}
        times.append(took)
    return {"runs": [round(t, 4) for t in times], "median_s": round(statistics.median(times), 4)}


#: Small jobs, timed side by side with what a user compares them with (issue 12): (key, lines, baseline).
SMALL_JOBS = (("startup", 1, "numpy"), ("lines_50k", 50_000, "plain"), ("lines_200k", 200_000, "plain"))


def small_jobs(data_dir: Path, work: Path, rounds: int, ensure_log: Any) -> dict[str, Any]:
    """Most real invocations are small: the whole command on 1, 50,000 and 200,000 lines at --workers 2.

    Each round runs the baseline and mpobs back to back (the baseline of the 1-line file
    is ``python -c "import numpy"``, of the others the plain loop), so both see the
    same machine; the figure is the median of the rounds' ratios (baseline / mpobs:
    above 1 is mpobs faster).
    """
    from bench import BASELINES_DIR, SEED

    out: dict[str, Any] = {}
    for key, lines, base in SMALL_JOBS:
        log = ensure_log(data_dir, lines, SEED)
        base_argv = (
            [sys.executable, "-c", "import numpy"]
            if base == "numpy"
            else [sys.executable, str(BASELINES_DIR / "plain.py"), str(log), str(work / "small-plain.out")]
        )
        argv = [*mpobs_command(), "process", str(log), "--workers", "2", "-q", "-o", str(work / "small.out")]
        pairs = []
        for _ in range(rounds):
            b, m = timed(base_argv), timed(argv)
            if b is None or m is None:
                out[key] = {"error": "a run failed"}
                break
            pairs.append((b, m))
        else:
            out[key] = {
                "lines": lines,
                "baseline": base,
                "baseline_s": round(statistics.median(b for b, _ in pairs), 4),
                "mpobs_s": round(statistics.median(m for _, m in pairs), 4),
                "ratio": round(statistics.median(b / m for b, m in pairs), 3),
            }
    return out


def timed(argv: list[str]) -> float | None:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    took = time.perf_counter() - t0
    return took if proc.returncode == 0 else None


def _find(doc: Any, word: str) -> float | None:
    """The first number under a key containing ``word`` (p50_ms, p50, latency.p50 ...), depth first."""
    if isinstance(doc, dict):
        for key, val in doc.items():
            if word in str(key).lower() and isinstance(val, (int, float)) and not isinstance(val, bool):
                return float(val)
        for val in doc.values():
            found = _find(val, word)
            if found is not None:
                return found
    return None


def _last_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        if line.strip().startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise ValueError("no JSON object on its stdout")


def stats_load(log: Path, timeout: float, quick: bool = False) -> dict[str, Any]:
    """Run ``python -m bench.stats_load`` (the dashboard's load test) if it exists; its p50/p99 in ms.

    Contract: run from the repo root, it prints one JSON object holding p50 and p99 in
    milliseconds (keys containing "p50" and "p99", e.g. p50_ms / p99_ms) and exits 0.
    The issue asks for pollers "during a 2-worker run for 10 s", so a full benchmark
    lets it make an input that long (the 2M-line log takes ~1.5 s: the dashboard's
    start-up would be most of what it measures); ``quick`` (CI smoke) gives it the
    benchmark's log and 2 s.
    """
    if not STATS_LOAD.is_file():
        return {"error": "bench/stats_load.py not present"}
    env = dict(os.environ)
    env.pop("MPOBS_BENCH_LOG", None)
    argv = [sys.executable, "-m", "bench.stats_load"]
    if quick:
        env["MPOBS_BENCH_LOG"] = str(log)
        argv += ["--seconds", "2", "--rounds", "1"]
    try:
        proc = subprocess.run(
            argv, cwd=REPO_DIR, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {last_line(proc.stderr.decode('utf-8', 'replace'))}"}
    try:
        doc = _last_json(proc.stdout.decode("utf-8", "replace"))
    except ValueError as err:
        return {"error": str(err)}
    p50, p99 = _find(doc, "p50"), _find(doc, "p99")
    if p99 is None:
        return {"error": "no p99 figure in its JSON", "raw": doc}
    return {"p50_ms": p50, "p99_ms": p99, "raw": doc}
