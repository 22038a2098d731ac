"""``python -m bench``: time mpobs against a plain loop, a naive instrumented loop and a Pool script; check targets."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import BENCH_DIR, SEED, checks, data, report
from bench import alerts_cost as bench_alerts
from bench import dask_rows as bench_dask
from bench import follow as bench_follow
from bench import inputs as bench_inputs
from bench.rows import Row, build_rows, command, free_port, mpobs_command, processor_reference, run_row
from bench.rss import measure_tree

EXTRAS = ("startup", "small", "inputs", "follow", "stats", "alerts_cost", "rss", "dask")
#: The Dask rows' log (issue 15 judges them there): a 2M-line run takes about as long as a cluster's start.
DASK_LINES = 6_000_000


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--lines", type=int, help="log size in lines (default 2,000,000; 100,000 with --quick)")
    p.add_argument("--quick", action="store_true", help="CI smoke run: 100k lines, 1 round, no RSS check")
    p.add_argument("--rounds", type=int, help="rounds, each running every row once (default 3; 1 with --quick)")
    p.add_argument("--only", help=f"comma-separated row keys to run: rows as listed by --list, or {', '.join(EXTRAS)}")
    p.add_argument(
        "--rss",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="peak RSS of the process tree at --lines and 3x --lines (default: on, off with --quick)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=BENCH_DIR / "results",
        help="results folder (default bench/results): latest.*, or quick.* / partial.* for --quick / --only",
    )
    p.add_argument("--data", type=Path, default=BENCH_DIR / "data", help="generated logs (default bench/data)")
    p.add_argument("--list", action="store_true", help="list the row keys and exit")
    a = p.parse_args(argv)
    a.lines = a.lines if a.lines is not None else 100_000 if a.quick else 2_000_000
    a.rounds = a.rounds if a.rounds is not None else 1 if a.quick else 3
    a.rss = a.rss if a.rss is not None else not a.quick
    if a.lines < 1 or a.rounds < 1:
        p.error("--lines and --rounds must be at least 1")
    return a


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def first_difference(ref: Path, got: Path) -> str:
    with open(ref, "rb") as a, open(got, "rb") as b:
        for n, (x, y) in enumerate(zip(a, b), 1):
            if x != y:
                return f"output line {n}: expected {x[:160]!r}, got {y[:160]!r}"
        rest_a, rest_b = a.readline(), b.readline()
    return f"one output is a prefix of the other; next expected {rest_a[:160]!r}, got {rest_b[:160]!r}"


def run_rounds(rows: list[Row], log: Path, work: Path, rounds: int, timeout: float) -> dict[str, dict[str, Any]]:
    """Every row once per round, in order, then the rounds of the rows run apart (``Row.apart``);
    each output checked byte for byte against the plain loop's."""
    ref = work / "reference.out"
    ref.unlink(missing_ok=True)  # left by an earlier run, perhaps on another log
    if not any(r.key == "plain" for r in rows):
        plain = build_rows(1)[0]
        got = run_row(plain, log, ref, timeout)
        if got.seconds is None:
            sys.exit(f"bench: the plain loop failed: {got.error}")
    raw = {r.key: {"label": r.label, "runs": [], "errors": [], "extra": []} for r in rows}
    ref_sha: str | None = data.sha256_file(ref) if ref.exists() else None
    schedule = [
        (rnd, row)
        for group in ([r for r in rows if not r.apart], [r for r in rows if r.apart])
        for rnd in range(1, rounds + 1)
        for row in group
    ]
    own_refs: dict[str, str] = {}  # a processor row's reference: per_line.py's output for its type
    for row in rows:
        if row.processor is not None:
            own = work / f"reference-{row.processor}.out"
            subprocess.run(processor_reference(row.processor, log, own), check=True, timeout=timeout)
            own_refs[row.key] = data.sha256_file(own)
    for rnd, row in schedule:
        out = work / f"{row.key}.out"
        out.unlink(missing_ok=True)
        got = run_row(row, log, out, timeout)
        raw[row.key]["runs"].append(round(got.seconds, 4) if got.seconds is not None else None)
        raw[row.key]["errors"].append(got.error)
        raw[row.key]["extra"].append(got.extra)
        shown = f"{got.seconds:.3f} s" if got.seconds is not None else f"n/a ({got.error})"
        say(f"  round {rnd}/{rounds}  {row.label:<40} {shown}")
        if got.seconds is None:
            continue
        if row.key in own_refs:
            if data.sha256_file(out) != own_refs[row.key]:
                own = work / f"reference-{row.processor}.out"
                sys.exit(
                    f"bench: OUTPUT MISMATCH: '{row.label}' differs from per_line.py {row.processor} "
                    f"on {log}\n  {first_difference(own, out)}"
                )
            continue
        if ref_sha is None:  # the plain loop runs first: its output is the reference
            shutil.copyfile(out, ref)
            ref_sha = data.sha256_file(ref)
        elif data.sha256_file(out) != ref_sha:
            sys.exit(
                f"bench: OUTPUT MISMATCH: '{row.label}' differs from the plain loop's output "
                f"(sha256) on {log}\n  {first_difference(ref, out)}\n  command: " + " ".join(command(row, log, out, 0))
            )
    return raw


