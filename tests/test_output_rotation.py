"""mpobs's own output rotated by logrotate (SIGHUP reopens it), and kills at the worst moments of a checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (
    LOGROTATE,
    NUMBERED,
    append,
    committed_lines,
    info_lines,
    lines_out,
    numbered,
    rotate_output,
    stop_following,
    wait_for,
    whole_output,
)

pytestmark = pytest.mark.skipif(not Path(LOGROTATE).exists(), reason="needs Debian logrotate (scripts/setup.sh)")


def service(tmp_path: Path, log: Path, workers: int, *extra: str) -> list[str]:
    config = tmp_path / "numbered.json"
    config.write_text(json.dumps(NUMBERED))
    return [
        sys.executable,
        "-m",
        "mpobs",
        "process",
        str(log),
        "-F",
        "-c",
        str(config),
        "-w",
        str(workers),
        "-q",
        "-o",
        str(tmp_path / "out"),
        "--save-metrics",
        str(tmp_path / "m.json"),
        *extra,
    ]


def test_sighup_after_logrotate_goes_on_in_the_new_output(tmp_path: Path, fault_workers: int) -> None:
    """Three rotations of the output with logrotate's ``create`` and postrotate ``kill -HUP``: the
    generations put together are the whole output, each line once, and each generation holds whole tasks."""
    log, out = tmp_path / "app.log", tmp_path / "out"
    written = info_lines(3000, 0)
    log.write_text("".join(t + "\n" for t in written))
    proc = subprocess.Popen(service(tmp_path, log, fault_workers), stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for(lambda: lines_out(out) == len(written), 30)
        for r in range(3):
            rotate_output(tmp_path, out, proc.pid)
            more = info_lines(400 + r, len(written))
            append(log, "".join(t + "\n" for t in more).encode())
            written += more
            wait_for(lambda: lines_out(out) == len(more), 30)  # in the new file, not the renamed one
    finally:
        err = stop_following(proc)
    assert proc.returncode == 0, err
    assert err.count("SIGHUP: reopened the output") == 3, err
    assert whole_output(out) == numbered(written)
    assert (tmp_path / "out.1").read_bytes().endswith(b"\n")
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["system"]["output_reopens"] == 3 and m["processors"]["n"]["lines_out"] == len(written)


def test_sighup_without_a_rotation_changes_nothing(tmp_path: Path) -> None:
    log, out = tmp_path / "app.log", tmp_path / "out"
    log.write_text("INFO a\n")
    proc = subprocess.Popen(service(tmp_path, log, 1), stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for(lambda: lines_out(out) == 1, 30)
        proc.send_signal(signal.SIGHUP)
        append(log, b"INFO b\n")
        wait_for(lambda: lines_out(out) == 2, 30)
    finally:
        err = stop_following(proc)
    assert proc.returncode == 0, err
    assert "reopened" not in err and out.read_bytes() == numbered(["INFO a", "INFO b"])


def test_an_output_rotated_while_the_run_was_down_is_cut_where_it_was_renamed(tmp_path: Path) -> None:
    """SIGKILL, then logrotate renames the output (no one to HUP): the restarted run finds the old file
    by inode next to the path, cuts it back to the checkpoint, and goes on in the new one."""
    log, out, ck = tmp_path / "app.log", tmp_path / "out", tmp_path / "ck.json"
    written = info_lines(2000, 0)
    log.write_text("".join(t + "\n" for t in written))
    cmd = service(tmp_path, log, 2, "--checkpoint", str(ck), "--checkpoint-every", "30")
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for(lambda: lines_out(out) == len(written), 30)
        os.killpg(proc.pid, signal.SIGKILL)  # long before its next checkpoint: the output holds more than it says
        proc.wait(30)
        proc.stderr.close()  # type: ignore[union-attr]
        assert committed_lines(ck) < len(written)
        rotate_output(tmp_path, out, None)
        assert out.stat().st_size == 0
        more = info_lines(100, len(written))
        append(log, "".join(t + "\n" for t in more).encode())
        written += more
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, start_new_session=True)
        wait_for(lambda: lines_out(out) + lines_out(tmp_path / "out.1") == len(written), 30)
    finally:
        err = stop_following(proc)
    assert proc.returncode == 0, err
    assert whole_output(out) == numbered(written)
    # Killed again, the checkpoint names the new file: the old one is not cut twice.
    assert json.loads(ck.read_text())["output_id"][1] == out.stat().st_ino


def test_a_kill_inside_a_checkpoint_write_loses_nothing(tmp_path: Path, fault_workers: int) -> None:
    """The run is SIGKILLed while writing a checkpoint: after the output was flushed, before the new
    state is in place. A FIFO at its temp file's name holds the write there (open blocks until a
    reader comes). The restarted run resumes from the last good checkpoint, exactly."""
    log, out, ck = tmp_path / "app.log", tmp_path / "out", tmp_path / "ck.json"
    written = info_lines(1000, 0)
    log.write_text("".join(t + "\n" for t in written))
    cmd = service(tmp_path, log, fault_workers, "--checkpoint", str(ck), "--checkpoint-every", "0.1")
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for(lambda: committed_lines(ck) == len(written), 30)
        tmp = tmp_path / f".ck.json.{proc.pid}.tmp"
        os.mkfifo(tmp)
        more = info_lines(500, len(written))
        append(log, "".join(t + "\n" for t in more).encode())
        written += more
        wchan = Path(f"/proc/{proc.pid}/wchan")
        wait_for(lambda: wchan.read_text() in ("wait_for_partner", "fifo_open"), 30)  # inside the write
        assert lines_out(out) == len(written) and committed_lines(ck) == 1000  # flushed; not yet recorded
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        proc.stderr.close()  # type: ignore[union-attr]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, start_new_session=True)
        wait_for(lambda: committed_lines(ck) == len(written), 30)
        assert not tmp.exists()  # the dead run's temp file is cleared
    finally:
        err = stop_following(proc)
    assert proc.returncode == 0, err
    assert out.read_bytes() == numbered(written)
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["processors"]["n"]["lines_in"] == len(written)
