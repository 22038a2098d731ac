"""Inputs read by the coordinator (a compressed file, a pipe) when a worker is killed, or on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.handshake import gate_env, pipe_pending
from tests.helpers import (
    assert_default_counts,
    compress_bytes,
    log_bytes,
    processes_using,
    segments_of,
    slow_config,
    wait_for,
    workers_of,
)
from tests.reference import default_pipeline


def compress(fmt: str, src: Path, dst: Path) -> Path:
    """``<tool> -c < src > dst``."""
    dst.write_bytes(compress_bytes(fmt, src.read_bytes()))
    return dst


@pytest.mark.parametrize("kind", ["gzip-file", "stdin-pipe"])
def test_killed_worker_loses_nothing(tmp_path: Path, fault_workers: int, kind: str) -> None:
    data = log_bytes(20_000, seed=6)
    src = tmp_path / "in.log"
    src.write_bytes(data)
    out, m, gate_open = tmp_path / "out", tmp_path / "m.json", tmp_path / "open"
    env = {**os.environ, **gate_env(8000, gate_open)}
    cat = None
    if kind == "gzip-file":
        inp, stdin = str(compress("gzip", src, tmp_path / "in.log.gz")), subprocess.DEVNULL
    else:
        cat = subprocess.Popen(["cat", str(src)], stdout=subprocess.PIPE)
        inp, stdin = "-", cat.stdout
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mpobs",
            "process",
            inp,
            "-c",
            str(slow_config(tmp_path, delay=0)),
            "-q",
            "-w",
            str(fault_workers),
            "-o",
            str(out),
            "--save-metrics",
            str(m),
            "--task-size",
            "65536",
            "--batch-lines",
            "500",
        ],
        stdin=stdin,
        stderr=subprocess.PIPE,
        env=env,
    )
    if cat is not None:
        assert cat.stdout is not None
        cat.stdout.close()
    try:
        wait_for(lambda: out.exists() and out.stat().st_size > 0)  # the lines before the gate are written
        victims = wait_for(lambda: len(workers_of(proc)) == fault_workers and workers_of(proc))
        victims[0].kill()  # it holds a task that waits at the gate
    finally:
        gate_open.touch()
        _, err = proc.communicate(timeout=120)
        if cat is not None:
            cat.wait(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert out.read_bytes() == default_pipeline(data)[0]
    stats = json.loads(m.read_text())
    assert stats["system"]["workers_restarted"] == 1
    assert_default_counts(stats, data)
    assert stats["inputs"][0]["lines"] == 20_000 and stats["inputs"][0]["state"] == "done"


def test_ctrl_c_while_reading_a_slow_pipe(tmp_path: Path) -> None:
    data = log_bytes(3000, seed=7)
    out, m = tmp_path / "out", tmp_path / "m.json"
    r_fd, w_fd = os.pipe()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mpobs",
            "process",
            "-",
            "-q",
            "-w",
            "2",
            "-o",
            str(out),
            "--save-metrics",
            str(m),
            "--task-size",
            "1024",
        ],
        stdin=r_fd,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    os.close(r_fd)
    try:
        os.write(w_fd, data[:30_000])  # then nothing more: a slow writer that keeps the pipe open
        wait_for(lambda: pipe_pending(w_fd) == 0 and segments_of(proc.pid))
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(w_fd)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err.decode()
    assert b"Traceback" not in err
    assert b"mpobs: interrupted" in err
    stats = json.loads(m.read_text())
    assert stats["system"]["state"] == "interrupted"
    got = out.read_bytes()
    assert default_pipeline(data)[0].startswith(got)
    sinks = ("error_filter", "warn_filter", "info_filter")
    assert got.count(b"\n") == sum(stats["processors"][s]["lines_out"] for s in sinks)
    assert not processes_using(out)
    assert not segments_of(proc.pid)
    assert not [n for n in os.listdir(tempfile.gettempdir()) if n.startswith(f"mpobs-parts-{proc.pid}-")]
