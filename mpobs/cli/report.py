"""What a person sees on stderr: the progress line while running, the summary table and the end after."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click

from mpobs.errors import EXIT_ALERT, EXIT_FAILED, EXIT_MAX_ERRORS, EXIT_OK, EXIT_USAGE

#: Keys of each counter (and tags) the summary and the page show; the rest are summed.
TOP_KEYS = 10
#: Characters of a key the summary shows (a key is log content: it may be of any length).
KEY_CHARS = 60


class Progress:
    """Only on a terminal: click's progress bar over bytes done, with lines/s, when the input's
    size is known; else (a pipe) a line of lines, bytes and rate, with no ETA to guess."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar: Any = None
        self.shown = 0
        self.rate = 0.0

    def tick(self, live_stats: Callable[[], dict[str, Any]]) -> None:
        if not self.enabled:
            return
        doc = live_stats()
        stats = doc["system"]
        followed = [i for i in doc.get("inputs", []) if i.get("following")]
        if followed or stats["bytes_total"] is None:
            line = (
                f"mpobs  {stats['total_lines']:,} lines  {_mb(stats['bytes_done'])}  "
                f"{stats['lines_per_second']:,.0f} lines/s"
            )
            for i in followed:  # how far behind each followed file, and when it last had a line
                last = (i["last_line_at"] or "")[11:19] or "none yet"
                line += f"  following {i['name']}: lag {_mb(i['lag_bytes'])}, last line {last}"
            sys.stderr.write("\r" + line.ljust(self.shown))
            sys.stderr.flush()
            self.shown, self.bar = len(line), False
            return
        if self.bar is None:
            self.bar = click.progressbar(
                length=max(stats["bytes_total"], 1),
                label="mpobs",
                file=sys.stderr,
                show_eta=True,
                show_percent=True,
                item_show_func=lambda _: f"{self.rate:,.0f} lines/s",
            )
            self.bar.__enter__()
        self.rate = stats["lines_per_second"]
        step = stats["bytes_done"] - self.shown
        self.shown = stats["bytes_done"]
        self.bar.update(step, current_item=True)

    def close(self) -> None:
        if self.bar is False:
            sys.stderr.write("\n")
            self.bar = None
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _input_cell(i: dict[str, Any]) -> str:
    what = i["compression"] or ("stream" if i["kind"] == "stream" else "")
    total = f" of {_mb(i['bytes_total'])}" if i["bytes_total"] is not None else ""
    state = "" if i["state"] == "done" else f", {i['state']}"
    return f"{i['name']} ({what + ', ' if what else ''}{i['lines']:,} lines, {_mb(i['bytes_read'])}{total}{state})"


