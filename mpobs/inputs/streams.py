"""Inputs read by the coordinator: streams (pipes, FIFOs, devices) and compressed files, as blocks.

A reader thread reads the input in large pieces, decodes it (``mpobs.inputs.decoders``) and
cuts what it got into blocks at line ends, each into a free slot of the run's
BlockStore; the coordinator's plan takes the blocks as they come (``pieces``). The
thread waits for a free slot, so memory stays bounded whatever the input's size, and
the decompressors release the GIL, so decoding runs beside the coordinator's loop.

A stream that goes quiet (a slow writer) has what it sent so far cut into a block
after ``STREAM_FLUSH`` seconds, so its lines are processed without waiting for a full
block. A line longer than a slot travels inside its task instead (still one slot's
worth of the in-flight bound). The last line without a newline is a line.
"""

from __future__ import annotations

import os
import queue
import select
import stat
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from mpobs.defaults import READ_BYTES, STREAM_FLUSH
from mpobs.errors import describe
from mpobs.inputs.base import NOT_READY, InputSource, Piece
from mpobs.inputs.blockstore import BlockStore, StoreClosed
from mpobs.inputs.decoders import SNIFF_BYTES, Decoder, decoder_for, sniff

if TYPE_CHECKING:
    from mpobs.inputs.generation import Generation

_END = object()


class StreamSource(InputSource):
    """An input the coordinator reads: a stream, or a compressed regular file (``compression``)."""

    needs_store = True

    def __init__(
        self,
        given: str,
        path: str | None,
        kind: str,
        compression: str | None = None,
        size: int | None = None,
        fd: int | None = None,
        name: str | None = None,
    ) -> None:
        self.given, self.path, self.kind, self.compression, self.size = given, path, kind, compression, size
        self.name = name or os.path.basename(given)
        self._fd = fd  # already open (standard input); else ``path`` is opened when reading starts
        self._reader: BlockReader | None = None
        self.skip_to = self.raw_start = 0  # resuming: decoded bytes to pass over, and the input bytes they are

    def check(self) -> None:
        if self._fd is None and self.path is not None and not os.access(self.path, os.R_OK):
            from mpobs.errors import InputError

            raise InputError(f"input {self.given!r}: permission denied")

    def is_file(self, path: str) -> bool:
        if self.kind != "file" or self.path is None:
            return False
        try:
            return os.path.samefile(path, self.path)
        except OSError:
            return False

    def skip(self, offset: int, raw: int) -> None:
        """A compressed file resumes by decoding from its start and passing over ``offset`` bytes."""
        if self.kind == "stream":
            raise NotImplementedError("a stream cannot resume part way")
        self.skip_to, self.raw_start = offset, raw

    def open_fd(self) -> int:
        """The fd to read; opening a FIFO waits for its writer, so this runs in the reader thread."""
        if self._fd is not None:
            return self._fd
        assert self.path is not None
        self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def pieces(self, task_bytes: int, store: BlockStore | None, wake: Callable[[], None]) -> Iterator[Any]:
        assert store is not None, "a stream's blocks need a BlockStore"
        out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._reader = reader = self.reader(store, min(task_bytes, store.slot_bytes), out, wake)
        reader.start()
        while True:
            try:
                item = out.get_nowait()
            except queue.Empty:
                yield NOT_READY
                continue
            if item is _END:
                return
            self.lines_read += item.lines
            yield item

    def reader(self, *args: Any) -> BlockReader:
        return BlockReader(self, *args)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.stop.set()


