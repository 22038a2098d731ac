"""Inputs (issue 13): many inputs as one stream, stdin and other streams, compressed files, damaged ones.

Every run here is the real command line. What it must give is computed without mpobs: the
reference (tests/reference.py) over the bytes the inputs hold, one after the other.
"""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
import json
import lzma
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpobs.tracing.tracefile import read_traces
from tests.handshake import gate_env, pipe_pending
from tests.helpers import (
    SMALL_TASKS,
    fn_config,
    processes_using,
    segments_of,
    slow_config,
    wait_for,
    workers_of,
    write_config,
)
from tests.reference import default_pipeline, split_lines

FORMATS = ["gzip", "bzip2", "xz", "zstd"]
# bzip2 -1: blocks of 100 kB, so half a file still holds whole blocks that decode.
COMPRESS = {"gzip": ["gzip", "-c"], "bzip2": ["bzip2", "-1", "-c"], "xz": ["xz", "-c"], "zstd": ["zstd", "-q", "-c"]}
ALL_LINES = [{"type": "line_counter", "id": "num", "format": "Line {count}: {line}"}]  # every line, numbered


# ---------------------------------------------------------------------------------------------
# helpers


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


def compress(fmt: str, src: Path, dst: Path) -> Path:
    """``<tool> -c < src > dst``."""
    dst.write_bytes(compress_bytes(fmt, src.read_bytes()))
    return dst


def all_lines(data: bytes) -> bytes:
    """What the ALL_LINES pipeline writes for ``data``: ``Line N: <line>`` for every line."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join(b"Line %d: %s\n" % (n, line) for n, line in enumerate(lines, 1))


def joined(*parts: bytes) -> bytes:
    """The one stream many inputs make: each input's last line is a line of its own."""
    return b"".join(p if not p or p.endswith(b"\n") else p + b"\n" for p in parts)


@dataclass
class Run:
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


def run(
    tmp_path: Path,
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
) -> Run:
    """``mpobs process INPUTS -q -w N -o OUT --save-metrics M``, stdin from ``stdin`` or the bytes ``input``."""
    out, metrics = tmp_path / f"{tag}.out", tmp_path / f"{tag}.json"
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
    return Run(
        res, out.read_bytes() if out.exists() else None, json.loads(metrics.read_text()) if metrics.exists() else None
    )


def ok(r: Run) -> Run:
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


def assert_no_traceback(r: Run) -> None:
    assert "Traceback" not in r.err, r.err


def prefix_lines(out: bytes, data: bytes) -> int:
    """``out`` is the ALL_LINES output over a byte prefix of ``data`` (only its last line may be cut); its lines."""
    assert out == b"" or out.endswith(b"\n"), out[-200:]
    texts = []
    for n, line in enumerate(out.split(b"\n")[:-1], 1):
        head = b"Line %d: " % n
        assert line.startswith(head), (n, line[:100])
        texts.append(line[len(head) :])
    assert data.startswith(b"\n".join(texts)), "the output is not what the input starts with"
    return len(texts)


def new_decoder(fmt: str) -> Any:
    if fmt == "gzip":
        return zlib.decompressobj(wbits=31)
    if fmt == "bzip2":
        return bz2.BZ2Decompressor()
    if fmt == "xz":
        return lzma.LZMADecompressor()
    zstandard = pytest.importorskip("zstandard")
    return zstandard.ZstdDecompressor().decompressobj()


def decodable(fmt: str, blob: bytes) -> bytes:
    """All a streaming decoder gets out of ``blob`` (one stream) before it ends or breaks."""
    return new_decoder(fmt).decompress(blob)


