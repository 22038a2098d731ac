"""The Dask executor's rows: against the local pool and against a dask.bag program, on one log.

Interleaved rounds of: ``mpobs --workers 2`` (local), ``mpobs --executor dask --workers 2``
(a LocalCluster, its start and stop included) and ``dask_bag.py`` (the job as a Dask user
would write it, on the same kind of LocalCluster). For the Dask row the run alone (the
summary's elapsed time: from the stats segment's creation, after the cluster is up, to the
run's end, before the cluster closes) is reported apart. Peak RSS is of the mpobs process
itself (its VmHWM), not of the cluster's workers; the Dask row also reports its Dask client
process (``mpobs.executors.dask.bridge``, where distributed and the LocalCluster's scheduler
live). Every output is checked byte for byte against the plain loop's. Run by
``python -m bench`` (``--only dask`` for these rows alone), on a
6,000,000-line log (the run's own log with ``--quick``).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import BASELINES_DIR
from bench.data import sha256_file
from bench.rows import mpobs_command


def _peak_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _client_pid(pid: int) -> int | None:
    """The Dask client process (``mpobs.executors.dask.bridge``) among ``pid``'s children, if it has one."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        return None
    for child in children:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"mpobs.executors.dask.bridge" in f.read():
                    return child
        except OSError:
            pass
    return None


def _timed(argv: list[str], timeout: float) -> tuple[float, float | None, float | None]:
    """Wall time of ``argv``, the peak RSS of its own process and of its Dask client process, read before they exit."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = client_peak = client = None
    deadline = t0 + timeout
    while proc.poll() is None:  # VmHWM only grows: the last reading is the peak, to 20 ms
        peak = _peak_rss_mb(proc.pid) or peak
        client = client or _client_pid(proc.pid)
        if client is not None:
            client_peak = _peak_rss_mb(client) or client_peak
        if time.perf_counter() > deadline:
            proc.kill()
        time.sleep(0.02)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {err.strip().splitlines()[-1:] or 'no message'}: {argv}")
    return seconds, peak, client_peak


def dask_rows(log: Path, work: Path, ref_sha: str, rounds: int, say: Callable[[str], object]) -> dict[str, Any]:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return {"error": "not run: Dask distributed is not installed (pip install 'mpobs[dask]')"}
    mpobs = mpobs_command()
    metrics = work / "dask-metrics.json"
    rows: dict[str, list[str]] = {
        "local": [*mpobs, "process", str(log), "-w", "2", "-q", "-o", str(work / "local.out")],
        "dask": [
            *mpobs,
            "process",
            str(log),
            "-w",
            "2",
            "-q",
            "--executor",
            "dask",
            "-o",
            str(work / "dask.out"),
            "--save-metrics",
            str(metrics),
        ],
        "dask_bag": [sys.executable, str(BASELINES_DIR / "dask_bag.py"), str(log), str(work / "dask_bag.out"), "2"],
    }
    got: dict[str, dict[str, list[float]]] = {
        k: {"seconds": [], "peak_rss_mb": [], "client_peak_rss_mb": []} for k in rows
    }
    run_only: list[float] = []
    for rnd in range(1, rounds + 1):
        for key, argv in rows.items():
            seconds, peak, client_peak = _timed(argv, 600)
            out = work / f"{key}.out"
            if sha256_file(out) != ref_sha:
                raise RuntimeError(f"OUTPUT MISMATCH: the {key} row's output differs from the plain loop's")
            out.unlink()
            got[key]["seconds"].append(round(seconds, 3))
            if peak is not None:
                got[key]["peak_rss_mb"].append(peak)
            if client_peak is not None:
                got[key]["client_peak_rss_mb"].append(client_peak)
            if key == "dask":
                run_only.append(json.loads(metrics.read_text())["system"]["elapsed_s"])
            also = f" (its Dask client process {client_peak} MB)" if client_peak is not None else ""
            say(f"  round {rnd}/{rounds}  {key:<9} {seconds:.3f} s  peak RSS {peak} MB{also}")
    med = {k: statistics.median(v["seconds"]) for k, v in got.items()}
    rss = {k: statistics.median(v["peak_rss_mb"]) if v["peak_rss_mb"] else None for k, v in got.items()}
    client = got["dask"]["client_peak_rss_mb"]
    run_s = statistics.median(run_only)
    return {
        "rows": got,
        "median_s": med,
        "dask_run_only_s": run_only,
        "median_peak_rss_mb": rss,
        "dask_client_peak_rss_mb": statistics.median(client) if client else None,
        "dask_speed_vs_local": round(med["local"] / med["dask"], 3),  # target >= 0.7
        "dask_run_only_speed_vs_local": round(med["local"] / run_s, 3),  # target >= 0.9
        "dask_cluster_start_stop_s": round(med["dask"] - run_s, 3),
        "dask_vs_dask_bag": round(med["dask_bag"] / med["dask"], 3),  # target >= 2
        "dask_rss_vs_local": round(rss["dask"] / rss["local"], 3) if rss["dask"] and rss["local"] else None,  # <= 1.2
    }


def render(d: dict[str, Any]) -> str:
    if "error" in d:
        return f"Dask rows: {d['error']}\n"
    m, r = d["median_s"], d["median_peak_rss_mb"]
    return (
        "| row | median s | peak RSS of the mpobs/script process | of mpobs's Dask client process |\n"
        "|---|---|---|---|\n"
        f"| mpobs --workers 2 (local) | {m['local']:.3f} | {r['local']} MB | |\n"
        f"| mpobs --executor dask --workers 2 (LocalCluster start and stop included) | {m['dask']:.3f} | "
        f"{r['dask']} MB | {d.get('dask_client_peak_rss_mb')} MB |\n"
        f"| the same, run only (cluster up) | {statistics.median(d['dask_run_only_s']):.3f} | | |\n"
        f"| dask.bag script, LocalCluster(2) | {m['dask_bag']:.3f} | {r['dask_bag']} MB | |\n\n"
        f"Dask vs local: {d['dask_speed_vs_local']}x (target >= 0.7), run only {d['dask_run_only_speed_vs_local']}x "
        f"(>= 0.9); cluster start and stop {d['dask_cluster_start_stop_s']} s; vs dask.bag "
        f"{d['dask_vs_dask_bag']}x faster (>= 2); RSS vs local {d['dask_rss_vs_local']}x (<= 1.2)\n"
    )