def summary(stats: dict[str, Any]) -> str:
    """The end-of-run table: one row per processor, then totals and errors by type."""
    rows = [("processor", "type", "in", "out", "errors", "ms", "share")]
    for pid, p in stats["processors"].items():
        rows.append(
            (
                pid,
                p["type"],
                f"{p['lines_in']:,}",
                f"{p['lines_out']:,}",
                f"{p['errors']:,}",
                f"{p['processing_time_ms']:,.1f}",
                f"{p['share_of_time'] * 100:.1f}%",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    inputs = stats.get("inputs") or []
    if len(inputs) > 1 or any(i["kind"] != "file" or i["compression"] for i in inputs):
        lines.append("inputs: " + ", ".join(_input_cell(i) for i in inputs))
    s = stats["system"]
    lines.append(
        f"{s['state']}: {s['total_lines']:,} lines in {s['elapsed_s']:.2f} s "
        f"({s['lines_per_second']:,.0f} lines/s) on {s['workers']} {_workers_of(s.get('executor'))}, "
        f"{s['total_errors']:,} errors"
    )
    if s.get("workers_restarted"):
        lines.append(f"workers restarted: {s['workers_restarted']}")
    if s.get("trace"):
        lines.append(f"traces: {s['traces_sent']:,} sent, {s['traces_dropped']:,} dropped (queue full)")
    lines += counts_section("tags", stats.get("tags") or {}, s["total_lines"], "lines")
    for pid, counts in (stats.get("counters") or {}).items():
        lines += counts_section(f"counter {pid}", counts, sum(counts.values()), "counted")
    if stats.get("errors_by_type"):
        lines.append("errors by processor and type:")
        for e in sorted(stats["errors_by_type"], key=lambda e: -e["count"]):
            lines.append(f"  {e['processor']}  {e['error_type']}  {e['count']:,}")
    return "\n".join(lines)


def top_counts(counts: dict[str, int], n: int = TOP_KEYS) -> tuple[list[tuple[str, int]], int, int]:
    """The ``n`` biggest counts (ties in key order), and how many keys and how much the rest hold."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    rest = ranked[n:]
    return ranked[:n], len(rest), sum(v for _, v in rest)


def counts_section(title: str, counts: dict[str, int], total: int, of: str) -> list[str]:
    """A counter's (or the tags') top keys with counts and shares of ``total``, the rest summed; [] if empty."""
    if not counts:
        return []
    top, others, rest = top_counts(counts)
    shown = f"top {len(top)} of {len(counts):,} keys, " if others else ""
    rows = [(shown_key(k), v) for k, v in top] + ([(f"({others:,} others)", rest)] if others else [])
    width = max(len(k) for k, _ in rows)
    nwidth = max(len(f"{v:,}") for _, v in rows)
    out = [f"{title} ({shown}of {total:,} {of}):"]
    for k, v in rows:
        share = f"{v / total * 100:.1f}%".rjust(6) if total else "     –"  # noqa: RUF001 (an en dash: no share of nothing)
        out.append(f"  {k.ljust(width)}  {v:>{nwidth},} {share}")
    return out


def shown_key(key: str, limit: int = KEY_CHARS) -> str:
    """A key taken from the log, safe on a terminal: control characters escaped (no escape sequence
    reaches it), cut to ``limit`` characters."""
    safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in key)
    return safe if len(safe) <= limit else safe[: limit - 1] + "…"


def _workers_of(executor: str | None) -> str:
    """What ran the tasks: "worker(s)" of the local pool, "Dask worker thread(s)" of a cluster."""
    return "Dask worker thread(s)" if executor == "dask" else "worker(s)"


def report(outcome: Any, save_metrics: str | None, summary: Any) -> int:
    """After a run: the saved metrics, the summary (unless quiet), the closing message; returns the exit code
    (the run's, or EXIT_FAILED when the metrics could not be saved after a run that went well)."""
    code, message = outcome.exit_code, outcome.message
    if code == EXIT_OK and outcome.stats["system"]["state"] == "interrupted":
        quiet_stdout()  # the reader of stdout went away: not an error
    if save_metrics:
        failed = save_json(save_metrics, outcome.metrics)
        if failed is not None:
            failed = f"I/O error: cannot write the --save-metrics file {save_metrics!r}: {failed}"
            if code == EXIT_OK:
                code, message = EXIT_FAILED, failed
            else:  # the run's own failure is the message; this one is said too
                click.echo(f"mpobs: error: {failed}", err=True)
    if summary is not None:
        click.echo(summary(outcome.stats), err=True)
    if message:
        kind = "error: " if code in (EXIT_FAILED, EXIT_MAX_ERRORS, EXIT_USAGE, EXIT_ALERT) else ""
        click.echo(f"mpobs: {kind}{message}", err=True)
    return code


def save_json(path: str, doc: Any) -> str | None:
    """Write ``doc`` as indented JSON to ``path``; why it could not be written, if it could not."""
    import json  # here: only --save-metrics writes JSON at the end of a run

    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    except OSError as err:
        return err.strerror or str(err)
    return None


def quiet_stdout() -> None:
    """Send what is still written to stdout nowhere (its reader went away)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except OSError:
        pass


def exit_now(code: int) -> None:
    """End the process after a run, skipping only the interpreter's teardown of its modules.

    Every file of the run is closed by then and every child has ended; what atexit
    holds (multiprocessing's, a user module's) still runs. The teardown (freeing every
    object of every module) cost 2 % of a 50,000-line run (bench/README.md).
    """
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe: the run already ended quietly (report)
    os._exit(code)
