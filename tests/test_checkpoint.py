"""Checkpoints: a run killed outright (SIGKILL, the whole process group) and started again with the same
command finishes with the output and counts of one that was never killed; a checkpoint that does not fit
the run is refused, saying why."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.handshake import gate_env
from tests.helpers import committed_lines, slow_config, wait_for
from tests.reference import default_pipeline

#: As GATED_SLOW_FNS, but the gate opens once the checkpoint at ``GATE_CHECKPOINT`` holds lines.
CHECKPOINT_GATED_FNS = """
import json, os, time
def _checkpointed(path):
    try:
        with open(path) as f:
            return json.load(f)["lines"] > 0
    except (OSError, ValueError, KeyError):
        return False

def slow(lines):
    time.sleep({delay})
    at = os.environ.get("GATE_AT")
    if at and lines and int(lines[-1].split(":", 1)[0][5:]) >= int(at):
        deadline = time.monotonic() + 60
        while not _checkpointed(os.environ["GATE_CHECKPOINT"]) and time.monotonic() < deadline:
            time.sleep(0.01)
    return lines
"""
COUNTS = ("lines_in", "lines_out", "errors", "batches")


def exact(metrics: dict[str, Any]) -> dict[str, Any]:
    """What must be the same after any number of kills and restarts (times are not)."""
    s = metrics["system"]
    return {
        "processors": {p: {k: row[k] for k in COUNTS} for p, row in metrics["processors"].items()},
        "tags": metrics["tags"],
        "counters": metrics["counters"],
        "errors_by_type": metrics["errors_by_type"],
        "system": {k: s[k] for k in ("total_lines", "bytes_done", "tasks_done", "total_errors", "state")},
        "inputs": [{k: i[k] for k in ("name", "lines", "lines_done", "state")} for i in metrics["inputs"]],
    }


def command(tmp_path: Path, inputs: list[Path], workers: int, config: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mpobs",
        "process",
        *map(str, inputs),
        "-c",
        str(config),
        "-w",
        str(workers),
        "-q",
        "-o",
        str(tmp_path / "out"),
        "--save-metrics",
        str(tmp_path / "m.json"),
        "--batch-lines",
        "500",
        "--task-size",
        "65536",
        "--checkpoint",
        str(tmp_path / "ck.json"),
        "--checkpoint-every",
        "0.1",
        *extra,
    ]


def kill_part_way(cmd: list[str], tmp_path: Path, after_lines: int) -> None:
    """Start the run; SIGKILL its whole process group once the checkpoint holds ``after_lines`` lines or more.

    Lines from ``after_lines`` + 4,000 on wait at a gate that never opens: however late the test looks,
    the run cannot have ended (the kill lands part way), yet the checkpoint can get past ``after_lines``."""
    env = {**os.environ, **gate_env(after_lines + 4000, tmp_path / "never-opened")}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, start_new_session=True, env=env)
    try:
        wait_for(lambda: committed_lines(tmp_path / "ck.json") >= after_lines or proc.poll() is not None, 60)
        assert proc.poll() is None, f"it finished before it could be killed: {proc.stderr.read().decode()}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(30)
        proc.stderr.close()


@pytest.mark.parametrize("kind", ["plain", "gzip", "two-files"])
def test_killed_runs_resume_to_the_output_and_counts_of_an_unkilled_one(
    tmp_path: Path, make_log: Any, fault_workers: int, kind: str
) -> None:
    log = make_log(40_000, awkward=0.002)
    # 20 ms a batch of 500: a checkpoint (every 0.1 s) about every 5,000 lines at 2 workers, so that
    # the kills below land at various moments (the gate of kill_part_way makes sure they land part way).
    config = slow_config(tmp_path, 0.02)
    if kind == "gzip":
        gz = tmp_path / "in.log.gz"
        gz.write_bytes(gzip.compress(log.read_bytes()))
        inputs = [gz]
    elif kind == "two-files":
        data = log.read_bytes()
        cut = data.index(b"\n", len(data) // 3) + 1
        (tmp_path / "a.log").write_bytes(data[:cut])
        (tmp_path / "b.log").write_bytes(data[cut:])
        inputs = [tmp_path / "a.log", tmp_path / "b.log"]
    else:
        inputs = [log]
    ref = tmp_path / "ref"
    ref.mkdir()
    whole = subprocess.run(command(ref, inputs, fault_workers, config), capture_output=True, timeout=120)
    assert whole.returncode == 0, whole.stderr.decode()

    cmd = command(tmp_path, inputs, fault_workers, config)
    for at in (8_000, 17_000, 26_000):  # three kills, each part way on from the last resume
        kill_part_way(cmd, tmp_path, at)
    last = subprocess.run(cmd, capture_output=True, timeout=120)

    assert last.returncode == 0, last.stderr.decode()
    assert (tmp_path / "out").read_bytes() == (ref / "out").read_bytes() == default_pipeline(log.read_bytes())[0]
    got, want = json.loads((tmp_path / "m.json").read_text()), json.loads((ref / "m.json").read_text())
    assert exact(got) == exact(want)
    # Done is done: the same command again changes nothing.
    again = subprocess.run(cmd, capture_output=True, timeout=120)
    assert again.returncode == 0, again.stderr.decode()
    assert (tmp_path / "out").read_bytes() == (ref / "out").read_bytes()
    assert exact(json.loads((tmp_path / "m.json").read_text())) == exact(want)


def test_sigint_writes_a_checkpoint_the_next_run_resumes_from(tmp_path: Path, make_log: Any) -> None:
    log = make_log(30_000)
    config = slow_config(tmp_path)
    cmd = command(tmp_path, [log], 2, config)
    # From line 15,000 on batches wait at a gate that never opens: the SIGINT always comes part way.
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env={**os.environ, **gate_env(15_000, tmp_path / "never")})
    wait_for(lambda: committed_lines(tmp_path / "ck.json") > 0, 60)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    stopped = json.loads((tmp_path / "ck.json").read_text())
    assert 0 < stopped["lines"] < 30_000
    assert (tmp_path / "out").stat().st_size == stopped["output_length"]
    res = subprocess.run(cmd, capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode()
    assert (tmp_path / "out").read_bytes() == default_pipeline(log.read_bytes())[0]


def _checkpointed(tmp_path: Path, make_log: Any) -> tuple[Path, list[str]]:
    log = make_log(3000)
    cmd = command(tmp_path, [log], 1, slow_config(tmp_path))
    res = subprocess.run(cmd, capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode()
    return log, cmd


def test_a_checkpoint_from_another_config_is_refused(tmp_path: Path, make_log: Any) -> None:
    _, cmd = _checkpointed(tmp_path, make_log)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"processors": [{"type": "uppercase", "id": "up"}]}))
    res = subprocess.run([*cmd, "-c", str(other)], capture_output=True, timeout=60)
    err = res.stderr.decode()
    assert res.returncode == 2 and "another pipeline config" in err and str(tmp_path / "ck.json") in err, err
    assert "Traceback" not in err


def test_two_runs_cannot_share_a_checkpoint(tmp_path: Path, make_log: Any) -> None:
    log = make_log(40_000)
    cmd = command(tmp_path, [log], 1, slow_config(tmp_path))
    # From line 20,000 on the first run waits at a gate that never opens: it still runs (and holds
    # the checkpoint) when the second starts, and when it gets its SIGINT.
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, env={**os.environ, **gate_env(20_000, tmp_path / "never")})
    try:
        # It holds the lock once its first checkpoint is out.
        wait_for(lambda: committed_lines(tmp_path / "ck.json") >= 0, 60)
        second = subprocess.run(cmd, capture_output=True, timeout=60)
        err = second.stderr.decode()
        assert second.returncode == 2 and "is in use by another mpobs run" in err and str(first.pid) in err, err
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 130


def test_a_different_file_at_the_path_is_refused(tmp_path: Path, make_log: Any) -> None:
    log, cmd = _checkpointed(tmp_path, make_log)
    log.unlink()
    log.write_bytes(b"ERROR a new file where the old one was\n")
    res = subprocess.run(cmd, capture_output=True, timeout=60)
    err = res.stderr.decode()
    assert res.returncode == 2 and "is not the file the checkpoint was made for" in err, err


def test_a_changed_file_is_refused_and_a_missing_one_too(tmp_path: Path, make_log: Any) -> None:
    log, cmd = _checkpointed(tmp_path, make_log)
    data = log.read_bytes()
    log.write_bytes(b"X" + data[1:])  # same inode, other first bytes
    res = subprocess.run(cmd, capture_output=True, timeout=60)
    assert res.returncode == 2 and "first bytes differ" in res.stderr.decode(), res.stderr.decode()
    log.unlink()
    res = subprocess.run(cmd, capture_output=True, timeout=60)
    assert res.returncode == 2 and f"input {str(log)!r}: no such file" in res.stderr.decode(), res.stderr.decode()


@pytest.mark.parametrize(
    "content", [b"{not json", b'{"version": 99}', b"", b'{"version": 1}', b"edit:counts", b"edit:offset"]
)
def test_a_corrupt_checkpoint_is_refused_never_a_silent_fresh_start(
    tmp_path: Path, make_log: Any, content: bytes
) -> None:
    _, cmd = _checkpointed(tmp_path, make_log)
    out_before = (tmp_path / "out").read_bytes()
    if content.startswith(b"edit:"):  # a hand edit that still parses: a count dropped, an offset made text
        doc = json.loads((tmp_path / "ck.json").read_text())
        if content == b"edit:counts":
            doc["counts"].pop()
        else:
            doc["inputs"][0]["offset"] = "12"
        content = json.dumps(doc).encode()
    (tmp_path / "ck.json").write_bytes(content)
    res = subprocess.run(cmd, capture_output=True, timeout=60)
    err = res.stderr.decode()
    assert res.returncode == 2 and "corrupt" in err and str(tmp_path / "ck.json") in err, err
    assert "Traceback" not in err
    assert (tmp_path / "out").read_bytes() == out_before


def test_another_output_file_is_refused(tmp_path: Path, make_log: Any) -> None:
    """Resuming must not cut an unrelated file: a new file at the output's path (same size or larger) is refused."""
    _, cmd = _checkpointed(tmp_path, make_log)
    other = (tmp_path / "out").read_bytes() + b"someone else's data\n"
    (tmp_path / "out.new").write_bytes(other)
    os.replace(tmp_path / "out.new", tmp_path / "out")  # another file at the path (a new inode)
    res = subprocess.run(cmd, capture_output=True, timeout=60)
    assert res.returncode == 2 and "is not the output file it wrote" in res.stderr.decode(), res.stderr.decode()
    assert (tmp_path / "out").read_bytes() == other


