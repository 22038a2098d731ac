"""The stream reader on its own: blocks cut at line ends into slots, partial lines, trickles, bounds, damage."""

from __future__ import annotations

import gzip
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mpobs.inputs.base import NOT_READY, Piece
from mpobs.inputs.blockstore import BlockStore
from mpobs.inputs.streams import StreamSource

#: A log of lines of every length from 0 to 149 bytes (with their newline, 1 to 150).
LOG = b"".join(b"x" * (i % 150) + b"\n" for i in range(2000))


class Reading:
    """A source's plan being read: its pieces with their bytes, slots given back as the coordinator does."""

    def __init__(self, source: StreamSource, store: BlockStore, task_bytes: int, release: bool = True) -> None:
        self.source, self.store, self.release = source, store, release
        self.woken = threading.Event()
        self.plan: Iterator[Any] = source.pieces(task_bytes, store, self.woken.set)
        self.pieces: list[tuple[Piece, bytes]] = []
        self.ended = False

    def take(self, timeout: float = 30, until: Any = None) -> list[tuple[Piece, bytes]]:
        """Pieces until the plan ends (or ``until(pieces)`` is true); fails after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not self.ended and not (until is not None and until(self.pieces)):
            assert time.monotonic() < deadline, f"the reader gave {len(self.pieces)} pieces, then nothing"
            item = next(self.plan, None)
            if item is None:
                self.ended = True
            elif item is NOT_READY:
                self.woken.wait(0.05)
                self.woken.clear()
            else:
                data = item.data if item.data is not None else bytes(self.store.get(item.slot, item.end - item.start))
                self.pieces.append((item, data))
                if self.release:
                    self.store.release(item.slot)
        return self.pieces

    def data(self) -> bytes:
        return b"".join(d for _, d in self.pieces)


def file_source(path: Path, compression: str | None = None) -> StreamSource:
    return StreamSource(str(path), str(path), "file", compression, path.stat().st_size)


def check_blocks(pieces: list[tuple[Piece, bytes]], data: bytes) -> None:
    """Blocks one after another, each ending at a line end (the last one: at the data's end), lines counted."""
    at = 0
    for piece, block in pieces:
        assert piece.start == at and piece.end == at + len(block)
        assert block == data[piece.start : piece.end]
        assert piece.lines == block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
        at = piece.end
    assert at == len(data)
    for piece, block in pieces[:-1]:
        assert block.endswith(b"\n"), piece.start


@pytest.mark.parametrize("tail", [b"", b"the last line, without a newline"])
def test_a_file_read_as_a_stream_comes_in_blocks_cut_at_line_ends(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "in.log"
    path.write_bytes(LOG + tail)
    source = file_source(path)
    store = BlockStore.in_memory(4, 1000)
    pieces = Reading(source, store, 1000).take()
    check_blocks(pieces, LOG + tail)
    assert len(pieces) > 100 and all(p.end - p.start <= 1000 for p, _ in pieces)
    assert source.lines_read == 2000 + (1 if tail else 0) == sum(p.lines for p, _ in pieces)
    assert source.bytes_read == len(LOG + tail) and source.damage is None


def test_a_line_longer_than_a_slot_travels_with_its_task(tmp_path: Path) -> None:
    long = b"L" * 5000 + b"\n"
    data = b"short\n" * 10 + long + b"after\n" * 10
    path = tmp_path / "in.log"
    path.write_bytes(data)
    pieces = Reading(file_source(path), BlockStore.in_memory(2, 1024), 1024).take()
    check_blocks(pieces, data)
    [(big, block)] = [(p, d) for p, d in pieces if p.end - p.start > 1024]
    assert big.data == block and block.endswith(long)  # not in a slot: carried whole
    assert all(p.data is None for p, _ in pieces if p is not big)


def test_the_reader_waits_for_free_slots_so_memory_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "in.log"
    path.write_bytes(LOG)
    store = BlockStore.in_memory(2, 1000)
    reading = Reading(file_source(path), store, 1000, release=False)
    try:
        reading.take(until=lambda got: len(got) == 2)
        time.sleep(0.3)  # time enough to read far ahead, if it did not wait for a slot
        assert next(reading.plan) is NOT_READY and len(reading.pieces) == 2
        assert not store._free
        store.release(reading.pieces[0][0].slot)
        reading.take(until=lambda got: len(got) == 3)
        assert reading.pieces[2][0].slot == reading.pieces[0][0].slot  # the slot given back
    finally:
        reading.source.close()
        store.close()  # wakes the reader waiting for a slot


def test_a_quiet_pipe_has_its_whole_lines_handed_out_and_keeps_a_partial_one(tmp_path: Path) -> None:
    r, w = os.pipe()
    source = StreamSource("-", None, "stream", fd=r, name="stdin")
    reading = Reading(source, BlockStore.in_memory(4, 1 << 20), 1 << 20)
    try:
        os.write(w, b"a line\nanother line\nhalf a li")  # then quiet, the pipe open: a slow writer
        reading.take(until=lambda got: len(got) == 1)  # long before a block of 1 MiB is full
        assert reading.data() == b"a line\nanother line\n"
        assert reading.pieces[0][0].lines == 2
        os.write(w, b"ne\nthe end")
        os.close(w)
        w = -1
        reading.take()
        assert reading.data() == b"a line\nanother line\nhalf a line\nthe end"
        assert [p.lines for p, _ in reading.pieces][-1] == 2  # the last line without newline is a line
        assert source.lines_read == 4 and source.bytes_read == len(reading.data())
    finally:
        source.close()
        if w >= 0:
            os.close(w)
        os.close(r)


def test_stopping_a_stream_keeps_its_whole_lines_and_drops_the_partial_one(tmp_path: Path) -> None:
    r, w = os.pipe()
    source = StreamSource("-", None, "stream", fd=r, name="stdin")
    reading = Reading(source, BlockStore.in_memory(4, 1 << 20), 1 << 20)
    try:
        os.write(w, b"one\ntwo\nthr")
        reading.take(until=lambda got: len(got) == 1)
        source.close()  # a followed run being stopped: the writer keeps the pipe open
        reading.take(timeout=10)
        assert reading.ended and reading.data() == b"one\ntwo\n"
    finally:
        os.close(w)
        os.close(r)


@pytest.mark.parametrize("kind", ["file", "stream"])
def test_gzip_is_decoded_and_a_plain_stream_is_sniffed(tmp_path: Path, kind: str) -> None:
    packed = gzip.compress(LOG[:50_000]) + gzip.compress(LOG[50_000:])  # two members, as `cat a.gz b.gz`
    path = tmp_path / "in.gz"
    path.write_bytes(packed)
    if kind == "file":
        source = file_source(path, "gzip")
    else:  # a pipe of unknown contents: its first bytes tell
        source = StreamSource(str(path), str(path), "stream")
        assert source.compression is None
    pieces = Reading(source, BlockStore.in_memory(3, 4096), 4096).take()
    check_blocks(pieces, LOG)
    assert source.compression == "gzip"
    assert source.bytes_read == len(packed) and source.lines_read == 2000
    assert sum(p.nbytes for p, _ in pieces) == len(packed)  # each block accounts for the input bytes it came of


def test_a_truncated_gzip_keeps_every_whole_line_before_the_damage_and_says_where(tmp_path: Path) -> None:
    packed = gzip.compress(LOG * 20)
    path = tmp_path / "cut.gz"
    path.write_bytes(packed[: len(packed) // 2])
    source = file_source(path, "gzip")
    pieces = Reading(source, BlockStore.in_memory(3, 1 << 16), 1 << 16).take()
    got = b"".join(d for _, d in pieces)
    assert 0 < len(got) < len(LOG * 20) and (LOG * 20).startswith(got[: got.rfind(b"\n") + 1])
    assert source.damage is not None
    assert source.damage.startswith(f"input {str(path)!r} is damaged: gzip data ends too soon (truncated)")
    assert f"the {source.lines_read:,} lines" in source.damage


def test_resuming_a_compressed_file_passes_over_what_is_already_done(tmp_path: Path) -> None:
    cut = LOG.index(b"\n", 30_000) + 1
    path = tmp_path / "in.gz"
    path.write_bytes(gzip.compress(LOG))
    source = file_source(path, "gzip")
    source.skip(cut, 1234)
    pieces = Reading(source, BlockStore.in_memory(3, 4096), 4096).take()
    assert pieces[0][0].start == cut and pieces[-1][0].end == len(LOG)
    assert b"".join(d for _, d in pieces) == LOG[cut:]
    with pytest.raises(NotImplementedError):
        StreamSource("-", None, "stream").skip(10, 10)  # a pipe cannot resume part way