def run_rss(data_dir: Path, work: Path, lines: int, timeout: float) -> dict[str, Any]:
    """Peak memory of the tree at ``lines`` and 3x ``lines``, --workers 2, with the dashboard when it works."""
    out: dict[str, Any] = {"small_lines": lines, "big_lines": 3 * lines}
    with_dash = True
    for size, n in (("small", lines), ("big", 3 * lines)):
        log = data.ensure_log(data_dir, n, SEED, say)
        data.warm(log)
        base = [*mpobs_command(), "process", str(log), "--workers", "2", "-q", "-o", str(work / "rss.out")]
        dash = ["--dashboard", "--dashboard-port", str(free_port()), "--linger", "0"]
        try:
            out[size] = measure_tree(base + dash if with_dash else base, timeout)
        except RuntimeError as err:
            if not with_dash:
                out["error"] = f"n/a ({err})"
                return out
            say(f"  RSS run with --dashboard failed ({err}); measuring without it")
            out["dashboard_error"] = str(err)
            with_dash = False
            try:
                out[size] = measure_tree(base, timeout)
            except RuntimeError as err2:
                out["error"] = f"n/a ({err2})"
                return out
        say(f"  RSS {n:>10,} lines: {out[size]}")
    gz = bench_inputs.gz_of(data.ensure_log(data_dir, 3 * lines, SEED, say), say)
    gz_argv = [*mpobs_command(), "process", str(gz), "--workers", "2", "-q", "-o", str(work / "rss.out")]
    try:
        out["big_gz"] = measure_tree(
            gz_argv + (["--dashboard", "--dashboard-port", str(free_port()), "--linger", "0"] if with_dash else []),
            timeout,
        )
        say(f"  RSS {3 * lines:>10,} lines, gzip: {out['big_gz']}")
    except RuntimeError as err:
        out["big_gz"] = {"error": str(err)}
    out["config"] = "--workers 2" + (" --dashboard" if with_dash else ", no dashboard (it failed)")
    (work / "rss.out").unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    cpus = os.cpu_count() or 1
    rows = build_rows(cpus)
    if a.list:
        print("\n".join([f"{r.key:<14}{r.label}" for r in rows] + [f"{e:<14}(check)" for e in EXTRAS]))
        return 0
    wanted = {w.strip() for w in a.only.split(",")} if a.only else None
    if wanted is not None:
        unknown = wanted - {r.key for r in rows} - set(EXTRAS)
        if unknown:
            sys.exit(f"bench: unknown row {sorted(unknown)[0]!r}; try --list")
        rows = [r for r in rows if r.key in wanted]

    def extra(name: str) -> bool:
        return wanted is None or name in wanted

    started = time.perf_counter()
    doc: dict[str, Any] = {"machine": report.machine()}
    log = data.ensure_log(a.data, a.lines, SEED, say)
    data.warm(log)
    data.compile_engine()
    work = a.data / "work"
    work.mkdir(parents=True, exist_ok=True)
    timeout = max(180.0, a.lines / 10_000)  # a run slower than 10k lines/s is stuck, not slow
    doc["config"] = {
        "lines": a.lines,
        "bytes": log.stat().st_size,
        "seed": SEED,
        "rounds": a.rounds,
        "quick": a.quick,
        "only": sorted(wanted) if wanted else None,
        "mpobs": mpobs_command(),
    }
    say(f"bench: {a.lines:,} lines, {a.rounds} round(s), {len(rows)} rows")
    doc["rows"] = run_rounds(rows, log, work, a.rounds, timeout)
    report.summarize_rows(doc["rows"], a.lines)
    doc["output_check"] = "every successful run's output is byte-identical (sha256) to the plain loop's"
    if extra("startup"):
        say("  start-up on a 10-line file, 5 runs ...")
        doc["startup"] = checks.startup(data.ensure_log(a.data, 10, SEED, say), work / "tiny.out")
    doc.setdefault("startup", {"error": "not run"})
    if extra("small"):
        n = 3 if a.quick else 25  # 0.1-0.4 s runs on a shared VM: 15 pairs still moved the median by 5 %
        say(f"  small jobs (1, 50,000 and 200,000 lines) against their baselines, {n} pairs each ...")
        doc["small_jobs"] = checks.small_jobs(
            a.data, work, n, lambda d, lines, seed: data.ensure_log(d, lines, seed, say)
        )
    doc.setdefault("small_jobs", {})
    if extra("inputs"):
        say("  input kinds: stdin, gzip, zstd, 16 files, against the plain-file run ...")
        doc["inputs"] = bench_inputs.input_kinds(log, work, a.rounds, say)
    doc.setdefault("inputs", {"error": "not run"})
    if extra("follow"):
        say("  follow: a log appended at 100 lines/s, then idle ...")
        span = 2.0 if a.quick else 10.0
        doc["follow"] = bench_follow.follow_latency(work, span, span)
    doc.setdefault("follow", {"error": "not run"})
    if extra("stats"):
        say("  /stats under 50 pollers (bench/stats_load.py) ...")
        doc["stats_load"] = checks.stats_load(log, timeout=60.0 if a.quick else 600.0, quick=a.quick)
    doc.setdefault("stats_load", {"error": "not run"})
    if extra("alerts_cost"):
        say("  alert evaluation, default rules: a real run's share, and 10 simulated minutes at 5 s and 0.1 s ...")
        doc["alerts_cost"] = bench_alerts.alerts_cost(
            work, log, data.ensure_log(a.data, 10, SEED, say), runs=3 if a.quick else 9
        )
    doc.setdefault("alerts_cost", {"error": "not run"})
    if extra("dask"):
        n = a.lines if a.quick else DASK_LINES  # judged on a bigger log: a cluster takes ~1 s to start
        say(f"  the Dask executor against the local pool and a dask.bag script, {n:,} lines ...")
        dlog = data.ensure_log(a.data, n, SEED, say)
        data.warm(dlog)
        ref = work / "dask-reference.out"
        run_row(build_rows(1)[0], dlog, ref, timeout * n / a.lines)
        try:
            doc["dask"] = dict(bench_dask.dask_rows(dlog, work, data.sha256_file(ref), a.rounds, say), lines=n)
        except RuntimeError as err:
            doc["dask"] = {"error": str(err), "lines": n}
        ref.unlink(missing_ok=True)
    if a.rss and extra("rss"):
        doc["rss"] = run_rss(a.data, work, a.lines, timeout * 3)
    else:
        doc["rss"] = {"error": "not run", "small_lines": a.lines, "big_lines": 3 * a.lines}
    doc["ratios"] = report.ratios(doc["rows"], doc["rss"])
    doc["targets"] = report.targets(
        doc["ratios"],
        doc["rss"],
        doc["startup"],
        doc["stats_load"],
        doc["rows"],
        doc["small_jobs"],
        doc["inputs"],
        doc["follow"],
        doc["alerts_cost"],
    )
    doc["machine"]["loadavg_end"] = os.getloadavg()
    doc["harness_seconds"] = round(time.perf_counter() - started, 1)
    print(report.render_text(doc))
    # Only a full run may replace latest.* (what the README shows); smoke and partial runs go beside it.
    js, md = report.write(doc, a.out, "quick" if a.quick else "partial" if wanted else "latest")
    say(f"bench: wrote {js} and {md} ({doc['harness_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