def _fails_before_any_wrong_byte(fmt: str, blob: bytes, data: bytes, pos: int) -> bool:
    """Fed ``blob[:pos]``, then byte by byte: does decoding fail before it gives a byte that is not ``data``'s?"""
    dec, done = new_decoder(fmt), 0

    def pieces() -> Iterator[bytes]:
        yield blob[:pos]
        for i in range(pos, len(blob)):
            yield blob[i : i + 1]

    try:
        for piece in pieces():
            while piece:
                got = dec.decompress(piece)
                if data[done : done + len(got)] != got:
                    return False  # garbage first: no decoder could stop before it
                done += len(got)
                piece = b""
                if dec.eof:  # the next member or frame, if any
                    piece, dec = dec.unused_data, new_decoder(fmt)
    except Exception:
        return True
    return False


def detected_flip(fmt: str, blob: bytes, data: bytes, start: int, span: int = 4000) -> bytes:
    """``blob`` with one byte flipped at or after ``start``, where the damage is seen before any wrong byte."""
    for pos in range(start, min(start + span, len(blob) - 1)):
        flipped = bytearray(blob)
        flipped[pos] ^= 0xFF
        if _fails_before_any_wrong_byte(fmt, bytes(flipped), data, pos):
            return bytes(flipped)
    raise AssertionError(f"test set-up: no byte after {start} of the {fmt} file breaks it at once")


# ---------------------------------------------------------------------------------------------
# streams: stdin, /dev/stdin, a FIFO, <(cmd), a device


def test_stdin_pipe_gives_the_files_output(tmp_path: Path) -> None:
    data = log_bytes(3000, awkward=0.02)
    cat_src = tmp_path / "src.log"
    cat_src.write_bytes(data)
    cat = subprocess.Popen(["cat", str(cat_src)], stdout=subprocess.PIPE)
    try:
        r = ok(run(tmp_path, "-", stdin=cat.stdout, extra=SMALL_TASKS))
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
        r = ok(run(tmp_path, "-", stdin=f, extra=SMALL_TASKS))
    assert r.out == default_pipeline(data)[0]
    assert r.stats is not None
    assert_default_counts(r.stats, data)
    assert_input(r.inputs[0], name="-", kind="file", compression=fmt, lines=2000, bytes_total=src.stat().st_size)


def test_dev_stdin_when_it_is_a_pipe(tmp_path: Path) -> None:
    data = log_bytes(1500, awkward=0.02)
    r = ok(run(tmp_path, "/dev/stdin", input=data, extra=SMALL_TASKS))
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
        r = run(tmp_path, str(fifo), extra=("--batch-lines", "100"), timeout=60)
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
    r = ok(run(tmp_path, os.devnull))
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
        r = ok(run(tmp_path, "-", stdin=head.stdout, config=write_config(tmp_path, ALL_LINES), extra=SMALL_TASKS))
    finally:
        assert head.stdout is not None
        head.stdout.close()
        head.wait(timeout=30)
    assert r.out == all_lines(data[:cut])  # the last, cut line is a line
    assert r.stats is not None
    assert r.stats["system"]["total_lines"] == data[:cut].count(b"\n") + 1


# ---------------------------------------------------------------------------------------------
# compressed inputs


