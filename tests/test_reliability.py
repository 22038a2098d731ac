"""Faults: killed workers, signals, a killed coordinator. Nothing lost, nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mpobs.testing import run_pipeline
from mpobs.tracing.tracefile import read_traces
from tests.handshake import WAIT_FOR_FILE, gate_env
from tests.helpers import (
    fn_config,
    free_port,
    get_json,
    processes_using,
    segments_of,
    shm_segments,
    slow_config,
    wait_for,
    workers_of,
)
from tests.reference import default_pipeline

KILL_FNS = """
import os, signal
def maybe_die(line):
    # SIGKILL our own worker the first KILL_TIMES times line KILL_AT is seen: a task that crashes its worker.
    if line.startswith(os.environ["KILL_AT"]):
        mark = os.environ["KILL_MARK"]
        n = int(open(mark).read()) if os.path.exists(mark) else 0
        if n < int(os.environ["KILL_TIMES"]):
            open(mark, "w").write(str(n + 1))
            os.kill(os.getpid(), signal.SIGKILL)
    return line
"""


def kill_config(tmp_path: Path) -> Path:
    return fn_config(
        tmp_path,
        "killfns",
        KILL_FNS,
        [
            {"type": "line_counter", "id": "num"},
            {"type": "tag_extractor", "id": "tags"},
            {"type": "python", "id": "die", "function": "killfns:maybe_die"},
            {"type": "filter", "id": "errors", "tag": "error"},
        ],
    )


def start_slow_run(
    tmp_path: Path, log: Path, *extra: str, session: bool = False, workers: int = 2, gate_at: int | None = None
) -> subprocess.Popen[bytes]:
    """``mpobs process`` on the slow pipeline, output in tmp_path/out: long enough to disturb. With ``gate_at``,
    no batch from that line on ends before ``open_gate``: the run is still going when the test disturbs it."""
    env = {**os.environ, **(gate_env(gate_at, tmp_path / "gate-open") if gate_at is not None else {})}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mpobs",
            "process",
            str(log),
            "-c",
            str(slow_config(tmp_path)),
            "-w",
            str(workers),
            "-o",
            str(tmp_path / "out"),
            "--batch-lines",
            "500",
            *extra,
        ],
        stderr=subprocess.PIPE,
        start_new_session=session,
        env=env,
    )


def open_gate(tmp_path: Path) -> None:
    """Let the batches held by ``start_slow_run(gate_at=...)`` go on."""
    (tmp_path / "gate-open").touch()


def run_killing(
    cli: Any, tmp_path: Path, log: Path, times: int, out: Path, metrics: Path, *extra: str, workers: int = 2
) -> Any:
    """The kill pipeline: line 20000 kills its worker the first ``times`` times it is seen."""
    env = {"KILL_AT": "Line 20000:", "KILL_MARK": str(tmp_path / "mark"), "KILL_TIMES": str(times)}
    return cli(
        "process",
        str(log),
        "-c",
        str(kill_config(tmp_path)),
        "-w",
        str(workers),
        "-o",
        str(out),
        "--save-metrics",
        str(metrics),
        *extra,
        env=env,
    )


def test_task_that_kills_its_worker_runs_again(tmp_path: Path, cli: Any, make_log: Any, fault_workers: int) -> None:
    log = make_log(40_000)
    out, m = tmp_path / "out", tmp_path / "m.json"
    res = run_killing(cli, tmp_path, log, 1, out, m, "--task-size", "65536", workers=fault_workers)
    assert res.returncode == 0, res.stderr.decode()
    clean = tmp_path / "clean"
    assert run_killing(cli, tmp_path, log, 0, clean, tmp_path / "clean.json").returncode == 0
    assert out.read_bytes() == clean.read_bytes()
    stats, want = json.loads(m.read_text()), json.loads((tmp_path / "clean.json").read_text())
    assert stats["system"]["workers_restarted"] == 1
    for pid in ("num", "tags", "die", "errors"):
        for k in ("lines_in", "lines_out", "errors"):
            assert stats["processors"][pid][k] == want["processors"][pid][k]
    assert stats["tags"] == want["tags"]
    assert stats["system"]["total_lines"] == 40_000


def test_task_that_kills_its_worker_three_times_fails_the_run(
    tmp_path: Path, cli: Any, make_log: Any, fault_workers: int
) -> None:
    log = make_log(40_000)
    out, m = tmp_path / "out", tmp_path / "m.json"
    res = run_killing(cli, tmp_path, log, 99, out, m, "--task-size", "65536", workers=fault_workers)
    err = res.stderr.decode()
    assert res.returncode == 1, err
    assert "Traceback" not in err
    import re

    # It names the processor, its function and the line (num numbers lines "Line N: ..." before die sees them).
    found = re.search(
        r"mpobs: error: processor 'die' \(function killfns:maybe_die\) at line in\.log:20000 killed "
        r"its worker 3 times \(task (\d+) \(lines (\d+)-(\d+), bytes \d+-\d+\)\); giving up",
        err,
    )
    assert found, err
    first, last = int(found[2]), int(found[3])
    assert first <= 20_000 <= last
    stats = json.loads(m.read_text())
    assert stats["system"]["state"] == "failed"
    # what finished before the bad task is written, in order, and counted
    expected = b"".join(line + b"\n" for line in out.read_bytes().split(b"\n")[:-1])
    assert out.read_bytes() == expected
    written = out.read_bytes().count(b"\n")
    assert written == stats["processors"]["errors"]["lines_out"]
    assert stats["system"]["total_lines"] == first - 1


STALL_FNS = (
    WAIT_FOR_FILE
    + """
