"""Follow mode: a growing log, rotated by the real logrotate, read exactly once; SIGTERM ends it with exit 0."""

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

from tests.helpers import (
    LOGROTATE,
    NUMBERED,
    append,
    committed_lines,
    free_port,
    get_json,
    info_lines,
    lines_out,
    numbered,
    rotate_output,
    stop_following,
    wait_for,
    whole_output,
)

pytestmark = pytest.mark.skipif(not Path(LOGROTATE).exists(), reason="needs Debian logrotate (scripts/setup.sh)")


def rotate(tmp_path: Path, log: Path, mode: str) -> None:
    """``logrotate -f`` with its own config and state file: ``create`` (rename) or ``copytruncate``."""
    conf = tmp_path / "logrotate.conf"
    conf.write_text(f"{log} {{\n  rotate 9\n  {mode}\n  missingok\n  nocompress\n}}\n")
    res = subprocess.run([LOGROTATE, "-f", "-s", str(tmp_path / "logrotate.state"), str(conf)], capture_output=True)
    assert res.returncode == 0, res.stderr.decode()


def hangup_is_handled(pid: int) -> bool:
    """Whether process ``pid`` ignores or catches SIGHUP (bit 0 of SigIgn/SigCgt in /proc/PID/status)."""
    try:
        fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except OSError:
        return False
    return bool((int(fields["SigIgn"], 16) | int(fields["SigCgt"], 16)) & 1)


