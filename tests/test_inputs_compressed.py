"""Compressed inputs (gzip, bzip2, xz, zstd, told by their first bytes), and damaged ones.

A compressed file is decoded by the coordinator whatever runs its blocks: its semantics are checked
in-process (mpobs.testing); a compressed stdin and damage (exit 2 and its message) on the command line.

What a run must give is computed without mpobs: the reference (tests/reference.py) over the bytes the inputs hold.
"""

from __future__ import annotations

import bz2
import lzma
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mpobs.pipeline.config import DEFAULT_CONFIG
from mpobs.testing import run_pipeline
from tests.helpers import (
    ALL_LINES,
    FORMATS,
    SMALL_TASKS,
    ProcessRun,
    all_lines,
    assert_default_counts,
    assert_input,
    assert_no_traceback,
    compress_bytes,
    log_bytes,
    ok,
    run_process,
    write_config,
)
from tests.reference import default_pipeline, split_lines


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
# compressed inputs


@pytest.mark.parametrize("fmt", FORMATS)
def test_compressed_file_told_by_its_first_bytes(tmp_path: Path, fmt: str, workers: int) -> None:
    data = log_bytes(3000, awkward=0.02)
    packed = tmp_path / "packed.dat"  # a name that says nothing
    packed.write_bytes(compress_bytes(fmt, data))
    r = run_pipeline(DEFAULT_CONFIG, packed, workers=workers)  # in-process, many tasks and batches
    assert r.output == default_pipeline(data)[0]
    assert_default_counts(r.stats, data)
    size = packed.stat().st_size
    assert_input(
        r.stats["inputs"][0],
        name=str(packed),
        kind="file",
        compression=fmt,
        lines=3000,
        bytes_total=size,
        bytes_read=size,
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_compressed_stdin(tmp_path: Path, fmt: str) -> None:
    data = log_bytes(3000, awkward=0.02)
    blob = compress_bytes(fmt, data)
    r = ok(run_process(tmp_path, "-", input=blob, extra=SMALL_TASKS))
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
    r = run_pipeline(DEFAULT_CONFIG, both, workers=2)
    assert r.output == default_pipeline(a + b)[0]
    assert_default_counts(r.stats, a + b)
    assert_input(
        r.stats["inputs"][0],
        name=str(both),
        kind="file",
        compression="gzip",
        lines=1600,
        bytes_total=both.stat().st_size,
    )


def test_plain_text_named_gz_is_plain_text(tmp_path: Path) -> None:
    data = log_bytes(800)
    fake = tmp_path / "x.gz"
    fake.write_bytes(data)
    r = run_pipeline(DEFAULT_CONFIG, fake, workers=2)
    assert r.output == default_pipeline(data)[0]
    assert_input(r.stats["inputs"][0], name=str(fake), kind="file", compression=None, lines=800, bytes_total=len(data))


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_compressed_file(tmp_path: Path, fmt: str) -> None:
    empty = tmp_path / "empty.bin"
    empty.write_bytes(compress_bytes(fmt, b""))  # <tool> -c < /dev/null
    assert empty.stat().st_size > 0
    r = run_pipeline(DEFAULT_CONFIG, empty, workers=2)
    assert r.output == b""
    assert r.stats["system"]["total_lines"] == 0
    size = empty.stat().st_size
    assert_input(r.stats["inputs"][0], name=str(empty), kind="file", compression=fmt, lines=0, bytes_total=size)


@pytest.mark.parametrize("fmt", FORMATS)
def test_compressed_last_line_without_newline(tmp_path: Path, fmt: str) -> None:
    data = b"a ERROR one\nb WARN two\n\nc INFO three"
    packed = tmp_path / "packed.bin"
    packed.write_bytes(compress_bytes(fmt, data))
    r = run_pipeline(DEFAULT_CONFIG, packed, workers=2)
    assert r.output == default_pipeline(data)[0] == b"Line 1: a ERROR one\nLine 2: b WARN two\nLine 4: c INFO three\n"
    size = packed.stat().st_size
    assert_input(r.stats["inputs"][0], name=str(packed), kind="file", compression=fmt, lines=4, bytes_total=size)


# ---------------------------------------------------------------------------------------------
# damaged compressed files


def assert_damage_reported(r: ProcessRun, name: str, fmt: str) -> None:
    """Exit 2, one message naming the file, the format and how far it got; no traceback."""
    assert r.code == 2, r.err
    assert_no_traceback(r)
    assert name in r.err and fmt in r.err, r.err
    assert "bytes" in r.err and "lines" in r.err, r.err


def assert_counts_match_output(r: ProcessRun, lines: int) -> None:
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
    r = run_process(tmp_path, "cut.bin", cwd=tmp_path, config=write_config(tmp_path, ALL_LINES), extra=SMALL_TASKS)
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
    r = run_process(tmp_path, "-", input=cut, config=write_config(tmp_path, ALL_LINES), extra=SMALL_TASKS)
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
    r = run_process(tmp_path, "flipped.bin", cwd=tmp_path, config=write_config(tmp_path, ALL_LINES), extra=SMALL_TASKS)
    assert_damage_reported(r, "flipped.bin", fmt)
    assert r.out is not None
    n = prefix_lines(r.out, data)  # a prefix of the clean run's output
    assert n < 6000
    assert_counts_match_output(r, n)