@pytest.mark.parametrize("fmt", FORMATS)
def test_compressed_file_told_by_its_first_bytes(tmp_path: Path, fmt: str) -> None:
    data = log_bytes(3000, awkward=0.02)
    packed = tmp_path / "packed.dat"  # a name that says nothing
    packed.write_bytes(compress_bytes(fmt, data))
    r = ok(run(tmp_path, str(packed), extra=SMALL_TASKS))
    assert r.out == default_pipeline(data)[0]
    assert r.stats is not None
    assert_default_counts(r.stats, data)
    size = packed.stat().st_size
    assert_input(
        r.inputs[0], name=str(packed), kind="file", compression=fmt, lines=3000, bytes_total=size, bytes_read=size
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_compressed_stdin(tmp_path: Path, fmt: str) -> None:
    data = log_bytes(3000, awkward=0.02)
    blob = compress_bytes(fmt, data)
    r = ok(run(tmp_path, "-", input=blob, extra=SMALL_TASKS))
    assert r.out == default_pipeline(data)[0]
    assert r.stats is not None
    assert_default_counts(r.stats, data)
    assert_input(
        r.inputs[0], name="-", kind="stream", compression=fmt, lines=3000, bytes_total=None, bytes_read=len(blob)
    )


def test_concatenated_gzip_members_read_as_zcat_reads_them(tmp_path: Path) -> None:
    a, b = log_bytes(700, seed=2), log_bytes(900, seed=3)
    both = tmp_path / "both.gz"
    both.write_bytes(compress_bytes("gzip", a) + compress_bytes("gzip", b))  # cat a.gz b.gz
    assert subprocess.run(["gzip", "-dc", str(both)], capture_output=True, check=True).stdout == a + b
    r = ok(run(tmp_path, str(both), extra=SMALL_TASKS))
    assert r.out == default_pipeline(a + b)[0]
    assert r.stats is not None
    assert_default_counts(r.stats, a + b)
    assert_input(
        r.inputs[0], name=str(both), kind="file", compression="gzip", lines=1600, bytes_total=both.stat().st_size
    )


def test_plain_text_named_gz_is_plain_text(tmp_path: Path) -> None:
    data = log_bytes(800)
    fake = tmp_path / "x.gz"
    fake.write_bytes(data)
    r = ok(run(tmp_path, str(fake), extra=SMALL_TASKS))
    assert r.out == default_pipeline(data)[0]
    assert_input(r.inputs[0], name=str(fake), kind="file", compression=None, lines=800, bytes_total=len(data))


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_compressed_file(tmp_path: Path, fmt: str) -> None:
    empty = tmp_path / "empty.bin"
    empty.write_bytes(compress_bytes(fmt, b""))  # <tool> -c < /dev/null
    assert empty.stat().st_size > 0
    r = ok(run(tmp_path, str(empty)))
    assert r.out == b""
    assert r.stats is not None
    assert r.stats["system"]["total_lines"] == 0
    assert_input(r.inputs[0], name=str(empty), kind="file", compression=fmt, lines=0, bytes_total=empty.stat().st_size)


@pytest.mark.parametrize("fmt", FORMATS)
def test_compressed_last_line_without_newline(tmp_path: Path, fmt: str) -> None:
    data = b"a ERROR one\nb WARN two\n\nc INFO three"
    packed = tmp_path / "packed.bin"
    packed.write_bytes(compress_bytes(fmt, data))
    r = ok(run(tmp_path, str(packed)))
    assert r.out == default_pipeline(data)[0] == b"Line 1: a ERROR one\nLine 2: b WARN two\nLine 4: c INFO three\n"
    assert_input(
        r.inputs[0], name=str(packed), kind="file", compression=fmt, lines=4, bytes_total=packed.stat().st_size
    )


# ---------------------------------------------------------------------------------------------
# damaged compressed files


def assert_damage_reported(r: Run, name: str, fmt: str) -> None:
    """Exit 2, one message naming the file, the format and how far it got; no traceback."""
    assert r.code == 2, r.err
    assert_no_traceback(r)
    assert name in r.err and fmt in r.err, r.err
    assert "bytes" in r.err and "lines" in r.err, r.err


def assert_counts_match_output(r: Run, lines: int) -> None:
    """The saved counts of the ALL_LINES pipeline are exactly the ``lines`` lines written."""
    assert r.stats is not None, "the final metrics were not saved"
    assert r.out is not None and r.out.count(b"\n") == lines
    num = r.stats["processors"]["num"]
    assert num["lines_in"] == num["lines_out"] == lines
    assert r.stats["system"]["total_lines"] == lines
    assert r.inputs[0]["lines"] == lines
    assert r.inputs[0]["state"] == "damaged"


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_file_keeps_every_line_decoded_before_the_end(tmp_path: Path, fmt: str) -> None:
    data = log_bytes(6000, seed=3)
    blob = compress_bytes(fmt, data)
    cut = blob[: len(blob) // 2]
    (tmp_path / "cut.bin").write_bytes(cut)
    r = run(tmp_path, "cut.bin", cwd=tmp_path, config=write_config(tmp_path, ALL_LINES), extra=SMALL_TASKS)
    assert_damage_reported(r, "cut.bin", fmt)
    assert r.out is not None
    if fmt == "gzip":
        # exactly `gzip -dc < cut.bin | mpobs process -`: zcat writes out all it decoded
        zcat = subprocess.run(["gzip", "-dc"], input=cut, capture_output=True, timeout=60)
        assert zcat.returncode != 0 and len(zcat.stdout) > 0
        assert r.out == all_lines(zcat.stdout)
        n = len(split_lines(zcat.stdout))
    else:
        n = r.inputs[0]["lines"]
        assert prefix_lines(r.out, data) == n
        # every whole line the decoder gets out of the half file is there
        assert n >= decodable(fmt, cut).count(b"\n")
    assert 0 < n < 6000
    assert_counts_match_output(r, n)


def test_truncated_gzip_on_stdin_is_what_zcat_gets_out_of_it(tmp_path: Path) -> None:
    data = log_bytes(6000, seed=3)
    blob = compress_bytes("gzip", data)
    cut = blob[: len(blob) // 2]
    r = run(tmp_path, "-", input=cut, config=write_config(tmp_path, ALL_LINES), extra=SMALL_TASKS)
    assert r.code == 2, r.err
    assert_no_traceback(r)
    assert "gzip" in r.err and "bytes" in r.err and "lines" in r.err, r.err
    zcat = subprocess.run(["gzip", "-dc"], input=cut, capture_output=True, timeout=60)
    assert r.out == all_lines(zcat.stdout)
    n = len(split_lines(zcat.stdout))
    assert 0 < n < 6000
    assert_counts_match_output(r, n)


@pytest.mark.parametrize("fmt", FORMATS)
def test_bit_flipped_file_stops_with_a_prefix_of_the_clean_output(tmp_path: Path, fmt: str) -> None:
    data = log_bytes(6000, seed=3)
    if fmt == "gzip":
        # A flip inside one deflate stream gives garbage until its CRC: no decoder can stop before it.
        # Two members (cat a.gz b.gz): a flip at the start of the second one's data is seen at once.
        half = data.index(b"\n", len(data) // 2) + 1
        first = compress_bytes(fmt, data[:half])
        blob = first + compress_bytes(fmt, data[half:])
        start = len(first) + 10  # after the second member's 10-byte header
    else:
        blob = compress_bytes(fmt, data)
        start = len(blob) // 2
    (tmp_path / "flipped.bin").write_bytes(detected_flip(fmt, blob, data, start))
    r = run(tmp_path, "flipped.bin", cwd=tmp_path, config=write_config(tmp_path, ALL_LINES), extra=SMALL_TASKS)
    assert_damage_reported(r, "flipped.bin", fmt)
    assert r.out is not None
    n = prefix_lines(r.out, data)  # a prefix of the clean run's output
    assert n < 6000
    assert_counts_match_output(r, n)


# ---------------------------------------------------------------------------------------------
# many inputs


def test_one_unreadable_input_among_many_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "good_a.log").write_bytes(b"a ERROR\n")
    (tmp_path / "good_b.log").write_bytes(b"b ERROR\n")
    r = run(tmp_path, "good_a.log", "missing.log", "good_b.log", cwd=tmp_path)
    assert r.code == 2, r.err
    assert_no_traceback(r)
    assert "missing.log" in r.err
    assert "good_a.log" not in r.err and "good_b.log" not in r.err  # only what cannot be read is named
    assert r.out is None  # -o not created


def test_every_unreadable_input_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_bytes(b"a ERROR\n")
    (tmp_path / "adir").mkdir()
    out = tmp_path / "kept.out"
    out.write_bytes(b"old output\n")
    res = subprocess.run(
        [sys.executable, "-m", "mpobs", "process", "nothere.log", "a.log", "adir", "-q", "-o", str(out)],
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert "Traceback" not in err
    assert "nothere.log" in err and "adir" in err
    assert out.read_bytes() == b"old output\n"  # not changed


def test_many_files_are_one_stream(tmp_path: Path, workers: int) -> None:
    parts = [log_bytes(900, seed=s, awkward=0.02) for s in (1, 2, 3)]
    names = []
    for i, part in enumerate(parts):
        (tmp_path / f"p{i}.log").write_bytes(part)
        names.append(str(tmp_path / f"p{i}.log"))
    r = ok(run(tmp_path, *names, workers=workers, extra=SMALL_TASKS))
    whole = b"".join(parts)  # cat p0 p1 p2
    assert r.out == default_pipeline(whole)[0]
    assert r.stats is not None
    assert_default_counts(r.stats, whole)
    assert [e["lines"] for e in r.inputs] == [900, 900, 900]
    assert [e["name"] for e in r.inputs] == names


def test_a_file_without_final_newline_ends_its_own_line(tmp_path: Path) -> None:
    a, b, c = b"x ERROR one\ny INFO two", b"z WARN three\n", b"ERROR four"
    for name, part in (("a.log", a), ("b.log", b), ("c.log", c)):
        (tmp_path / name).write_bytes(part)
    r = ok(run(tmp_path, "a.log", "b.log", "c.log", cwd=tmp_path))
    assert r.out == default_pipeline(joined(a, b, c))[0]
    assert r.out == b"Line 1: x ERROR one\nLine 2: y INFO two\nLine 3: z WARN three\nLine 4: ERROR four\n"
    assert [e["lines"] for e in r.inputs] == [2, 1, 1]


def test_file_and_file_line_fields(tmp_path: Path, workers: int) -> None:
    (tmp_path / "sub").mkdir()
    a = b"".join(b"alpha %d {count} {line}\n" % i for i in range(1, 61))
    b = b"".join(b"beta %d\n" % i for i in range(1, 41)) + b"beta last, no newline"
    s = b"".join(b"from stdin %d\n" % i for i in range(1, 51))
    (tmp_path / "a.log").write_bytes(a)
    (tmp_path / "sub" / "b.log").write_bytes(b)
    (tmp_path / "empty.log").write_bytes(b"")
    c_abs = str(tmp_path / "sub" / "c.log")
    c = b"gamma\n\ngamma 3\n"
    Path(c_abs).write_bytes(c)
    given = ["a.log", "./sub/b.log", "-", "empty.log", c_abs]
    fields = {"type": "line_counter", "id": "num", "format": "{file}:{file_line}:{count}:{line}"}
    config = write_config(tmp_path, [fields])
    r = ok(run(tmp_path, *given, cwd=tmp_path, input=s, config=config, workers=workers, extra=SMALL_TASKS))
    want, count = [], 0
    for name, part in zip(given, (a, b, s, b"", c)):
        for file_line, line in enumerate(split_lines(part), 1):
            count += 1
            want.append(f"{name}:{file_line}:{count}:{line}\n")
    assert r.out == "".join(want).encode()
    assert [e["name"] for e in r.inputs] == given
    assert [e["lines"] for e in r.inputs] == [60, 41, 50, 0, 3]
    assert [e["kind"] for e in r.inputs] == ["file", "file", "stream", "file", "file"]


def test_mixed_plain_compressed_and_stdin_inputs_and_their_stats(tmp_path: Path) -> None:
    fmts = [f for f in FORMATS if shutil.which(f)]
    parts = [log_bytes(400 + 50 * i, seed=10 + i, awkward=0.02) for i in range(len(fmts) + 2)]
    given, want = [], []
    (tmp_path / "plain.log").write_bytes(parts[0])
    given.append("plain.log")
    want.append({"kind": "file", "compression": None, "bytes_total": len(parts[0])})
    for fmt, part in zip(fmts, parts[1:]):
        name = f"part.{fmt}.log"
        (tmp_path / name).write_bytes(compress_bytes(fmt, part))
        given.append(name)
        want.append({"kind": "file", "compression": fmt, "bytes_total": (tmp_path / name).stat().st_size})
    given.append("-")  # the last part comes on a pipe
    want.append({"kind": "stream", "compression": None, "bytes_total": None})
    r = ok(run(tmp_path, *given, cwd=tmp_path, input=parts[-1], extra=SMALL_TASKS))
    whole = b"".join(parts)
    assert r.out == default_pipeline(whole)[0]
    assert r.stats is not None
    assert_default_counts(r.stats, whole)
    assert len(r.inputs) == len(given)
    for entry, name, part, w in zip(r.inputs, given, parts, want):
        read = w["bytes_total"] if w["bytes_total"] is not None else len(part)
        assert_input(entry, name=name, lines=part.count(b"\n"), bytes_read=read, **w)


SAME_KINDS = ["stdin", "gzip-file", "zstd-stdin", "bzip2-and-xz-files"]


@pytest.mark.parametrize("kind", SAME_KINDS)
def test_every_input_kind_same_output_and_counts_at_any_worker_count(tmp_path: Path, workers: int, kind: str) -> None:
    data = log_bytes(2500, seed=5, awkward=0.02)
    inputs: tuple[str, ...]
    stdin_bytes = None
    if kind == "stdin":
        inputs, stdin_bytes = ("-",), data
    elif kind == "gzip-file":
        (tmp_path / "in.gz").write_bytes(compress_bytes("gzip", data))
        inputs = (str(tmp_path / "in.gz"),)
    elif kind == "zstd-stdin":
        inputs, stdin_bytes = ("-",), compress_bytes("zstd", data)
    else:
        cut = data.index(b"\n", len(data) // 3) + 1
        (tmp_path / "a").write_bytes(compress_bytes("bzip2", data[:cut]))
        (tmp_path / "b").write_bytes(compress_bytes("xz", data[cut:]))
        inputs = (str(tmp_path / "a"), str(tmp_path / "b"))
    r = ok(run(tmp_path, *inputs, workers=workers, input=stdin_bytes, extra=(*SMALL_TASKS, "--trace")))
    assert r.out == default_pipeline(data)[0]
    assert r.stats is not None
    assert_default_counts(r.stats, data)
    assert r.stats["system"]["state"] == "done"
    assert sum(e["lines"] for e in r.inputs) == 2500
    assert {e["state"] for e in r.inputs} == {"done"}


# ---------------------------------------------------------------------------------------------
# property: files split anywhere at line ends, some gzipped, are the one file


LINE_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=25)


@st.composite
def split_content(draw: Any) -> tuple[list[bytes], list[bool]]:
    lines = draw(st.lists(LINE_TEXT, max_size=40))
    final_newline = draw(st.sampled_from([True, True, True, False]))
    n_files = draw(st.integers(1, 5))
    cuts = sorted(draw(st.lists(st.integers(0, len(lines)), min_size=n_files - 1, max_size=n_files - 1)))
    bounds = [0, *cuts, len(lines)]
    parts = []
    for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        chunk = lines[lo:hi]
        last = i == len(bounds) - 2
        text = "\n".join(chunk) + ("\n" if chunk and (final_newline or not last) else "")
        parts.append(text.encode())
    packed = draw(st.lists(st.booleans(), min_size=len(parts), max_size=len(parts)))
    return parts, packed


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=split_content())
def test_files_split_at_line_ends_give_the_single_files_output(case: tuple[list[bytes], list[bool]]) -> None:
    parts, packed = case
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        names = []
        for i, (part, pack) in enumerate(zip(parts, packed)):
            name = f"part{i}.log"
            (folder / name).write_bytes(gzip.compress(part) if pack else part)
            names.append(name)
        config = write_config(folder, [{"type": "line_counter", "id": "num", "format": "{count}:{line}"}])
        r = ok(run(folder, *names, cwd=folder, config=config, extra=("--task-size", "1024", "--batch-lines", "3")))
        whole = b"".join(parts)
        want = b"".join(
            b"%d:%s\n" % (n, line.encode("utf-8", "surrogateescape")) for n, line in enumerate(split_lines(whole), 1)
        )
        assert r.out == want
        assert [e["lines"] for e in r.inputs] == [len(split_lines(p)) for p in parts]
        assert [e["compression"] for e in r.inputs] == ["gzip" if p else None for p in packed]


# ---------------------------------------------------------------------------------------------
# error records and traces name the input


CHECK_FNS = """
def check(line):
    if 'BOOM' in line:
        raise ValueError('boom: ' + line[:20])
    return line
"""


def records_inputs(tmp_path: Path) -> tuple[list[str], list[bytes]]:
    """Three inputs (a file, stdin, a file in a folder); BOOM on some lines of each."""
    (tmp_path / "sub").mkdir()
    a = b"".join(b"a %d%s\n" % (i, b" BOOM" if i in (5, 17, 33) else b"") for i in range(1, 41))
    s = b"".join(b"s %d%s\n" % (i, b" BOOM" if i == 2 else b"") for i in range(1, 21))
    b = b"".join(b"b %d%s\n" % (i, b" BOOM" if i in (1, 30) else b"") for i in range(1, 30)) + b"b 30 BOOM"
    (tmp_path / "a.log").write_bytes(a)
    (tmp_path / "sub" / "b.log").write_bytes(b)
    return ["a.log", "-", "sub/b.log"], [a, s, b]


def expected_lines(given: list[str], parts: list[bytes]) -> list[dict[str, Any]]:
    """Each line: its input as given, number in it, run-wide number, line_id and text."""
    rows, n = [], 0
    for name, part in zip(given, parts):
        base = "stdin" if name == "-" else os.path.basename(name)
        for file_line, text in enumerate(split_lines(part), 1):
            n += 1
            rows.append(
                {"file": name, "file_line": file_line, "line_number": n, "line_id": f"{base}:{file_line}", "text": text}
            )
    return rows


def test_error_records_name_the_file_and_its_line(tmp_path: Path) -> None:
    given, parts = records_inputs(tmp_path)
    check = {"type": "python", "id": "check", "function": "checkfns:check"}
    config = fn_config(tmp_path, "checkfns", CHECK_FNS, [check])
    r = ok(run(tmp_path, *given, cwd=tmp_path, input=parts[1], config=config, extra=SMALL_TASKS))
    want = [
        {k: row[k] for k in ("file", "file_line", "line_number", "line_id")}
        for row in expected_lines(given, parts)
        if "BOOM" in row["text"]
    ]
    assert len(want) == 6
    assert r.stats is not None
    assert r.stats["processors"]["check"]["errors"] == 6
    got = sorted(
        ({k: rec[k] for k in ("file", "file_line", "line_number", "line_id")} for rec in r.stats["recent_errors"]),
        key=lambda x: x["line_number"],
    )
    assert got == want
    for rec in r.stats["recent_errors"]:
        assert rec["processor"] == "check" and rec["error_type"] == "ValueError"


def test_traces_name_the_file_and_its_line(tmp_path: Path) -> None:
    given, parts = records_inputs(tmp_path)
    saved = tmp_path / "traces.jsonl"
    r = ok(
        run(
            tmp_path,
            *given,
            cwd=tmp_path,
            input=parts[1],
            extra=(*SMALL_TASKS, "--trace", "--trace-sample", "1", "--save-traces", str(saved)),
        )
    )
    rows = expected_lines(given, parts)
    traces = sorted(read_traces(str(saved)), key=lambda t: t["line_number"])
    assert [t["line_number"] for t in traces] == list(range(1, len(rows) + 1))
    for t, row in zip(traces, rows):
        assert (t["file"], t["file_line"], t["line_id"]) == (row["file"], row["file_line"], row["line_id"])
        assert t["original_content"] == row["text"]
    assert r.stats is not None
    assert r.stats["system"]["total_lines"] == len(rows)


FAIL_FNS = """
def check(line):
    if 'ERROR' in line:
        raise ValueError('refusing ' + line[:10])
    return line
"""


def test_max_errors_on_stdin_stops_with_exit_3(tmp_path: Path) -> None:
    data = log_bytes(20_000, seed=4)
    config = fn_config(
        tmp_path,
        "failfns",
        FAIL_FNS,
        [
            {"type": "line_counter", "id": "num"},
            {"type": "python", "id": "check", "function": "failfns:check"},
        ],
    )
    r = run(tmp_path, "-", input=data, config=config, extra=("--max-errors", "5", "--task-size", "8192"))
    assert r.code == 3, r.err
    assert_no_traceback(r)
    assert "--max-errors 5" in r.err and "last: check on stdin:" in r.err
    assert r.stats is not None and r.out is not None
    assert r.stats["system"]["total_lines"] < 20_000
    assert r.out.count(b"\n") == r.stats["processors"]["check"]["lines_out"]
    lines = split_lines(data)
    kept = [f"Line {n}: {x}\n" for n, x in enumerate(lines, 1) if "ERROR" not in x]
    assert r.out == "".join(kept[: r.out.count(b"\n")]).encode()


# ---------------------------------------------------------------------------------------------
# faults: a killed worker, Ctrl-C


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


@pytest.mark.parametrize("with_numpy", [False, True])
@pytest.mark.parametrize("tail", [b"\n", b"no newline at the end"])
def test_a_file_is_planned_into_whole_lines_with_and_without_numpy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_numpy: bool, tail: bytes
) -> None:
    """Task ends and line counts, as the plan makes them, against a count done here."""
    import mpobs.inputs.base as inputs

    # Short and long lines, one longer than the planner's read buffer, empty ones, invalid UTF-8.
    lines = [b"x" * (i * 37 % 300) for i in range(3000)] + [b"L" * (3 * inputs.COUNT_BYTES), b"", b"\xff\xfe"]
    data = b"\n".join(lines) + tail
    path = tmp_path / "in.log"
    path.write_bytes(data)
    monkeypatch.setattr(inputs, "NUMPY_PLAN_BYTES", 0 if with_numpy else 1 << 40)
    monkeypatch.setattr(inputs, "RELEASE_BYTES", 4096)  # several releases a task
    source = inputs.FileSource(str(path), str(path), len(data), start=5)  # starts part way, as stdin may
    pieces = list(source.pieces(task_bytes=20_000))
    assert pieces[0].start == 5 and pieces[-1].end == len(data)
    for a, b in itertools.pairwise(pieces):
        assert a.end == b.start and data[a.end - 1 : a.end] == b"\n"
    for p in pieces:
        chunk = data[p.start : p.end]
        assert p.lines == chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)
    assert source.lines_read == sum(p.lines for p in pieces)
    assert len(pieces) > 10  # the long line made one task of its own, bigger than task_bytes
    assert max(p.end - p.start for p in pieces) > 3 * inputs.COUNT_BYTES


def test_planning_a_file_that_grows_stops_at_the_size_it_was_given(tmp_path: Path) -> None:
    """A log still being written: the plan ends where the file ended when it was looked at, even
    inside a long last line that has grown since (its rest is the next run's)."""
    import mpobs.inputs.base as inputs

    data = b"a\n" * 2000 + b"L" * 20_000
    path = tmp_path / "in.log"
    path.write_bytes(data + b"more of the last line\nand a new one\n")
    pieces = list(inputs.FileSource(str(path), str(path), len(data)).pieces(task_bytes=1024))
    assert pieces[-1].end == len(data) and all(p.end <= len(data) for p in pieces)
    assert sum(p.lines for p in pieces) == 2001