def read_offset(pid: int, path: Path) -> int | None:
    """Where process ``pid`` is in its open file ``path`` (/proc/PID/fdinfo), None when it has none open."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        for fd in fds.iterdir():
            if os.readlink(fd) == str(path):
                return int((Path(f"/proc/{pid}/fdinfo") / fd.name).read_text().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def follow(tmp_path: Path, log: Path, workers: int) -> subprocess.Popen[bytes]:
    config = tmp_path / "numbered.json"
    config.write_text(json.dumps(NUMBERED))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mpobs",
            "process",
            str(log),
            "--follow",
            "-c",
            str(config),
            "-w",
            str(workers),
            "-q",
            "-o",
            str(tmp_path / "out"),
            "--save-metrics",
            str(tmp_path / "m.json"),
        ],
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("mode", ["create", "copytruncate"])
def test_a_followed_log_through_rotations_comes_out_exactly_once(tmp_path: Path, fault_workers: int, mode: str) -> None:
    log = tmp_path / "app.log"
    written = info_lines(2000, 0)
    log.write_text("".join(t + "\n" for t in written))
    out = tmp_path / "out"
    proc = follow(tmp_path, log, fault_workers)
    try:
        wait_for(lambda: lines_out(out) == 2000, 30)
        # Half a line waits for its newline. It must NOT come out: once the reader has read it (its
        # file offset is at the end), it gets a few of its 0.1 s looks at it before the rest arrives.
        append(log, b"INFO half")
        wait_for(lambda: read_offset(proc.pid, log) == log.stat().st_size, 30)
        time.sleep(0.5)
        assert lines_out(out) == 2000
        append(log, b" and the rest\n")
        written.append("INFO half and the rest")
        for r in range(3):
            more = info_lines(500, len(written))
            append(log, "".join(t + "\n" for t in more).encode())
            written += more
            if mode == "copytruncate":  # what is copied away unread is the method's loss: read it first
                wait_for(lambda: lines_out(out) == len(written), 30)
            rotate(tmp_path, log, mode)
            after = info_lines(300 + r, len(written))
            append(log, "".join(t + "\n" for t in after).encode())
            written += after
        wait_for(lambda: lines_out(out) == len(written), 30)
    finally:
        err = stop_following(proc, signal.SIGTERM)
    assert proc.returncode == 0, err
    assert "stopped following (SIGTERM)" in err
    assert out.read_bytes() == numbered(written)
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["processors"]["n"]["lines_in"] == len(written)
    (inp,) = m["inputs"]
    assert inp["rotations"] == 3 and inp["following"] is False and inp["lines"] == len(written)
    assert inp["last_line_at"] is not None


def test_a_rotated_last_line_without_newline_is_complete(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("INFO one\nINFO two without newline")
    out = tmp_path / "out"
    proc = follow(tmp_path, log, 2)
    try:
        wait_for(lambda: lines_out(out) == 1, 30)
        rotate(tmp_path, log, "create")
        append(log, b"INFO three\n")
        wait_for(lambda: lines_out(out) == 3, 30)
    finally:
        err = stop_following(proc, signal.SIGINT)
    assert proc.returncode == 0, err
    assert out.read_bytes() == numbered(["INFO one", "INFO two without newline", "INFO three"])


def test_a_deleted_and_recreated_file_is_followed_and_a_second_sigint_stops_at_once(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("INFO a\n")
    out = tmp_path / "out"
    proc = follow(tmp_path, log, 1)
    try:
        wait_for(lambda: lines_out(out) == 1, 30)
        log.unlink()
        log.write_text("INFO b\n")
        wait_for(lambda: lines_out(out) == 2, 30)
        assert out.read_bytes() == numbered(["INFO a", "INFO b"])
    finally:
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, 130), err.decode()  # the second may come after the first already finished


def test_follow_refuses_a_stream_and_a_compressed_file(tmp_path: Path) -> None:
    import gzip

    gz = tmp_path / "a.gz"
    gz.write_bytes(gzip.compress(b"x\n"))
    res = subprocess.run([sys.executable, "-m", "mpobs", "process", str(gz), "-F"], capture_output=True, timeout=60)
    assert res.returncode == 2 and "gzip compressed" in res.stderr.decode(), res.stderr.decode()
    res = subprocess.run(
        [sys.executable, "-m", "mpobs", "process", "-", "-F"], input=b"x\n", capture_output=True, timeout=60
    )
    assert res.returncode == 2 and "is standard input" in res.stderr.decode(), res.stderr.decode()


def test_generations_before_the_followed_file_are_read_first(tmp_path: Path) -> None:
    (tmp_path / "app.log.1").write_text("INFO old 1\nINFO old 2\n")
    log = tmp_path / "app.log"
    log.write_text("INFO new 1\n")
    config = tmp_path / "numbered.json"
    config.write_text(json.dumps(NUMBERED))
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mpobs",
            "process",
            str(tmp_path / "app.log.1"),
            str(log),
            "-F",
            "-c",
            str(config),
            "-q",
            "-o",
            str(out),
        ],
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: lines_out(out) == 3, 30)
    finally:
        err = stop_following(proc, signal.SIGTERM)
    assert proc.returncode == 0, err
    assert out.read_bytes() == b"1|1|INFO old 1\n2|2|INFO old 2\n3|1|INFO new 1\n"


@pytest.mark.parametrize("seed", [int(s) for s in os.environ.get("MPOBS_FOLLOW_SEEDS", "1,2").split(",")])
@pytest.mark.parametrize("mode", ["create", "copytruncate"])
def test_kills_and_rotations_while_following_lose_nothing_and_repeat_nothing(
    tmp_path: Path, fault_workers: int, mode: str, seed: int
) -> None:
    """Appends (some of half lines), logrotate rotations and SIGKILLs of the whole run at random, each
    followed by the same command again; then SIGTERM. The output is one batch run's over all that was
    written, byte for byte, and the saved counts are that run's."""
    import os
    import random

    rng = random.Random(seed)
    log, out, ck = tmp_path / "app.log", tmp_path / "out", tmp_path / "ck.json"
    log.write_text("INFO first\n")
    written, half = ["INFO first"], ""
    config = tmp_path / "numbered.json"
    config.write_text(json.dumps(NUMBERED))
    cmd = [
        sys.executable,
        "-m",
        "mpobs",
        "process",
        str(log),
        "--follow",
        "-c",
        str(config),
        "-w",
        str(fault_workers),
        "-q",
        "-o",
        str(out),
        "--checkpoint",
        str(ck),
        "--checkpoint-every",
        "0.2",
        "--save-metrics",
        str(tmp_path / "m.json"),
    ]

    def start() -> subprocess.Popen[bytes]:
        p = subprocess.Popen(cmd, stderr=subprocess.PIPE, start_new_session=True)
        # Past the interpreter's own start (a SIGHUP there would end it, as it ends any program).
        wait_for(lambda: hangup_is_handled(p.pid), 30)
        return p

    proc = start()
    wait_for(lambda: ck.exists(), 30)  # the service has started: from here on it can always resume
    kills = 0
    try:
        for _ in range(14):
            action = rng.choice(["append", "append", "half", "rotate", "kill", "rotate the output"])
            if action == "append" or (action == "half" and half):
                texts = [f"INFO {len(written) + k} {'x' * rng.randint(0, 80)}" for k in range(rng.randint(1, 400))]
                append(log, "".join(t + "\n" for t in texts).encode())
                written += [half + texts[0], *texts[1:]]
                half = ""
            elif action == "half":
                half = f"INFO half {len(written)} "
                append(log, half.encode())
            elif action == "rotate":
                if mode == "copytruncate":
                    if half:  # what is copied away before it is read is copytruncate's loss: read it all first
                        continue
                    wait_for(lambda: committed_lines(ck) == len(written), 30)
                elif half:  # rotated away, a last line is complete without its newline
                    written.append(half)
                    half = ""
                rotate(tmp_path, log, mode)
            elif action == "rotate the output":  # logrotate's create, then kill -HUP
                rotate_output(tmp_path, out, proc.pid)
            else:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
                proc.stderr.close()  # type: ignore[union-attr]
                kills += 1
                proc = start()
        if half:
            append(log, b"the end\n")
            written.append(half + "the end")
        try:
            wait_for(lambda: committed_lines(ck) == len(written), 60)
        except AssertionError:
            raise AssertionError(
                f"{committed_lines(ck)} of {len(written)} lines committed; the last run "
                f"(exit {proc.poll()}) said: {stop_following(proc, signal.SIGTERM)}"
            ) from None
    finally:
        err = stop_following(proc, signal.SIGTERM)
    assert proc.returncode == 0, err
    assert whole_output(out) == numbered(written)
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["processors"]["n"]["lines_in"] == m["processors"]["n"]["lines_out"] == len(written)
    assert m["system"]["total_lines"] == len(written)
    assert m["system"]["checkpoint"]["lines"] == len(written)
    assert m["system"]["checkpoint"]["output_bytes"] == out.stat().st_size


