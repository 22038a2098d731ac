"""Helpers the test files share (fixtures are in conftest.py): each written once, here.

Sections: processes and waiting; configs and the pipelines several files run; saved traces;
follow mode and logrotate; inputs (generated, compressed, run through the CLI); the dashboard (a
real stats segment from a small run, the app over it, the browser). Test files import what they
need (``from tests.helpers import ...``); no test file imports another, nor conftest.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.handshake import GATED_SLOW_FNS
from tests.reference import default_pipeline, split_lines

if TYPE_CHECKING:
    import psutil

    from mpobs.executors.task import KeptRecords

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------
# processes and waiting


def run_cli(
    *args: str, cwd: str | os.PathLike[str] | None = None, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m mpobs ARGS`` as a user would; returns the finished process (bytes out/err)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mpobs", *args], cwd=cwd, capture_output=True, timeout=timeout, env=full_env
    )


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that; fail with ``what`` after ``timeout``.

    An OSError or ValueError from ``predicate`` (a file or a server not there yet) counts as not yet.
    """
    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        try:
            got = predicate()
            if got:
                return got
        except (OSError, ValueError) as err:
            last_err = err
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_err})")


def shm_segments() -> set[str]:
    """mpobs stats segments in /dev/shm (named mpobs_<owner pid>_<random>)."""
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("mpobs_")}
    except FileNotFoundError:
        return set()


def segments_of(pid: int) -> list[str]:
    """The stats segments process ``pid`` made that are still in /dev/shm."""
    return [n for n in shm_segments() if n.startswith(f"mpobs_{pid}_")]


def processes_using(path: Path) -> list[psutil.Process]:
    """Live processes whose command line names ``path`` (our runs and their workers)."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(str(path) in a for a in p.info["cmdline"] or []):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def workers_of(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The worker processes of a running mpobs: its Python children but the resource tracker."""
    import psutil

    try:
        me = psutil.Process(proc.pid)
        exe = me.exe()
        kids = me.children()
    except psutil.NoSuchProcess:
        return []
    found = []
    for k in kids:
        try:
            if k.exe() == exe and not any("resource_tracker" in a for a in k.cmdline()):
                found.append(k)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


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