class BlockReader(threading.Thread):
    """Reads one input to its end (or damage, or ``stop``), putting Pieces on ``out``, then _END."""

    def __init__(
        self, source: StreamSource, store: BlockStore, block_bytes: int, out: Any, wake: Callable[[], None]
    ) -> None:
        super().__init__(name=f"mpobs-read-{source.name}", daemon=True)
        self.source, self.store, self.block_bytes, self.out, self.wake = source, store, block_bytes, out, wake
        self.stop = threading.Event()
        self.pending = bytearray()  # decoded bytes not yet in a block
        self.decoder: Decoder | None = None
        self.lines = 0  # in the blocks cut so far
        self.skip = source.skip_to  # decoded bytes still to pass over (resuming from a checkpoint)
        self.offset = self.skip  # of pending's start, in the decoded input
        self.raw_cut = source.raw_start  # input bytes the blocks cut so far account for

    def run(self) -> None:
        try:
            self._read()
        except StoreClosed:
            pass  # the run is over
        except OSError as err:
            self.source.damage = f"input {self.source.given!r}: read error: {err.strerror or err}"
        except Exception as err:
            self.source.damage = f"input {self.source.given!r}: reading failed: {describe(err)}"
        finally:
            self.out.put(_END)
            self.wake()

    def _read(self) -> None:
        src = self.source
        fd = src.open_fd()
        wait = src.kind == "stream" and not stat.S_ISREG(os.fstat(fd).st_mode)
        if src.compression is not None:
            self.decoder = decoder_for(src.compression)
        sniffing = src.compression is None and src.kind == "stream"
        since = 0.0  # when the oldest whole line still pending came
        while not self.stop.is_set():
            if wait and not sniffing and b"\n" in self.pending:
                since = since or time.monotonic()
                left = since + STREAM_FLUSH - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    # Quiet, or a trickle for STREAM_FLUSH s: its whole lines go now, not when a block is full.
                    self._cut(self.pending.rfind(b"\n") + 1)
                    since = 0.0
                    continue
            else:
                since = 0.0
                if wait and not select.select([fd], [], [], STREAM_FLUSH)[0]:
                    continue  # quiet: look at `stop` again (a followed run being stopped must not hang here)
            chunk = os.read(fd, READ_BYTES)
            if not chunk:
                break
            src.bytes_read += len(chunk)
            if sniffing:
                self.pending += chunk
                if len(self.pending) < SNIFF_BYTES:
                    continue
                sniffing = False
                chunk, self.pending = bytes(self.pending), bytearray()
                src.compression = sniff(chunk)
                if src.compression is not None:
                    self.decoder = decoder_for(src.compression)
            self.pending += self.decoder.decode(chunk) if self.decoder is not None else chunk
            if self.skip:
                passed = min(self.skip, len(self.pending))
                del self.pending[:passed]
                self.skip -= passed
            self._cut_full()
            if self.decoder is not None and self.decoder.damage is not None:
                break
        if self.stop.is_set():
            if src.kind == "stream" and b"\n" in self.pending:  # whole lines read out of the pipe: not lost
                self._cut(self.pending.rfind(b"\n") + 1)
            return
        if self.decoder is not None:
            self.decoder.finish()
        while self.pending:  # the rest; a last line without "\n" is a line
            nl = self.pending.rfind(b"\n", 0, self.block_bytes) + 1
            self._cut(nl if nl and len(self.pending) > self.block_bytes else len(self.pending))
        if self.decoder is not None and self.decoder.damage is not None:
            src.damage = self._describe_damage()

    def _cut_full(self) -> None:
        """Cut blocks while a whole block's worth is pending."""
        pending, size = self.pending, self.block_bytes
        while len(pending) >= size:
            cut = pending.rfind(b"\n", 0, size) + 1
            if cut == 0:  # a line longer than a block: up to its end, once it has come
                cut = pending.find(b"\n", size) + 1
                if cut == 0:
                    return
            self._cut(cut)

    def _cut(self, n: int) -> None:
        """Make the first ``n`` pending bytes a block (they end at a line end, or the input's end)."""
        pending, store, src = self.pending, self.store, self.source
        slot = store.acquire()  # waits while every slot is in flight
        lines = pending.count(b"\n", 0, n) + (0 if pending[n - 1] == 0x0A else 1)
        raw = max(src.bytes_read - self.raw_cut, 0)
        data = None
        if n <= store.slot_bytes:
            with memoryview(pending) as mv:
                store.put(slot, mv[:n])
        else:
            data = bytes(pending[:n])  # too big for a slot: it travels with its task
        del pending[:n]
        self.lines += lines
        self.raw_cut = max(src.bytes_read, self.raw_cut)
        self.out.put(Piece(self.offset, self.offset + n, lines, None, raw, slot, data, self.where()))
        self.offset += n
        self.wake()

    def where(self) -> Generation | None:
        """What a checkpoint needs beyond the offset to resume after the block just cut (follow mode)."""
        return None

    def _describe_damage(self) -> str:
        d, src = self.decoder, self.source
        assert d is not None
        of = f" of {src.size:,}" if src.size is not None else ""
        return (
            f"input {src.given!r} is damaged: {src.compression} data {d.damage}, at compressed byte "
            f"{d.consumed:,}{of}; the {self.lines:,} lines ({self.offset:,} bytes) decoded before it were processed"
        )
