"""What alert evaluation costs the coordinator, measured apart from the throughput rows' noise.

The ``alerts`` rows time whole runs with ``--alerts``, but a 2M-line run takes ~1 s and its
rounds vary by several percent, more than the evaluation can cost. So this check measures
the evaluation itself, twice:

- in a real run (the default pipeline at --workers 2, the default rules every 0.1 s): the
  CPU time the coordinator's thread spent in evaluations (``alerts.busy_s`` of --save-metrics;
  not wall time, which counts the waits for a core the workers hold): building
  the live stats document, taking its series, evaluating the rules) over the run's time;
- in the steady state of a long run: the same real stats document fed to AlertWatch on a
  clock that advances by the interval for 10 simulated minutes, so the series store holds
  what the rules' longest range plus the lookback keeps; each tick timed (perf_counter),
  its share of one core being its time over the interval.

Plus the start-up: the whole command on a tiny file with and without ``--alerts``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.checks import timed
from bench.rows import mpobs_command

SIMULATED_S = 600.0


def alerts_cost(work: Path, log: Path, tiny: Path, runs: int = 5) -> dict[str, Any]:
    import mpobs
    from mpobs.alerts.rules import load_rules
    from mpobs.alerts.watch import AlertOptions, AlertWatch

    rules_file = str(Path(mpobs.__file__).parent / "alerts" / "defaults.yml")
    saved = work / "alerts-cost.json"
    argv = [*mpobs_command(), "process", str(log), "--workers", "2", "-q", "-o", str(work / "alerts-cost.out")]
    subprocess.run(
        [*argv, "--save-metrics", str(saved), "--alerts", rules_file, "--alerts-interval", "0.1"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    doc = json.loads(saved.read_text())
    elapsed, busy = doc["system"]["elapsed_s"], doc["alerts"]["busy_s"]
    evaluations = doc["alerts"]["rules"][0]["evaluations"]
    out: dict[str, Any] = {
        "run": {
            "elapsed_s": elapsed,
            "evaluations": evaluations,
            "busy_s": busy,
            "per_evaluation_ms": round(busy / evaluations * 1000, 3),
            "share_of_the_run": round(busy / elapsed, 5),
        }
    }
    doc["system"]["state"] = "running"
    del doc["alerts"]
    rules = tuple(load_rules(rules_file))
    out.update(rules=len(rules), simulated_s=SIMULATED_S)
    for interval in (5.0, 0.1):
        clock = [time.time()]
        watch = AlertWatch(AlertOptions(rules, interval), lambda _line: None, lambda clock=clock: clock[0])
        ticks = []
        for i in range(int(SIMULATED_S / interval)):
            doc["system"]["total_lines"] = i * 1000  # counters that grow, as in a run
            for p in doc["processors"].values():
                p["lines_in"] = i * 1000
            t0 = time.perf_counter()
            watch.tick(lambda: doc)
            ticks.append(time.perf_counter() - t0)
            clock[0] += interval
        steady = statistics.median(ticks[-200:])
        out[f"every_{interval:g}s"] = {
            "evaluations": len(ticks),
            "steady_ms": round(steady * 1000, 3),
            "share_of_a_core": round(steady / interval, 5),
        }
    out["startup"] = _startup(tiny, work, rules_file, runs)
    return out


def _startup(tiny: Path, work: Path, rules_file: str, runs: int) -> dict[str, Any]:
    """The whole command on a tiny file, without and with --alerts (parsing the rules, importing the parsers)."""
    base = [*mpobs_command(), "process", str(tiny), "-q", "-o", str(work / "alerts-tiny.out")]
    pairs = []
    for _ in range(runs):
        pair = [timed(argv) for argv in (base, [*base, "--alerts", rules_file])]
        if None in pair:
            return {"error": "a run failed"}
        pairs.append(pair)
    without, with_ = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    return {"without_s": round(without, 4), "with_s": round(with_, 4), "added_s": round(with_ - without, 4)}