def prom_query(prom: str, expr: str, at: float | None = None) -> dict[str, Any]:
    """A PromQL query to the Prometheus server at ``prom`` (at time ``at``, default now); its ``data``."""
    params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
    with urllib.request.urlopen(f"{prom}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=10) as r:
        doc = json.loads(r.read())
    assert doc["status"] == "success", doc
    return doc["data"]


# ---------------------------------------------------------------------------------------------
# configs, and the pipelines several files run

SMALL_TASKS = ("--task-size", "1024", "--batch-lines", "7")  # many tasks and batches on small inputs


def write_config(folder: Path, config: Any, name: str = "config.json") -> Path:
    """A config file in ``folder``: ``config`` is its text (a str, written as it is), an object, or its processors."""
    path = folder / name
    if isinstance(config, list):
        config = {"processors": config}
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return path


def fn_config(folder: Path, module: str, source: str, processors: list[dict[str, Any]]) -> Path:
    """A config using functions of a module ``module`` (its ``source``) written next to it."""
    (folder / f"{module}.py").write_text(source)
    return write_config(folder, processors, f"{module}.json")


def default_with(step: dict[str, Any]) -> list[dict[str, Any]]:
    """The default pipeline with ``step`` after its line counter: same output, plus what the step does."""
    return [
        {"type": "line_counter", "id": "line_counter"},
        step,
        {"type": "tag_extractor", "id": "tag_extractor"},
        {"type": "filter", "id": "error_filter", "tag": "error", "inputs": ["tag_extractor"]},
        {"type": "filter", "id": "warn_filter", "tag": "warn", "inputs": ["tag_extractor"]},
        {"type": "filter", "id": "info_filter", "tag": "info", "inputs": ["tag_extractor"]},
    ]


def slow_config(folder: Path, delay: float = 0.01, fns: str = GATED_SLOW_FNS) -> Path:
    """The default pipeline, ``delay`` s slower per batch: long enough to be disturbed part way. With the
    environment of ``handshake.gate_env``, no batch from a given line on ends before the test lets it."""
    return fn_config(
        folder,
        "slowfns",
        fns.format(delay=delay),
        default_with({"type": "python", "id": "slow", "function": "slowfns:slow", "batch": True}),
    )


#: The functions of DAG_CONFIG: "explode" fails, "dup" makes two lines of one.
DAG_FNS = (
    "def annotate(line):\n"
    "    if 'explode' in line:\n"
    "        raise RuntimeError('cannot annotate')\n"
    "    return [line + ' [a]', line + ' [b]'] if 'dup' in line else line + ' [a]'\n"
)
#: Fan-out (a router and a second sink), a python function, a counter, fan-in: ``expected_dag`` says what it gives.
DAG_CONFIG: dict[str, Any] = {
    "processors": [
        {"type": "tag_extractor", "id": "tags"},
        {
            "type": "router",
            "id": "route",
            "routes": {"err": {"tag": "error"}, "warn": {"tag": "warn"}},
            "default": "rest",
        },
        {"type": "uppercase", "id": "up", "inputs": ["route.err"]},
        {"type": "python", "id": "annotate", "function": "dagfns:annotate", "inputs": ["route.warn"]},
        {"type": "counter", "id": "services", "by": r"\[(\w+)\]", "inputs": ["route.rest"]},
        {"type": "filter", "id": "no_debug", "tag": "debug", "invert": True, "inputs": ["services"]},
        {
            "type": "line_counter",
            "id": "number",
            "format": "{count}|{line}",
            "inputs": ["up", "annotate", "no_debug"],
        },
        {"type": "filter", "id": "audit", "pattern": "login", "inputs": ["tags"]},
    ]
}


def write_dag(folder: Path) -> Path:
    """DAG_CONFIG as dag.json, its functions as dagfns.py beside it."""
    (folder / "dagfns.py").write_text(DAG_FNS)
    return write_config(folder, DAG_CONFIG, "dag.json")


def expected_dag(lines: list[str]) -> tuple[list[str], dict[str, int], int]:
    """What DAG_CONFIG gives, computed line by line by hand: output lines, counter keys, errors."""
    import re

    level = re.compile(r"\b(ERROR|WARN|WARNING|INFO|DEBUG)\b")
    tag_of = {"ERROR": "error", "WARN": "warn", "WARNING": "warn", "INFO": "info", "DEBUG": "debug"}
    out: list[str] = []
    services: dict[str, int] = {}
    errors = 0
    for n, line in enumerate(lines, 1):
        m = level.search(line)
        tag = tag_of[m.group(1)] if m else None
        here: list[str] = []
        if tag == "error":
            here.append(f"{n}|{line.upper()}")
        elif tag == "warn":
            if "explode" in line:
                errors += 1
            else:
                here += [f"{n}|{line} [a]", f"{n}|{line} [b]"] if "dup" in line else [f"{n}|{line} [a]"]
        else:
            s = re.search(r"\[(\w+)\]", line)
            if s:
                services[s.group(1)] = services.get(s.group(1), 0) + 1
            if tag != "debug":
                here.append(f"{n}|{line}")
        out += here  # sink "number"
        if "login" in line:
            out.append(line)  # sink "audit", after "number" (config order)
    return out, services, errors


# ---------------------------------------------------------------------------------------------
# saved traces


def saved_traces(path: Path) -> list[dict[str, Any]]:
    """The traces of a --save-traces file in line order, each step's timestamp checked (a float) and taken out."""
    from mpobs.tracing.tracefile import read_traces

    out = []
    for t in read_traces(str(path)):
        for step in t["path"]:
            assert isinstance(step.pop("timestamp"), float)
        out.append(t)
    return sorted(out, key=lambda t: t["line_number"])


# ---------------------------------------------------------------------------------------------
# follow mode, and logrotate

LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"
#: Every line, numbered run-wide and in its file: what ``numbered`` expects.
NUMBERED = {"processors": [{"type": "line_counter", "id": "n", "format": "{count}|{file_line}|{line}"}]}


def numbered(texts: list[str]) -> bytes:
    """What NUMBERED writes for ``texts``, one file's lines."""
    return "".join(f"{n}|{n}|{t}\n" for n, t in enumerate(texts, 1)).encode()


def info_lines(n: int, start: int) -> list[str]:
    """``n`` distinct log lines, numbered from ``start``."""
    return [f"INFO line {k} of the log" for k in range(start, start + n)]


def append(path: Path, data: bytes) -> None:
    """Append ``data`` to the file at ``path``, as a logging application does."""
    with open(path, "ab") as f:
        f.write(data)


def lines_out(out: Path) -> int:
    """Lines in the file ``out`` so far (0 when there is none yet)."""
    try:
        return out.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def rotate_output(folder: Path, out: Path, pid: int | None) -> None:
    """logrotate our output as a user would: ``create``, then ``kill -HUP`` in postrotate (none if ``pid`` is None)."""
    conf = folder / "out-logrotate.conf"
    hup = f"  postrotate\n    kill -HUP {pid}\n  endscript\n" if pid is not None else ""
    conf.write_text(f"{out} {{\n  rotate 9\n  create\n  missingok\n  nocompress\n{hup}}}\n")
    res = subprocess.run([LOGROTATE, "-f", "-s", str(folder / "out-logrotate.state"), str(conf)], capture_output=True)
    assert res.returncode == 0, res.stderr.decode()


def whole_output(out: Path) -> bytes:
    """The rotated generations, oldest first (out.9 ... out.1), then the file at the path."""
    olds = sorted(out.parent.glob(out.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    return b"".join(p.read_bytes() for p in olds) + out.read_bytes()


def committed_lines(checkpoint: Path) -> int:
    """Lines the checkpoint file says are in the output (-1: none yet)."""
    try:
        return int(json.loads(checkpoint.read_text())["lines"])
    except (OSError, ValueError, KeyError):
        return -1


def stop_following(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> str:
    """Send ``sig`` and wait for the run to end (killed if it does not); its stderr."""
    err = b""
    try:
        if proc.poll() is None:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return err.decode()


# ---------------------------------------------------------------------------------------------
# inputs: generated logs, compressed by the real tools, run through the command line

#: The compressed formats mpobs reads, each made by its real tool.
FORMATS = ["gzip", "bzip2", "xz", "zstd"]
# bzip2 -1: blocks of 100 kB, so half a file still holds whole blocks that decode.
COMPRESS = {"gzip": ["gzip", "-c"], "bzip2": ["bzip2", "-1", "-c"], "xz": ["xz", "-c"], "zstd": ["zstd", "-q", "-c"]}
ALL_LINES = [{"type": "line_counter", "id": "num", "format": "Line {count}: {line}"}]  # every line, numbered


def log_bytes(lines: int, seed: int = 1, awkward: float = 0.0) -> bytes:
    """A generated log (mpobs generate), as bytes; every line ends with a newline."""
    from mpobs.inputs.loggen import generate

    buf = io.BytesIO()
    generate(buf, lines, seed=seed, awkward=awkward)
    return buf.getvalue()


def need(fmt: str) -> None:
    """Skip the test when the command-line tool of ``fmt`` is not installed."""
    if shutil.which(fmt) is None:
        pytest.skip(f"{fmt} is not installed")


def compress_bytes(fmt: str, data: bytes) -> bytes:
    """``data`` compressed by the real tool (``gzip -c``, ``bzip2 -1 -c``, ``xz -c``, ``zstd -q -c``)."""
    need(fmt)
    return subprocess.run(COMPRESS[fmt], input=data, capture_output=True, check=True, timeout=60).stdout


def all_lines(data: bytes) -> bytes:
    """What the ALL_LINES pipeline writes for ``data``: ``Line N: <line>`` for every line."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join(b"Line %d: %s\n" % (n, line) for n, line in enumerate(lines, 1))


@dataclass
class ProcessRun:
    """A finished ``run_process``: the process, its -o file and its --save-metrics file."""

    res: subprocess.CompletedProcess[bytes]
    out: bytes | None  # the -o file, None when it was not created
    stats: dict[str, Any] | None  # the --save-metrics file, None when it was not written

    @property
    def err(self) -> str:
        return self.res.stderr.decode("utf-8", "replace")

    @property
    def code(self) -> int:
        return self.res.returncode

    @property
    def inputs(self) -> list[dict[str, Any]]:
        assert self.stats is not None, "no metrics saved"
        return self.stats["inputs"]


def run_process(
    folder: Path,
    *inputs: str,
    config: Path | None = None,
    workers: int = 2,
    extra: tuple[str, ...] = (),
    stdin: Any = subprocess.DEVNULL,
    input: bytes | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    tag: str = "run",
    timeout: float = 120,
) -> ProcessRun:
    """``mpobs process INPUTS -q -w N -o OUT --save-metrics M`` (OUT and M in ``folder``).

    Standard input is ``stdin``, or the bytes ``input``."""
    out, metrics = folder / f"{tag}.out", folder / f"{tag}.json"
    for p in (out, metrics):
        if p.exists():
            p.unlink()
    args = [*inputs, "-q", "-w", str(workers), "-o", str(out), "--save-metrics", str(metrics), *extra]
    if config is not None:
        args += ["-c", str(config)]
    res = subprocess.run(
        [sys.executable, "-m", "mpobs", "process", *args],
        capture_output=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        **({"input": input} if input is not None else {"stdin": stdin}),
    )
    return ProcessRun(
        res, out.read_bytes() if out.exists() else None, json.loads(metrics.read_text()) if metrics.exists() else None
    )


def ok(r: ProcessRun) -> ProcessRun:
    """``r``, once it is known to have ended well (exit 0, no traceback)."""
    assert r.code == 0, r.err
    assert "Traceback" not in r.err
    return r


def assert_default_counts(stats: dict[str, Any], data: bytes) -> None:
    """The saved counts of the default pipeline are the reference's over ``data``."""
    _, tags = default_pipeline(data)
    n = len(split_lines(data))
    assert stats["system"]["total_lines"] == n
    assert stats["tags"] == tags
    procs = stats["processors"]
    assert procs["line_counter"]["lines_in"] == procs["line_counter"]["lines_out"] == n
    assert procs["error_filter"]["lines_out"] == tags["error"]
    assert procs["warn_filter"]["lines_out"] == tags["warn"]
    assert procs["info_filter"]["lines_out"] == tags["info"]


def assert_input(
    entry: dict[str, Any],
    *,
    name: str,
    kind: str,
    compression: str | None,
    lines: int,
    bytes_total: int | None,
    bytes_read: int | None = None,
    state: str = "done",
) -> None:
    """One row of the stats' ``inputs``."""
    assert set(entry) >= {"name", "kind", "compression", "bytes_read", "bytes_total", "lines", "state"}, entry
    got = {k: entry[k] for k in ("name", "kind", "compression", "lines", "bytes_total", "state")}
    assert got == {
        "name": name,
        "kind": kind,
        "compression": compression,
        "lines": lines,
        "bytes_total": bytes_total,
        "state": state,
    }
    if bytes_read is not None:
        assert entry["bytes_read"] == bytes_read, entry


def assert_no_traceback(r: ProcessRun) -> None:
    assert "Traceback" not in r.err, r.err


# ---------------------------------------------------------------------------------------------
# the dashboard

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
    """Stop a ``serve_in_child`` process (killed if it does not end)."""
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
