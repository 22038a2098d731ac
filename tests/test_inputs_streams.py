"""Streams as inputs: stdin, /dev/stdin, a FIFO, <(cmd), a device, a writer that stops early.

Every run here is the real command line, reading what a user would pipe into it.
What a run must give is computed without mpobs: the reference (tests/reference.py) over the bytes the inputs hold.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (
    ALL_LINES,
    SMALL_TASKS,
    all_lines,
    assert_default_counts,
    assert_input,
    compress_bytes,
    log_bytes,
    ok,
    run_process,
    write_config,
)
from tests.reference import default_pipeline


def test_stdin_pipe_gives_the_files_output(tmp_path: Path) -> None:
    data = log_bytes(3000, awkward=0.02)
    cat_src = tmp_path / "src.log"
    cat_src.write_bytes(data)
    cat = subprocess.Popen(["cat", str(cat_src)], stdout=subprocess.PIPE)
    try:
        r = ok(run_process(tmp_path, "-", stdin=cat.stdout, extra=SMALL_TASKS))
    finally:
        assert cat.stdout is not None
        cat.stdout.close()
        cat.wait(timeout=30)
    assert r.out == default_pipeline(data)[0]
    assert r.stats is not None
    assert_default_counts(r.stats, data)
    assert r.stats["system"]["state"] == "done"
    assert_input(
        r.inputs[0], name="-", kind="stream", compression=None, lines=3000, bytes_total=None, bytes_read=len(data)
    )
    assert len(r.inputs) == 1


@pytest.mark.parametrize("fmt", [None, "gzip"], ids=["plain", "gzip"])
def test_stdin_redirected_from_a_regular_file_takes_the_file_path(tmp_path: Path, fmt: str | None) -> None:
    data = log_bytes(2000, awkward=0.02)
    src = tmp_path / "src.bin"
    src.write_bytes(data if fmt is None else compress_bytes(fmt, data))
    with open(src, "rb") as f:
        r = ok(run_process(tmp_path, "-", stdin=f, extra=SMALL_TASKS))
    assert r.out == default_pipeline(data)[0]
    assert r.stats is not None
    assert_default_counts(r.stats, data)
    assert_input(r.inputs[0], name="-", kind="file", compression=fmt, lines=2000, bytes_total=src.stat().st_size)


def test_dev_stdin_when_it_is_a_pipe(tmp_path: Path) -> None:
    data = log_bytes(1500, awkward=0.02)
    r = ok(run_process(tmp_path, "/dev/stdin", input=data, extra=SMALL_TASKS))
    assert r.out == default_pipeline(data)[0]
    assert_input(r.inputs[0], name="/dev/stdin", kind="stream", compression=None, lines=1500, bytes_total=None)


WRITER = """
import sys, time
path, data = sys.argv[1], open(sys.argv[2], "rb").read()
cuts = [0, len(data) // 5 + 3, len(data) // 2 + 1, 4 * len(data) // 5 - 7, len(data)]  # mid-line cuts
with open(path, "wb") as f:
    for lo, hi in zip(cuts, cuts[1:]):
        f.write(data[lo:hi])
        f.flush()
        time.sleep(0.3)  # longer than a batch takes: the reader must wait, not end
"""


def test_fifo_with_a_slow_writer(tmp_path: Path) -> None:
    data = log_bytes(4000, awkward=0.02)
    src, fifo = tmp_path / "src.log", tmp_path / "feed.fifo"
    src.write_bytes(data)
    os.mkfifo(fifo)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(fifo), str(src)])
    try:
        r = run_process(tmp_path, str(fifo), extra=("--batch-lines", "100"), timeout=60)
        assert writer.wait(timeout=30) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    ok(r)
    assert r.out == default_pipeline(data)[0]
    assert r.stats is not None
    assert_default_counts(r.stats, data)
    assert_input(
        r.inputs[0], name=str(fifo), kind="stream", compression=None, lines=4000, bytes_total=None, bytes_read=len(data)
    )


def test_process_substitution(tmp_path: Path) -> None:
    data = log_bytes(2000, awkward=0.02)
    src, out, m = tmp_path / "src.log", tmp_path / "out", tmp_path / "m.json"
    src.write_bytes(data)
    q = shlex.quote
    script = (
        f"{q(sys.executable)} -m mpobs process <(cat {q(str(src))}) -q -w 2 -o {q(str(out))} "
        f"--save-metrics {q(str(m))} --task-size 1024"
    )
    res = subprocess.run(["bash", "-c", script], capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr.decode()
    assert out.read_bytes() == default_pipeline(data)[0]
    entry = json.loads(m.read_text())["inputs"][0]
    assert entry["name"].startswith("/dev/fd/"), entry
    assert_input(entry, name=entry["name"], kind="stream", compression=None, lines=2000, bytes_total=None)


def test_a_character_device_is_a_stream(tmp_path: Path) -> None:
    r = ok(run_process(tmp_path, os.devnull))
    assert r.out == b""
    assert_input(r.inputs[0], name=os.devnull, kind="stream", compression=None, lines=0, bytes_total=None)


def test_stdin_closed_early_by_the_writer(tmp_path: Path) -> None:
    data = log_bytes(1000)
    src = tmp_path / "src.log"
    src.write_bytes(data)
    cut = len(data) // 2
    while data[cut - 1 : cut] == b"\n":
        cut += 1  # cut in the middle of a line
    head = subprocess.Popen(["head", "-c", str(cut), str(src)], stdout=subprocess.PIPE)
    try:
        r = ok(
            run_process(tmp_path, "-", stdin=head.stdout, config=write_config(tmp_path, ALL_LINES), extra=SMALL_TASKS)
        )
    finally:
        assert head.stdout is not None
        head.stdout.close()
        head.wait(timeout=30)
    assert r.out == all_lines(data[:cut])  # the last, cut line is a line
    assert r.stats is not None
    assert r.stats["system"]["total_lines"] == data[:cut].count(b"\n") + 1
