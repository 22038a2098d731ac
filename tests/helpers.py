"""Helpers the test files share (fixtures are in conftest.py): a real stats segment from a small run, the
dashboard over it, free ports, waiting for a condition, running the command line.

Test files import what they need (``from tests.helpers import ...``); no test file imports another.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpobs.executors.task import KeptRecords

XSS_LINE = '2026-01-01T00:00:00Z ERROR [web] <img src=x onerror="window.__xss=1"> declined'

#: tags -> router (errors / rest) -> filter; tags -> python (raises on "declined"); tags -> counter.
TEST_CONFIG: dict[str, Any] = {
    "processors": [
        {"type": "tag_extractor", "id": "tags"},
        {
            "type": "router",
            "id": "route",
            "inputs": ["tags"],
            "routes": {"errors": {"tag": "error"}},
            "default": "rest",
        },
        {"type": "filter", "id": "db_errors", "inputs": ["route.errors"], "pattern": r"\[db\]"},
        {"type": "python", "id": "check", "inputs": ["tags"], "function": "tests.helpers:explode"},
        {"type": "counter", "id": "levels", "inputs": ["tags"]},
    ]
}


def explode(line: str) -> str:
    """A user function that fails on some lines, so the run has errors to show."""
    if "declined" in line:
        raise ValueError("payment declined, cannot settle")
    return line


@dataclass
class SmallRun:
    """A finished small run whose segment is still open (the test owns and unlinks it)."""

    seg: Any
    meta: Any
    events: KeptRecords  # every record: the test plays the coordinator
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    lines: int = 0


def small_run(folder: Path, lines: int = 3000, trace_rate: float = 1.0) -> SmallRun:
    """Run TEST_CONFIG over a generated log (plus XSS_LINE) in this process, into a new segment."""
    import multiprocessing

    from mpobs.executors.local.worker import RowSink
    from mpobs.executors.task import KeptRecords, TaskSettings, run_task
    from mpobs.inputs.inputset import open_inputs
    from mpobs.inputs.loggen import generate_file
    from mpobs.metrics.document import RunMeta
    from mpobs.metrics.layout import Layout
    from mpobs.metrics.segment import StatsSegment
    from mpobs.pipeline.config import compile_config

    path = folder / "small.log"
    generate_file(str(path), lines - 1, seed=3)
    with open(path, "a", encoding="utf-8") as f:
        f.write(XSS_LINE + "\n")
    pipeline = compile_config(TEST_CONFIG, source="test config")  # its function is this module's: imported once
    layout = Layout(tuple(pipeline.ids), tuple(pipeline.tags), 1, timed=tuple(pipeline.timed))
    seg = StatsSegment.create(layout, multiprocessing.get_context("fork").Lock())
    source = open_inputs([str(path)])
    meta = RunMeta.of(pipeline, source, 1, trace=True, trace_sample=trace_rate)
    seg.set_system(bytes_total=source.size or 0, workers=1)
    seg.set_worker(0, pid=os.getpid(), alive=1)
    source.track(seg)
    seg.set_state("running")
    events = KeptRecords()
    counters: dict[str, dict[str, int]] = {}
    settings = TaskSettings(meta.record_names(), trace_rate=trace_rate)
    for seq, task in enumerate(source.tasks(64 * 1024)):
        # As the local pool and the coordinator do it: live in an in-flight row, then pending, then committed.
        row = layout.inflight_row(0, seq)
        written: list[bytes] = []
        result = run_task(task, pipeline, layout, settings, written.append, RowSink(seg, row, 0), events)
        assert result is not None
        seg.complete(result.counts, live_row=row)
        seg.commit(result.counts)
        source.committed(task, None)
        seg.add_worker(0, tasks=1, lines=result.lines, bytes=task.end - task.start)
        for pid, counts in result.key_counts.items():
            c = counters.setdefault(pid, {})
            for k, v in counts.items():
                c[k] = c.get(k, 0) + v
    source.close()
    return SmallRun(seg, meta, events, counters, lines)


def free_port() -> int:
    """A port nobody listens on right now (127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, timeout: float = 5, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET ``url``; (status, parsed JSON body). Never raises on HTTP errors."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read() or b"null")


def wait_for(predicate: Any, timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        try:
            got = predicate()
            if got:
                return got
        except (OSError, ValueError) as err:  # not up yet
            last_err = err
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_err})")


def big_log(path: Path, lines: int = 3_000_000, block: int = 200_000) -> Path:
    """A log of ``lines`` lines fast: one generated block (with an XSS line) written over and over."""
    from mpobs.inputs.loggen import generate_file

    first = path.with_suffix(".block")
    generate_file(str(first), block - 1, seed=5, awkward=0.0005)
    data = first.read_bytes() + (XSS_LINE + "\n").encode()
    first.unlink()
    with open(path, "wb") as f:
        for _ in range(lines // block):
            f.write(data)
    return path


def start_cli(*args: str, cwd: Path, stdin: Any = None) -> Any:
    """``python -m mpobs.cli.commands ARGS`` as a subprocess.

    stdout and stderr go to files in ``cwd``; ``stdin`` as Popen's.
    """
    import subprocess
    import sys

    out = open(cwd / "cli.stdout", "wb")  # noqa: SIM115 - closed by stop_cli
    err = open(cwd / "cli.stderr", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpobs.cli.commands", *args], cwd=cwd, stdout=out, stderr=err, stdin=stdin
    )
    proc.files = (out, err)  # type: ignore[attr-defined]
    return proc


def kill_if_running(proc: Any) -> None:
    """For a ``finally``: a test that failed half-way must not leave its ``start_cli`` process behind."""
    if proc.poll() is None:
        proc.kill()
        stop_cli(proc)


def stop_cli(proc: Any, timeout: float = 30) -> str:
    """Wait for (or, after ``timeout``, kill) a ``start_cli`` process; returns its stderr text."""
    import subprocess

    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for f in proc.files:
        f.close()
    return Path(proc.files[1].name).read_text(errors="replace")


def serve_in_child(source: Any, port: int) -> Any:
    """Serve ``source`` with waitress in a forked process on 127.0.0.1:``port`` (as mpobs does); returns it."""
    import multiprocessing

    from dashboard_app.process import DashboardOptions, bind_socket, serve

    sock = bind_socket("127.0.0.1", port)
    opts = DashboardOptions("127.0.0.1", port)
    proc = multiprocessing.get_context("fork").Process(target=serve, args=(source, sock, opts), daemon=True)
    proc.start()
    sock.close()
    return proc


def stop_child(proc: Any) -> None:
    proc.terminate()
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def launch_chromium(pw: Any) -> Any:
    """Debian's chromium through Playwright; never a downloaded browser."""
    import shutil

    exe = shutil.which("chromium")
    assert exe, "Debian chromium is not installed (scripts/setup.sh --test installs it)"
    return pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
