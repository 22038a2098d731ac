"""Turning raw timings into medians, ratios and PASS/MISS targets; the printed table, latest.json and latest.md."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

from bench import REPO_DIR


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, text=True, timeout=10)
            return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "HEAD"),
        # Uncommitted engine changes change the figures: say so.
        "engine_dirty": bool(git("status", "--porcelain", "--", "mpobs", "dashboard_app")),
        "loadavg_start": os.getloadavg(),
    }


def machine_line(m: dict[str, Any]) -> str:
    commit = (m.get("git_commit") or "?")[:10] + (" (engine uncommitted changes)" if m.get("engine_dirty") else "")
    return f"{m['cores']} cores, {m['cpu_model']}, Python {m['python']}, {m['date']}, commit {commit}"


def summarize_rows(raw: dict[str, dict[str, Any]], lines: int) -> None:
    """Adds median_s, lines_per_s and status to each row of ``raw`` in place."""
    for row in raw.values():
        ok = [t for t in row["runs"] if t is not None]
        row["median_s"] = round(statistics.median(ok), 4) if ok else None
        row["lines_per_s"] = round(lines / row["median_s"]) if ok else None
        errors = [e for e in row["errors"] if e]
        # A row with some failed rounds keeps the median of the rest; the failures show in its rounds.
        row["status"] = "ok" if ok else f"n/a ({errors[0]})" if errors else "n/a (not run)"


def _med(rows: dict[str, Any], key: str) -> float | None:
    row = rows.get(key)
    return row["median_s"] if row and row.get("status") == "ok" else None


def _paired(rows: dict[str, Any], base: str, other: str) -> float | None:
    """``other``'s time over ``base``'s: the median of the rounds' own ratios.

    A round runs every row once, a few seconds apart, so a machine that drifts
    (this VM's plain loop took 3.4 to 5.1 s within one run) moves both sides of a
    round's ratio alike; a ratio of the two rows' medians can pair a fast moment
    of one with a slow moment of the other. Rounds where either run failed are left out.
    """
    if _med(rows, base) is None or _med(rows, other) is None:
        return None
    pairs = [b / a for a, b in zip(rows[base]["runs"], rows[other]["runs"]) if a and b]
    return statistics.median(pairs) if pairs else None


def ratios(rows: dict[str, Any], rss: dict[str, Any]) -> dict[str, float | None]:
    """Speed-ups are time ratios (>1 is faster); overheads are time ratios minus 1 (see ``_paired``)."""

    def speed(base: str, other: str) -> float | None:
        r = _paired(rows, other, base)
        return round(r, 3) if r else None

    def over(base: str, other: str) -> float | None:
        r = _paired(rows, base, other)
        return round(r - 1, 4) if r else None

    small, big = rss.get("small", {}), rss.get("big", {})
    growth = None
    if small.get("hwm_sum_mb") and big.get("hwm_sum_mb"):
        growth = round(big["hwm_sum_mb"] / small["hwm_sum_mb"], 3)
    return {
        "w2_vs_plain": speed("plain", "w2"),
        "w1_vs_plain": speed("plain", "w1"),
        "wN_vs_plain": speed("plain", "wN"),
        "pool_vs_plain": speed("plain", "pool"),
        "instrumented_vs_plain": speed("plain", "instrumented"),
        "w2_vs_instrumented": speed("instrumented", "w2"),
        "scaling_w1_w2": speed("w1", "w2"),
        "trace_overhead": over("w2", "trace"),
        "trace1_overhead": over("w2", "trace1"),
        "trace1_vs_plain": speed("plain", "trace1"),
        "trace1save_vs_plain": speed("plain", "trace1save"),
        "dashboard_overhead": over("w2", "dashboard"),
        "checkpoint_overhead": over("w2", "checkpoint"),
        "alerts_overhead": over("w2", "alerts"),
        "alerts_fast_overhead": over("w2", "alerts_fast"),
        "rss_big_vs_small": growth,
        "w1_vs_mawk": speed("mawk", "w1"),
        "w2_vs_mawk": speed("mawk", "w2"),
        "plain_vs_mawk": speed("mawk", "plain"),
    }


def _target(name: str, figure: float | None, ok: bool | None, shown: str, why: str = "") -> dict[str, Any]:
    status = "n/a" if figure is None else "PASS" if ok else "MISS"
    return {
        "target": name,
        "figure": figure,
        "shown": shown if figure is not None else why or "not measured",
        "status": status,
    }


def targets(
    r: dict[str, Any],
    rss: dict[str, Any],
    startup: dict[str, Any],
    stats: dict[str, Any],
    rows: dict[str, Any],
    small: dict[str, Any] | None = None,
    inputs: dict[str, Any] | None = None,
    follow: dict[str, Any] | None = None,
    alerts: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Each target of issues 2, 5, 12 and 13 with its figure: PASS, MISS, or n/a with the reason."""

    def x(v: float | None) -> str:
        return f"{v:.2f}x" if v is not None else ""

    def pct(v: float | None) -> str:
        return f"{v * 100:+.1f}%" if v is not None else ""

    def why(key: str) -> str:
        row = rows.get(key)
        return row["status"] if row and row.get("status") != "ok" else "not measured"

    mb = rss.get("big", {}).get("hwm_sum_mb")
    p99, su = stats.get("p99_ms"), startup.get("median_s")
    w2, w1, sc = r["w2_vs_plain"], r["w1_vs_plain"], r["scaling_w1_w2"]
    tr, da, gr = r["trace_overhead"], r["dashboard_overhead"], r["rss_big_vs_small"]
    return [
        _target("mpobs w2 >= 1.6x plain loop (issue 5)", w2, (w2 or 0) >= 1.6, x(w2)),
        _target("mpobs w2 >= 1.4x plain loop (issue 2)", w2, (w2 or 0) >= 1.4, x(w2)),
        _target("mpobs w1 within 10% of plain loop (speed >= 0.90x)", w1, (w1 or 0) >= 0.9, x(w1)),
        _target("scaling w1 -> w2 >= 1.7x", sc, (sc or 0) >= 1.7, x(sc)),
        _target(
            "mpobs w1 >= 1.0x mawk (columnar batches)",
            r.get("w1_vs_mawk"),
            (r.get("w1_vs_mawk") or 0) >= 1.0,
            x(r.get("w1_vs_mawk")),
            why("mawk"),
        ),
        _target(
            "mpobs w2 >= 1.8x mawk (columnar batches)",
            r.get("w2_vs_mawk"),
            (r.get("w2_vs_mawk") or 0) >= 1.8,
            x(r.get("w2_vs_mawk")),
            why("mawk"),
        ),
        _target("mpobs w2 >= 6x plain loop (columnar batches)", w2, (w2 or 0) >= 6.0, x(w2)),
        _target("tracing (sample 0.01) overhead <= 10%", tr, (tr or 0) <= 0.10, pct(tr), why("trace")),
        _target(
            "--trace-sample 1 >= 0.5x the plain loop (issue 16)",
            r.get("trace1_vs_plain"),
            (r.get("trace1_vs_plain") or 0) >= 0.5,
            x(r.get("trace1_vs_plain")),
            why("trace1"),
        ),
        _target(
            "--trace-sample 1 --save-traces (all kept) >= 0.5x the plain loop",
            r.get("trace1save_vs_plain"),
            (r.get("trace1save_vs_plain") or 0) >= 0.5,
            x(r.get("trace1save_vs_plain")),
            why("trace1save"),
        ),
        _target("dashboard + /stats at 10 Hz overhead <= 5%", da, (da or 0) <= 0.05, pct(da), why("dashboard")),
        _target(
            f"peak RSS of the tree <= 300 MB at {rss.get('big_lines', 0):,} lines",
            mb,
            (mb or 0) <= 300,
            f"{mb} MB" if mb else "",
            rss.get("error", ""),
        ),
        _target("peak RSS at 3x the lines within 20% of 1x", gr, (gr or 0) <= 1.2, x(gr), rss.get("error", "")),
        _target(
            "/stats p99 <= 20 ms under 50 pollers",
            p99,
            (p99 or 0) <= 20,
            f"{p99:.1f} ms" if p99 is not None else "",
            stats.get("error", ""),
        ),
        _target(
            "start-up on a 10-line file < 0.5 s (median of 5)",
            su,
            (su or 0) < 0.5,
            f"{su:.3f} s" if su is not None else "",
            startup.get("error", ""),
        ),
        _target(
            "checkpoints (every 1 s) overhead <= 5%",
            r.get("checkpoint_overhead"),
            (r.get("checkpoint_overhead") or 0) <= 0.05,
            pct(r.get("checkpoint_overhead")),
            why("checkpoint"),
        ),
        _target(
            "alert evaluation, default rules, overhead <= 2% (issue 17)",
            r.get("alerts_overhead"),
            (r.get("alerts_overhead") or 0) <= 0.02,
            pct(r.get("alerts_overhead")),
            why("alerts"),
        ),
        _target(
            "... evaluated every 0.1 s (the shortest interval) overhead <= 2%",
            r.get("alerts_fast_overhead"),
            (r.get("alerts_fast_overhead") or 0) <= 0.02,
            pct(r.get("alerts_fast_overhead")),
            why("alerts_fast"),
        ),
        *_small_targets(small or {}),
        *_input_targets(inputs or {}, rss),
        *_follow_targets(follow or {}),
        *_alert_targets(alerts or {}),
    ]


def _alert_targets(a: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 17: evaluating the default rules costs <= 2 % (bench/alerts_cost.py)."""
    why = a.get("error", "not run")
    got = [
        (
            "a real run, rules every 0.1 s: evaluation time <= 2% of the run",
            (a.get("run") or {}).get("share_of_the_run"),
            "per_evaluation_ms",
        ),
        (
            "steady state (10 min) every 5 s: <= 2% of one core",
            (a.get("every_5s") or {}).get("share_of_a_core"),
            "steady_ms",
        ),
        (
            "steady state (10 min) every 0.1 s: <= 2% of one core",
            (a.get("every_0.1s") or {}).get("share_of_a_core"),
            "steady_ms",
        ),
    ]
    out = []
    for (name, share, per), part in zip(got, ("run", "every_5s", "every_0.1s")):
        ms = (a.get(part) or {}).get(per)
        shown = f"{share * 100:.2f} % ({ms} ms an evaluation)" if share is not None else ""
        out.append(_target(f"alerts: {name}", share, (share if share is not None else 1) <= 0.02, shown, why))
    return out


def _follow_targets(f: dict[str, Any]) -> list[dict[str, Any]]:
    p99, idle = f.get("p99_ms"), f.get("idle_cpu_share")
    why = f.get("error", "not run")
    return [
        _target(
            "follow: append-to-output p99 < 1 s at 100 lines/s",
            p99,
            (p99 or 9e9) < 1000,
            f"p50 {f.get('p50_ms')} ms, p99 {p99} ms" if p99 is not None else "",
            why,
        ),
        _target(
            "follow: idle costs < 2 % of one core",
            idle,
            (idle if idle is not None else 1) < 0.02,
            f"{idle * 100:.1f} %" if idle is not None else "",
            why,
        ),
    ]


def _input_targets(inputs: dict[str, Any], rss: dict[str, Any]) -> list[dict[str, Any]]:
    from bench.inputs import TARGETS

    out = []
    secs = inputs.get("seconds", {})
    for key, name, num, den, least in TARGETS:
        ratio = inputs.get(key)
        shown = f"{ratio:.2f}x ({secs[den]:.2f} s vs {secs[num]:.2f} s)" if ratio else ""
        out.append(_target(name, ratio, (ratio or 0) >= least, shown, inputs.get("error", "not run")))
    plain, gz = rss.get("big", {}).get("hwm_sum_mb"), rss.get("big_gz", {}).get("hwm_sum_mb")
    share = round(gz / plain, 3) if plain and gz else None
    shown = f"{gz} MB vs {plain} MB ({share:.2f}x)" if share else ""
    out.append(
        _target(
            f"peak RSS on a {rss.get('big_lines', 0):,}-line .gz <= the plain file's +10%",
            share,
            (share or 9) <= 1.10,
            shown,
            rss.get("big_gz", {}).get("error", rss.get("error", "not run")),
        )
    )
    return out


#: (key, target, minimum ratio baseline / mpobs) for the small jobs (issue 12).
SMALL_TARGETS = (
    ("startup", "start-up (1 line, whole command) <= 1.3x `python -c 'import numpy'`", 1 / 1.3),
    ("lines_50k", "50,000 lines at --workers 2 >= 0.8x the plain loop", 0.8),
    ("lines_200k", "200,000 lines at --workers 2 >= 1.5x the plain loop", 1.5),
)


def _small_targets(small: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, name, least in SMALL_TARGETS:
        got = small.get(key, {})
        ratio = got.get("ratio")
        if key == "startup" and ratio:
            shown = f"{1 / ratio:.2f}x ({got['mpobs_s']:.3f} s vs {got['baseline_s']:.3f} s)"
        else:
            shown = f"{ratio:.2f}x ({got['mpobs_s']:.3f} s vs {got['baseline_s']:.3f} s)" if ratio else ""
        out.append(_target(name, ratio, (ratio or 0) >= least, shown, got.get("error", "not run")))
    return out


def table_rows(doc: dict[str, Any]) -> list[list[str]]:
    rows = doc["rows"]
    out = []
    for key, row in rows.items():
        med = row["median_s"]
        if row["status"] != "ok":
            out.append([row["label"], "n/a", "", "", "", row["status"][5:-1]])
            continue
        runs = " ".join(f"{t:.2f}" if t is not None else "failed" for t in row["runs"])
        # A processor alone does other work than the default job: no ratio to its peers.
        alone = key.startswith("p_")
        r, m = (None, None) if alone else (_paired(rows, key, "plain"), _paired(rows, key, "mawk"))
        vs, vm = f"{r:.2f}x" if r else "", f"{m:.2f}x" if m else ""
        out.append([row["label"], f"{med:.3f}", f"{row['lines_per_s'] / 1e6:.2f} M", vs, vm, runs])
    return out


HEAD = ["row", "median s", "lines/s", "speed vs plain", "speed vs mawk", "rounds (s)"]


def _largest(m: dict[str, Any]) -> str:
    procs = sorted(m.get("per_process_hwm_mb", []), key=lambda p: -p["hwm_mb"])
    return f"{procs[0]['process']} {procs[0]['hwm_mb']} MB" if procs else "?"


def render_text(doc: dict[str, Any]) -> str:
    rows = table_rows(doc)
    widths = [max([len(HEAD[i])] + [len(r[i]) for r in rows]) for i in range(len(HEAD))]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    cfg = doc["config"]
    out = [
        f"{cfg['lines']:,} lines ({cfg['bytes'] / 1e6:.0f} MB), {cfg['rounds']} round(s), median (ratios: "
        "median of the rounds' ratios); " + machine_line(doc["machine"]),
        "",
        fmt.format(*HEAD),
        fmt.format(*("-" * w for w in widths)),
    ]
    out += [fmt.format(*r) for r in rows]
    out += ["", "targets:"]
    w = max(len(t["target"]) for t in doc["targets"])
    out += [f"  {t['status']:<4}  {t['target']:<{w}}  {t['shown']}" for t in doc["targets"]]
    rss = doc.get("rss", {})
    for size in ("small", "big"):
        if size in rss:
            m = rss[size]
            out.append(
                f"  RSS at {rss[size + '_lines']:,} lines ({rss['config']}): sum of per-process peaks "
                f"{m['hwm_sum_mb']} MB, sampled tree RSS {m['rss_peak_mb']} MB, PSS {m['pss_peak_mb']} MB, "
                f"anon {m['anon_peak_mb']} MB; largest: {_largest(m)}"
            )
    return "\n".join(out)


def render_markdown(doc: dict[str, Any]) -> str:
    cfg = doc["config"]
    md = [
        f"Benchmark: `python -m bench` on a generated {cfg['lines']:,}-line log ({cfg['bytes'] / 1e6:.0f} MB), "
        f"median of {cfg['rounds']} round(s), wall clock end to end. Speed-ups, overheads and targets are the "
        "median of each round's own ratio (a round runs every row once; the `--trace-sample 1` row's rounds "
        "come after the others').",
        "",
        f"Machine: {machine_line(doc['machine'])}.",
        "",
        "| " + " | ".join(HEAD) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(HEAD) - 1)) + " |",
    ]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in table_rows(doc)]
    md += ["", "| target | figure | result |", "| --- | ---: | --- |"]
    md += [f"| {t['target']} | {t['shown']} | {t['status']} |" for t in doc["targets"]]
    if "dask" in doc:
        from bench.dask_rows import render as render_dask

        lines = doc["dask"].get("lines")
        md += ["", f"Dask executor ({lines:,}-line log):" if lines else "Dask executor:", "", render_dask(doc["dask"])]
    return "\n".join(md) + "\n"


def write(doc: dict[str, Any], out_dir: Path, stem: str = "latest") -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    js.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    md.write_text(render_markdown(doc), encoding="utf-8")
    return js, md
