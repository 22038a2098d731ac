"""The timed rows: what each one runs, and timing one run end to end as a user would (a subprocess's wall clock)."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import BASELINES_DIR


@dataclass(frozen=True)
class Row:
    """One line of the table: ``key`` for --only and the JSON, ``label`` for people."""

    key: str
    label: str
    kind: str  # "script" (a baseline in bench/baselines), "peer" (another program: its stdout) or "mpobs"
    args: tuple[str, ...] = ()
    dashboard: bool = False
    # Its rounds run after the others': its long full load on every core left the next run
    # 5-10 % slower (measured after a 20 s burn), and that next run was always the same row.
    apart: bool = False
    checkpoint: bool = False  # with --checkpoint (removed before each run, so that it never resumes)
    save_traces: bool = False  # with --save-traces into a file beside the output
    alerts: bool = False  # with --alerts on the shipped default rules (mpobs/alerts/defaults.yml)
    # A processor alone (PROCESSOR_CONFIGS): its output is checked against per_line.py's for that type,
    # not against the plain loop's default pipeline.
    processor: str | None = None


#: One built-in processor alone, per type: what its bench row runs (``--workers 1``), and what
#: bench/baselines/per_line.py does line by line for the reference output.
PROCESSOR_CONFIGS: dict[str, dict[str, object]] = {
    "line_counter": {"type": "line_counter", "id": "p"},
    "uppercase": {"type": "uppercase", "id": "p"},
    "lowercase": {"type": "lowercase", "id": "p"},
    "filter": {"type": "filter", "id": "p", "pattern": "ERROR|WARN"},
    "tag_extractor": {"type": "tag_extractor", "id": "p"},
    "counter": {"type": "counter", "id": "p", "by": r"\[(\w+)\]"},
    "router": {"type": "router", "id": "p", "routes": {"errors": "ERROR"}, "default": "rest"},
}


@dataclass
class RunResult:
    seconds: float | None  # None when the run failed
    error: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


def kill_if_running(proc: subprocess.Popen[bytes]) -> None:
    """For a ``finally``: a run that has not ended (the harness failed half-way) is killed and reaped."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def mpobs_command() -> list[str]:
    """The ``mpobs`` console script of this interpreter (what a user types), not a pyenv-style shim."""
    local = Path(sys.executable).parent / "mpobs"
    if local.is_file() and os.access(local, os.X_OK):
        return [str(local)]
    found = shutil.which("mpobs")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from mpobs.cli.commands import main; sys.exit(main())"]


def build_rows(cpus: int) -> list[Row]:
    """Every timed row, in the order each round runs them."""
    rows = [
        Row("plain", "plain loop", "script", ("plain.py",)),
        Row("mawk", "mawk (the default job in awk, one core)", "peer", ("mawk", "-f", "default.awk")),
        Row("instrumented", "per-line instrumented", "script", ("instrumented.py",)),
        Row("pool", "multiprocessing.Pool script (2 procs)", "script", ("pool.py",)),
        Row("w1", "mpobs --workers 1" + (" (= cpu count)" if cpus == 1 else ""), "mpobs", ("--workers", "1")),
        Row("w2", "mpobs --workers 2" + (" (= cpu count)" if cpus == 2 else ""), "mpobs", ("--workers", "2")),
    ]
    if cpus not in (1, 2):
        rows.append(Row("wN", f"mpobs --workers {cpus} (cpu count)", "mpobs", ("--workers", str(cpus))))
    rows += [
        Row("trace", "mpobs w2 --trace (sample 0.01)", "mpobs", ("--workers", "2", "--trace")),
        Row(
            "trace1",
            "mpobs w2 --trace --trace-sample 1",
            "mpobs",
            ("--workers", "2", "--trace", "--trace-sample", "1"),
            apart=True,
        ),
        Row(
            "trace1save",
            "mpobs w2 --trace-sample 1 --save-traces (every trace saved)",
            "mpobs",
            ("--workers", "2", "--trace-sample", "1"),
            apart=True,
            save_traces=True,
        ),
        Row("dashboard", "mpobs w2 --dashboard, /stats at 10 Hz", "mpobs", ("--workers", "2"), dashboard=True),
        Row("checkpoint", "mpobs w2 --checkpoint (every 1 s)", "mpobs", ("--workers", "2"), checkpoint=True),
        Row("alerts", "mpobs w2 --alerts (default rules, every 5 s)", "mpobs", ("--workers", "2"), alerts=True),
        Row(
            "alerts_fast",
            "mpobs w2 --alerts (default rules) --alerts-interval 0.1",
            "mpobs",
            ("--workers", "2", "--alerts-interval", "0.1"),
            alerts=True,
        ),
    ]
    rows += [
        Row(f"p_{kind}", f"mpobs w1, {kind} alone", "mpobs", ("--workers", "1"), processor=kind)
        for kind in PROCESSOR_CONFIGS
    ]
    return rows


def processor_config(work: Path, kind: str) -> Path:
    """The config file of ``kind``'s row, written into the bench's work folder."""
    import json

    path = work / f"processor-{kind}.json"
    path.write_text(json.dumps({"processors": [PROCESSOR_CONFIGS[kind]]}))
    return path