def test_stats_and_healthz_while_a_followed_file_is_quiet(tmp_path: Path) -> None:
    """/stats shows the followed input (following, lag, rotations, last line); /healthz stays OK while it is quiet."""
    log = tmp_path / "app.log"
    log.write_text("INFO a\nINFO b\n")
    config = tmp_path / "numbered.json"
    config.write_text(json.dumps(NUMBERED))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mpobs",
            "process",
            str(log),
            "-F",
            "-c",
            str(config),
            "-q",
            "-o",
            str(tmp_path / "out"),
            "--dashboard",
            "--dashboard-port",
            str(port),
            "--linger",
            "0",
        ],
        stderr=subprocess.PIPE,
    )

    def stats_with(lines: int, rotations: int) -> Any:
        try:
            code, doc = get_json(f"{url}/stats")
        except OSError:
            return None  # not serving yet
        i = doc["inputs"][0] if code == 200 else {}
        return doc if doc["system"]["total_lines"] == lines and i.get("rotations") == rotations else None

    try:
        wait_for(lambda: stats_with(2, 0), 30)
        rotate(tmp_path, log, "create")
        append(log, b"INFO c\n")
        doc = wait_for(lambda: stats_with(3, 1), 30)
        (i,) = doc["inputs"]
        assert i["following"] is True and i["lag_bytes"] == 0 and i["last_line_at"] and i["state"] == "reading"
        assert get_json(f"{url}/healthz")[0] == 200  # quiet is not unhealthy
    finally:
        err = stop_following(proc, signal.SIGTERM)
    assert proc.returncode == 0, err