def test_an_output_shorter_than_the_checkpoint_says_is_refused(tmp_path: Path, make_log: Any) -> None:
    _, cmd = _checkpointed(tmp_path, make_log)
    with open(tmp_path / "out", "r+b") as f:
        f.truncate(10)
    res = subprocess.run(cmd, capture_output=True, timeout=60)
    assert res.returncode == 2 and "fewer than the" in res.stderr.decode(), res.stderr.decode()


def test_checkpoint_needs_an_output_file_and_files_to_resume(tmp_path: Path, make_log: Any) -> None:
    log = make_log(100)
    res = subprocess.run(
        [sys.executable, "-m", "mpobs", "process", str(log), "--checkpoint", str(tmp_path / "c")],
        capture_output=True,
        timeout=60,
    )
    assert res.returncode == 2 and "--checkpoint needs --output FILE" in res.stderr.decode(), res.stderr.decode()
    res = subprocess.run(
        [sys.executable, "-m", "mpobs", "process", "-", "-o", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "c")],
        input=log.read_bytes(),
        capture_output=True,
        timeout=60,
    )
    assert res.returncode == 2 and "cannot resume a stream" in res.stderr.decode(), res.stderr.decode()
    assert not (tmp_path / "c").exists()


def test_a_checkpoint_write_that_fails_keeps_the_last_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk (ENOSPC) while writing: CheckpointError (exit 1), the old checkpoint intact, no temp file."""
    import errno

    import mpobs.run.checkpoint as checkpoint

    path = tmp_path / "ck.json"
    first = checkpoint.Checkpoint("abc", [checkpoint.InputPosition("in.log", 1, 2, 3, "ff", 10, 10, 2, False)], 42, 2)
    checkpoint.write(str(path), first)
    before = path.read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    with pytest.raises(checkpoint.CheckpointError, match=r"No space left on device.*stays valid"):
        checkpoint.write(str(path), checkpoint.Checkpoint("abc", first.inputs, 99, 5))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck.json"]
    assert checkpoint.read(str(path)) == first


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 1 MiB tmpfs: a real full disk (ENOSPC). Needs root and mount(2) (a CI container may not allow it)."""
    where = tmp_path / "disk"
    where.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_a_full_disk_ends_the_run_and_its_checkpoint_resumes_once_there_is_room(
    tmp_path: Path, make_log: Any, fault_workers: int, small_disk: Path
) -> None:
    """The output and the checkpoint on a disk that fills up: exit 1 naming the output and the
    error, the last checkpoint good; with room again, the same command finishes with the output and
    counts of a run that never failed."""
    log = make_log(40_000)  # about 3 MB of output
    # Lines from 5,000 on (about 400 kB of output in front of them) wait until a checkpoint holds
    # lines: one is written before the disk is full, however the processes are scheduled.
    config = slow_config(tmp_path, fns=CHECKPOINT_GATED_FNS)
    common = ["-c", str(config), "-q", "--task-size", "65536", "--batch-lines", "500"]
    ref = subprocess.run(
        [
            sys.executable,
            "-m",
            "mpobs",
            "process",
            str(log),
            *common,
            "-o",
            str(tmp_path / "ref"),
            "--save-metrics",
            str(tmp_path / "ref.json"),
        ],
        capture_output=True,
        timeout=120,
    )
    assert ref.returncode == 0, ref.stderr.decode()
    out, ck = small_disk / "out", small_disk / "ck.json"
    cmd = [
        sys.executable,
        "-m",
        "mpobs",
        "process",
        str(log),
        *common,
        "-w",
        str(fault_workers),
        "-o",
        str(out),
        "--save-metrics",
        str(tmp_path / "m.json"),
        "--checkpoint",
        str(ck),
        "--checkpoint-every",
        "0.05",
    ]
    gated = {**os.environ, "GATE_AT": "5000", "GATE_CHECKPOINT": str(ck)}
    res = subprocess.run(cmd, capture_output=True, timeout=120, env=gated)
    err = res.stderr.decode()
    assert res.returncode == 1, err
    # Whichever filled the disk: the output (written by a worker) or the checkpoint.
    assert f"cannot write the output {str(out)!r}" in err or f"cannot write the checkpoint {str(ck)!r}" in err, err
    assert "No space left on device" in err and "Traceback" not in err
    import mpobs.run.checkpoint as checkpoint

    saved = checkpoint.read(str(ck))  # valid, and what it says is in the output is there
    assert saved is not None and saved.lines > 0 and out.stat().st_size >= saved.output_length
    assert (tmp_path / "ref").read_bytes().startswith(out.read_bytes()[: saved.output_length])
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    res = subprocess.run(cmd, capture_output=True, timeout=120, env=gated)
    assert res.returncode == 0, res.stderr.decode()
    assert out.read_bytes() == (tmp_path / "ref").read_bytes()
    assert exact(json.loads((tmp_path / "m.json").read_text())) == exact(
        json.loads((tmp_path / "ref.json").read_text())
    )