def processor_reference(kind: str, src: Path, out: Path) -> list[str]:
    """The per-line reference of ``kind``'s row: bench/baselines/per_line.py."""
    return [sys.executable, str(BASELINES_DIR / "per_line.py"), kind, str(src), str(out)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command(row: Row, src: Path, out: Path, port: int | None = None) -> list[str]:
    if row.kind == "script":
        return [sys.executable, str(BASELINES_DIR / row.args[0]), str(src), str(out), *row.args[1:]]
    if row.kind == "peer":  # its output is its stdout (run_row)
        return [row.args[0], *row.args[1:-1], str(BASELINES_DIR / row.args[-1]), str(src)]
    argv = [*mpobs_command(), "process", str(src), *row.args, "-q", "-o", str(out)]
    if row.processor is not None:
        argv += ["-c", str(processor_config(out.parent, row.processor))]
    if row.dashboard:
        argv += ["--dashboard", "--dashboard-port", str(port), "--linger", "0"]
    if row.checkpoint:
        argv += ["--checkpoint", str(out.with_suffix(".ckpt"))]
    if row.alerts:
        import mpobs

        argv += ["--alerts", str(Path(mpobs.__file__).parent / "alerts" / "defaults.yml")]
    if row.save_traces:
        argv += ["--save-traces", str(out.with_suffix(".traces.jsonl"))]
    return argv


class StatsPoller(threading.Thread):
    """Polls the dashboard's /stats at ``hz`` until stopped, like an open dashboard page would.

    On one keep-alive connection, as a browser keeps one: a new connection per poll
    (``urllib.request.urlopen``) costs both ends a TCP handshake and the server a new
    channel each time, which an open page does not.
    """

    def __init__(self, port: int, hz: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.period = 1.0 / hz
        self.stop = threading.Event()
        self.ok_ms: list[float] = []
        self.failed = 0

    def run(self) -> None:
        due = time.perf_counter()
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1.0)
                conn.request("GET", "/stats")
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise http.client.HTTPException(f"status {resp.status}")
                self.ok_ms.append((time.perf_counter() - t0) * 1000)
            except (OSError, http.client.HTTPException):
                self.failed += 1  # not up yet, or already gone
                if conn is not None:
                    conn.close()
                conn = None
            due += self.period
            self.stop.wait(max(0.0, due - time.perf_counter()))
        if conn is not None:
            conn.close()

    def summary(self) -> dict[str, object]:
        ms = sorted(self.ok_ms)
        return {
            "polls_ok": len(ms),
            "polls_failed": self.failed,
            "poll_p50_ms": round(statistics.median(ms), 2) if ms else None,
            "poll_max_ms": round(ms[-1], 2) if ms else None,
        }


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no message"


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a stuck run and everything it started (its segment is left to its resource tracker)."""
    import psutil

    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        kids = []
    proc.kill()
    for kid in kids:
        try:
            if "resource_tracker" not in " ".join(kid.cmdline()):  # it unlinks the leaked segment
                kid.kill()
        except psutil.Error:
            pass
    proc.wait()


def run_row(row: Row, src: Path, out: Path, timeout: float) -> RunResult:
    """Run ``row`` once on ``src`` writing ``out``; the time is Popen to exit, interpreter start-up included."""
    port = free_port() if row.dashboard else None
    argv = command(row, src, out, port)
    poller = StatsPoller(port) if row.dashboard else None
    # Untimed: write back the earlier runs' output now. The kernel writes dirty pages back
    # 30 s after they were written, which is in the middle of some later row: the dashboard
    # row (after the 24 s trace-sample-1 row) took the writeback of the w1, w2 and trace
    # outputs, about 450 MB, and read 3-4 % slower in full runs than in A/B runs.
    if row.checkpoint:
        out.with_suffix(".ckpt").unlink(missing_ok=True)  # a fresh run each time, never a resumed one
    out.with_suffix(".traces.jsonl").unlink(missing_ok=True)  # the last row's traces: 500 MB at 2M lines
    os.sync()
    if row.kind == "peer" and shutil.which(argv[0]) is None:
        return RunResult(None, f"{argv[0]} is not installed")
    with open(out.with_suffix(".stderr"), "w+b") as err, open(out if row.kind == "peer" else os.devnull, "wb") as so:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=so, stderr=err)
        if poller is not None:
            poller.start()
        # A plain wait() blocks in waitpid and sees the exit at once; wait(timeout=...) polls,
        # sleeping up to 50 ms between looks, which added 0-50 ms to every row's time.
        timed_out = threading.Event()

        def stuck() -> None:
            timed_out.set()
            try:
                kill_tree(proc)
            except Exception:
                proc.kill()  # at least the run itself, so that wait() below returns

        watchdog = threading.Timer(timeout, stuck)
        watchdog.daemon = True  # Ctrl-C in the harness must not wait for it
        watchdog.start()
        try:
            rc: int | None = proc.wait()
            seconds = time.perf_counter() - t0
        finally:
            watchdog.cancel()
        watchdog.join()
        if timed_out.is_set():
            rc = None
        if poller is not None:
            poller.stop.set()
            poller.join()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    extra: dict[str, object] = poller.summary() if poller is not None else {}
    if rc is None:
        return RunResult(None, f"timed out after {timeout:g} s", extra)
    if rc != 0:
        return RunResult(None, f"exit {rc}: {last_line(stderr)}", extra)
    return RunResult(seconds, None, extra)