def test_a_stopped_followed_run_restarted_follows_on(tmp_path: Path) -> None:
    """SIGTERM (a service stop) then the same command: it goes on from where it stopped, following, and
    a checkpoint made with --follow is refused without it."""
    log, out, ck = tmp_path / "app.log", tmp_path / "out", tmp_path / "ck.json"
    log.write_text("INFO a\n")
    config = tmp_path / "numbered.json"
    config.write_text(json.dumps(NUMBERED))
    cmd = [
        sys.executable,
        "-m",
        "mpobs",
        "process",
        str(log),
        "-F",
        "-c",
        str(config),
        "-q",
        "-o",
        str(out),
        "--checkpoint",
        str(ck),
        "--checkpoint-every",
        "0.1",
    ]
    for text in ("INFO b", "INFO c"):
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
        try:
            append(log, f"{text}\n".encode())
            wait_for(
                lambda: committed_lines(ck) == lines_out(out) and out.read_bytes().endswith(f"{text}\n".encode()), 30
            )
        finally:
            err = stop_following(proc, signal.SIGTERM)
        assert proc.returncode == 0, err
    assert out.read_bytes() == numbered(["INFO a", "INFO b", "INFO c"])
    res = subprocess.run([a for a in cmd if a != "-F"], capture_output=True, timeout=60)
    assert res.returncode == 2 and "was made with --follow" in res.stderr.decode(), res.stderr.decode()


def test_the_checkpoint_cannot_be_the_output(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("INFO a\n")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mpobs",
            "process",
            str(log),
            "-o",
            str(tmp_path / "o"),
            "--checkpoint",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        timeout=60,
    )
    assert res.returncode == 2 and "is also the output" in res.stderr.decode(), res.stderr.decode()
    assert not (tmp_path / "o").exists()


def test_a_steady_trickle_on_a_pipe_is_not_held_for_a_full_block(tmp_path: Path) -> None:
    """A line every 20 ms, never quiet for 0.1 s: lines still come out within a second, not at 1 MiB."""
    config = tmp_path / "numbered.json"
    config.write_text(json.dumps(NUMBERED))
    out = tmp_path / "out"
    # The writer goes on far longer than any wait below (it is killed at the end): lines that come out
    # while it still writes were not held for a full block (1 MiB: tens of thousands of ticks).
    writer = (
        "import sys, time\n"
        "for k in range(100_000):\n"
        "    sys.stdout.write(f'INFO tick {k}\\n'); sys.stdout.flush(); time.sleep(0.02)\n"
    )
    src = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpobs", "process", "-", "-c", str(config), "-q", "-o", str(out)],
        stdin=src.stdout,
        stderr=subprocess.PIPE,
    )
    assert src.stdout is not None
    src.stdout.close()
    try:
        wait_for(lambda: lines_out(out) >= 10, 30)  # a busy machine may take seconds to start the run
        assert src.poll() is None
    finally:
        src.kill()
        src.wait()
        err = stop_following(proc, signal.SIGTERM)
    assert proc.returncode in (0, 143), err


def test_sigterm_stops_a_followed_run_still_reading_an_open_stream_before_it(tmp_path: Path) -> None:
    """``- app.log -F`` with standard input held open: SIGTERM ends the reading of the stream too
    (it does not wait for the writer), and the stream's whole lines read so far are in the output."""
    log = tmp_path / "app.log"
    log.write_text("INFO in the file\n")
    config = tmp_path / "numbered.json"
    config.write_text(json.dumps(NUMBERED))
    out = tmp_path / "out"
    r, w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpobs", "process", "-", str(log), "-F", "-c", str(config), "-q", "-o", str(out)],
        stdin=r,
        stderr=subprocess.PIPE,
    )
    os.close(r)
    try:
        os.write(w, b"INFO one\nINFO two\n")
        wait_for(lambda: lines_out(out) == 2, 30)
        os.write(w, b"INFO three\nINFO hal")  # half a line: the stream has not ended, so it is not a line yet
        wait_for(lambda: lines_out(out) == 3, 30)
        err = stop_following(proc, signal.SIGTERM)  # the writer keeps the pipe open
    finally:
        os.close(w)
        stop_following(proc, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert "stopped following (SIGTERM)" in err
    assert out.read_bytes() == numbered(["INFO one", "INFO two", "INFO three"])