import os
def stall(line):
    if line.startswith("STALL"):
        mark = os.environ["STALL_MARK"]
        with open(mark + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(mark + ".tmp", mark)  # the test sees the whole pid or nothing
        # Holds task 0 until the test has seen what it looks for: every later task finishes first
        # and waits for its turn to be written.
        _wait_for_file(mark + ".release")
        open(mark + ".done", "w").close()
    return line
"""
)


def stall_config(tmp_path: Path) -> Path:
    """The default pipeline behind a step that stalls on a line starting with STALL, until released."""
    return fn_config(
        tmp_path,
        "stallfns",
        STALL_FNS,
        [
            {"type": "python", "id": "stall", "function": "stallfns:stall"},
            {"type": "line_counter", "id": "line_counter"},
            {"type": "tag_extractor", "id": "tag_extractor"},
            {"type": "filter", "id": "error_filter", "tag": "error", "inputs": ["tag_extractor"]},
            {"type": "filter", "id": "warn_filter", "tag": "warn", "inputs": ["tag_extractor"]},
            {"type": "filter", "id": "info_filter", "tag": "info", "inputs": ["tag_extractor"]},
        ],
    )


def start_stalled_run(tmp_path: Path, log: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """The stall pipeline on 2 workers with a dashboard on ``port``; its first line stalls task 0 until
    ``release_stall`` (tmp_path/stalling is there once it stalls)."""
    log.write_bytes(b"STALL INFO the first line\n" + log.read_bytes())
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mpobs",
            "process",
            str(log),
            "-c",
            str(stall_config(tmp_path)),
            "-w",
            "2",
            "-o",
            str(tmp_path / "out"),
            "--task-size",
            "65536",
            "--dashboard",
            "--dashboard-port",
            str(port),
            "--linger",
            "0",
            *extra,
        ],
        stderr=subprocess.PIPE,
        env={**os.environ, "STALL_MARK": str(tmp_path / "stalling")},
    )


def release_stall(tmp_path: Path) -> None:
    """Let task 0 of a ``start_stalled_run`` go on."""
    (tmp_path / "stalling.release").touch()


def settled_while_stalled(tmp_path: Path, port: int) -> dict[str, Any]:
    """/stats once task 0 stalls and the other worker has stopped taking tasks (two reads 0.3 s apart agree)."""

    def stats() -> dict[str, Any] | None:
        try:
            return get_json(f"http://127.0.0.1:{port}/stats", timeout=2)[1]
        except OSError:
            return None  # not listening yet

    def finished(doc: dict[str, Any] | None) -> int:
        return sum(w["tasks"] for w in doc["workers"]) if doc else 0

    def settled() -> dict[str, Any] | None:
        first = stats()
        time.sleep(0.3)
        second = stats()
        return second if finished(first) and finished(first) == finished(second) else None

    wait_for((tmp_path / "stalling").exists)  # task 0 stalls until release_stall
    doc = wait_for(settled)
    assert not (tmp_path / "stalling.done").exists(), "the stall ended before the other worker settled"
    return doc


def test_worker_killed_holding_finished_output_runs_those_tasks_again(tmp_path: Path, make_log: Any) -> None:
    log = make_log(60_000)
    m, port = tmp_path / "m.json", free_port()
    proc = start_stalled_run(tmp_path, log, port, "--save-metrics", str(m))
    try:
        doc = settled_while_stalled(tmp_path, port)
        stalled = int((tmp_path / "stalling").read_text())
        # The other worker has finished tasks it cannot write yet: kill it.
        busy = next(w for w in doc["workers"] if w["pid"] != stalled)
        assert busy["tasks"] >= 1
        os.kill(busy["pid"], signal.SIGKILL)
    finally:
        release_stall(tmp_path)
        finished_with_one_restart(proc, log, tmp_path / "out", m, 60_001)  # each line counted once


def test_a_stalled_task_stops_the_others_from_running_far_ahead(tmp_path: Path, make_log: Any) -> None:
    from mpobs.defaults import BACKLOG_PER_WORKER

    log = make_log(60_000)
    port = free_port()
    proc = start_stalled_run(tmp_path, log, port)
    try:
        count = sum(w["tasks"] for w in settled_while_stalled(tmp_path, port)["workers"])
        assert 1 <= count < BACKLOG_PER_WORKER * 2, count  # 66 when nothing limits it
    finally:
        release_stall(tmp_path)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert (tmp_path / "out").read_bytes() == default_pipeline(log.read_bytes())[0]


def test_worker_killed_from_outside_is_replaced(tmp_path: Path, make_log: Any, fault_workers: int) -> None:
    log = make_log(200_000)
    out, m = tmp_path / "out", tmp_path / "m.json"
    proc = start_slow_run(
        tmp_path, log, "--save-metrics", str(m), "--task-size", "65536", workers=fault_workers, gate_at=100_000
    )
    try:
        # Mid-run (output has begun) before looking for workers: at the very start, the resource
        # tracker is for a moment a forked copy of mpobs that has not yet exec'd, and looks like one.
        wait_for(lambda: out.exists() and out.stat().st_size > 0)
        victims = wait_for(lambda: len(workers_of(proc)) == fault_workers and workers_of(proc))
        victims[0].kill()  # like the OOM killer; the second half of the run waits at the gate till then
    finally:
        open_gate(tmp_path)
    finished_with_one_restart(proc, log, out, m, 200_000)


def finished_with_one_restart(proc: Any, log: Path, out: Path, metrics: Path, lines: int) -> None:
    """The run ends well: the plain loop's output, one worker restarted, every line counted once."""
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert out.read_bytes() == default_pipeline(log.read_bytes())[0]
    stats = json.loads(metrics.read_text())
    assert stats["system"]["workers_restarted"] == 1
    assert stats["system"]["total_lines"] == lines
    assert stats["processors"]["line_counter"]["lines_in"] == lines


@pytest.mark.parametrize(
    ("sig", "code", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_signal_stops_cleanly_with_a_complete_prefix(
    tmp_path: Path, make_log: Any, sig: int, code: int, word: str, fault_workers: int
) -> None:
    log = make_log(200_000)
    out, m = tmp_path / "out", tmp_path / "m.json"
    # The second half waits at the gate (never opened): the signal always comes part way.
    proc = start_slow_run(
        tmp_path,
        log,
        "--save-metrics",
        str(m),
        "--task-size",
        "65536",
        session=True,
        workers=fault_workers,
        gate_at=100_000,
    )
    try:
        wait_for(lambda: out.exists() and out.stat().st_size > 0)
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # Ctrl-C reaches the whole process group
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        open_gate(tmp_path)
    assert proc.returncode == code, err.decode()
    assert b"Traceback" not in err
    assert f"mpobs: {word}".encode() in err
    stats = json.loads(m.read_text())
    assert stats["system"]["state"] == "interrupted"
    full = default_pipeline(log.read_bytes())[0]
    got = out.read_bytes()
    assert 0 < len(got) < len(full)
    assert full.startswith(got) and got.endswith(b"\n")  # a complete prefix, no torn line
    sinks = ("error_filter", "warn_filter", "info_filter")
    assert got.count(b"\n") == sum(stats["processors"][s]["lines_out"] for s in sinks)
    assert not processes_using(log)
    assert not segments_of(proc.pid)


def test_coordinator_killed_outright_leaves_nothing_behind(tmp_path: Path, cli: Any, make_log: Any) -> None:
    log = make_log(200_000)
    proc = start_slow_run(tmp_path, log)
    wait_for(lambda: len(workers_of(proc)) == 2)
    wait_for(lambda: segments_of(proc.pid))
    proc.kill()
    proc.communicate(timeout=30)
    wait_for(lambda: not processes_using(log), timeout=10)  # workers exit by themselves
    wait_for(lambda: not segments_of(proc.pid), timeout=10)
    res = cli("process", str(log), "-w", "2", "-o", str(tmp_path / "again"))  # the next run is not hindered
    assert res.returncode == 0, res.stderr.decode()
    assert (tmp_path / "again").read_bytes() == default_pipeline(log.read_bytes())[0]


BAD_BYTES = {
    "binary": bytes(range(256)) * 300,
    "nul-bytes": b"ERROR \x00\x00 nul\n\x00\n" * 500,
    "one-byte": b"\n",
    "crlf-only": b"\r\n" * 5000,
}


@pytest.mark.parametrize("name", list(BAD_BYTES))
def test_bad_bytes_lose_no_line(workers: int, name: str) -> None:
    data = BAD_BYTES[name]
    everything = {"processors": [{"type": "line_counter", "id": "n", "format": "{line}"}]}
    result = run_pipeline(everything, data, workers=workers, batch_lines=5000)
    # every input line comes out unchanged: the same bytes, plus a final "\n" if missing
    assert result.output == (data if data.endswith(b"\n") else data + b"\n")
    assert result.stats["system"]["total_lines"] == result.output.count(b"\n")


def test_a_100_mb_line_without_newline(tmp_path: Path, cli: Any) -> None:
    log = tmp_path / "huge.log"
    with open(log, "wb") as f:
        f.write(b"INFO first\n")
        f.write(b"ERROR " + b"x" * (100 * 1024 * 1024))
    out, m = tmp_path / "out", tmp_path / "m.json"
    res = cli("process", str(log), "-w", "2", "-o", str(out), "--save-metrics", str(m), timeout=300)
    assert res.returncode == 0, res.stderr.decode()
    assert out.stat().st_size == len("Line 1: INFO first\n") + len("Line 2: ERROR ") + 100 * 1024 * 1024 + 1
    with open(out, "rb") as f:
        assert f.read(40) == b"Line 1: INFO first\nLine 2: ERROR xxxxxxx"
    stats = json.loads(m.read_text())
    assert stats["system"]["total_lines"] == 2
    assert stats["tags"]["error"] == 1


def test_output_folder_not_writable(tmp_path: Path, cli: Any) -> None:
    log = tmp_path / "in.log"
    log.write_text("ERROR\n")
    res = cli("process", str(log), "-o", "/proc/mpobs-out.txt")
    assert res.returncode == 2
    assert b"Traceback" not in res.stderr


GRAB_FNS = """
import gc, os, signal

def _find(*kinds):
    return next(o for o in gc.get_objects() if type(o).__name__ in kinds)

def die_holding_stats_lock(line):
    # The worst moment to be killed: holding the lock every process shares.
    if line.startswith(os.environ["KILL_AT"]) and not os.path.exists(os.environ["KILL_MARK"]):
        open(os.environ["KILL_MARK"], "w").close()
        seg = _find("StatsSegment")
        held = seg.held()  # kept: dropped at once, the context manager would give the lock back as it goes
        held.__enter__()
        os.kill(os.getpid(), signal.SIGKILL)
    return line

def die_holding_queue_lock(line):
    # Killed in the middle of writing a record message: its queue's write lock stays taken.
    if line.startswith(os.environ["KILL_AT"]) and not os.path.exists(os.environ["KILL_MARK"]):
        open(os.environ["KILL_MARK"], "w").close()
        q = _find("Queue", "SimpleQueue")
        q._wlock.acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    return line
"""


def grab_config(tmp_path: Path, fn: str) -> Path:
    return fn_config(
        tmp_path,
        "grabfns",
        GRAB_FNS,
        [
            {"type": "line_counter", "id": "num"},
            {"type": "python", "id": "grab", "function": f"grabfns:{fn}"},
        ],
    )


@pytest.mark.parametrize("fn", ["die_holding_stats_lock", "die_holding_queue_lock"])
def test_worker_killed_holding_a_lock_does_not_stop_the_run(tmp_path: Path, cli: Any, make_log: Any, fn: str) -> None:
    log = make_log(60_000)
    env = {"KILL_AT": "Line 30000:", "KILL_MARK": str(tmp_path / "mark")}
    out, m, saved = tmp_path / "out", tmp_path / "m.json", tmp_path / "t.jsonl"
    res = cli(
        "process",
        str(log),
        "-c",
        str(grab_config(tmp_path, fn)),
        "-w",
        "2",
        "-o",
        str(out),
        "--save-metrics",
        str(m),
        "--save-traces",
        str(saved),
        "--trace-sample",
        "1",
        "--task-size",
        "65536",
        "--max-errors",
        "1000",
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr.decode()
    lines = log.read_bytes().split(b"\n")[:-1]
    assert out.read_bytes() == b"".join(b"Line %d: %s\n" % (n, x) for n, x in enumerate(lines, 1))
    stats = json.loads(m.read_text())
    assert stats["system"]["workers_restarted"] == 1
    assert stats["processors"]["grab"]["lines_out"] == 60_000
    # every traced line saved exactly once: what the dead worker sent is not sent twice
    ids = [t["line_number"] for t in read_traces(str(saved))]
    assert sorted(ids) == list(range(1, 60_001))


def test_output_that_is_the_input_is_refused(tmp_path: Path, cli: Any) -> None:
    log = tmp_path / "in.log"
    log.write_bytes(b"a ERROR\n" * 100)
    for flag in ("-o", "--save-metrics", "--save-traces"):
        res = cli("process", str(log), flag, str(tmp_path / "." / "in.log"))
        assert res.returncode == 2, flag
        assert b"is the input file" in res.stderr
        assert log.read_bytes() == b"a ERROR\n" * 100


def test_sigterm_to_the_process_group_is_an_interrupt_not_a_crash(tmp_path: Path, make_log: Any) -> None:
    log = make_log(200_000)
    out, m = tmp_path / "out", tmp_path / "m.json"
    proc = start_slow_run(
        tmp_path, log, "--save-metrics", str(m), "--task-size", "65536", session=True, gate_at=100_000
    )  # the second half waits at the gate: the signal comes part way
    try:
        wait_for(lambda: out.exists() and out.stat().st_size > 0)
        os.killpg(proc.pid, signal.SIGTERM)  # e.g. a container runtime stopping everything
        _, err = proc.communicate(timeout=60)
    finally:
        open_gate(tmp_path)
    assert proc.returncode == 143, err.decode()
    stats = json.loads(m.read_text())
    assert stats["system"]["state"] == "interrupted"
    assert stats["system"]["workers_restarted"] == 0
    assert not processes_using(log)


def test_leftovers_of_a_killed_process_group_are_removed_by_the_next_run(
    tmp_path: Path, cli: Any, make_log: Any
) -> None:
    log = make_log(200_000)
    proc = start_slow_run(tmp_path, log, session=True, gate_at=100_000)  # not done before it is killed
    wait_for(lambda: len(workers_of(proc)) == 2)
    mine = wait_for(lambda: segments_of(proc.pid))
    os.killpg(proc.pid, signal.SIGKILL)  # everything at once, the resource tracker too
    proc.communicate(timeout=30)
    wait_for(lambda: not processes_using(log), timeout=10)
    assert set(mine) <= shm_segments()  # left behind: nobody was alive to unlink it
    res = cli("process", str(log), "-w", "1", "-o", str(tmp_path / "again"))
    assert res.returncode == 0, res.stderr.decode()
    assert not set(mine) & shm_segments()
    import tempfile

    assert not [n for n in os.listdir(tempfile.gettempdir()) if n.startswith(f"mpobs-parts-{proc.pid}-")]


def test_save_traces_on_a_full_disk_fails_cleanly(tmp_path: Path, cli: Any, make_log: Any) -> None:
    log = make_log(30_000)
    res = cli(
        "process",
        str(log),
        "-w",
        "2",
        "-o",
        str(tmp_path / "out"),
        "--trace-sample",
        "1",
        "--save-traces",
        "/dev/full",
        timeout=120,
    )
    err = res.stderr.decode()
    assert res.returncode == 1, err
    assert "cannot write the --save-traces file '/dev/full': No space left on device" in err, err
    assert "Traceback" not in err and "Exception in thread" not in err
